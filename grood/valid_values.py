"""The values a component parameter may take, declared once in its annotation and checked without torch.

A parameter's valid values sit beside its type in the signature that declares it::

    @checked_arguments
    def __init__(self, k: Annotated[int, Valid(low=1)] = 50, temperature: Annotated[float, Valid(low=0,
                 low_open=True)] = 1.0) -> None: ...

- :func:`checked_arguments` checks them when the constructor is called (a ``ValueError`` naming the class, the
  parameter and the value), for every caller: a run, the OpenOOD postprocessor, a user's script.
- ``python -m grood.config.generate`` copies them into the config catalogue (the dataclass fields' metadata,
  :data:`METADATA_KEY`), so that ``grood run`` reports an out-of-range value from the catalogue alone, before
  it imports torch or any detector (:func:`field_problems`).

This module imports nothing from grood and nothing heavy: the catalogue and every component import it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import types
import typing
from typing import Any, Callable, TypeVar

#: The key of a dataclass field's metadata that holds its :class:`Valid`.
METADATA_KEY = "valid"

Function = TypeVar("Function", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Valid:
    """The values a parameter may take, beyond its type (None, a parameter's "unset", is always valid).

    Args:
        low, high: the bounds of a number (None: unbounded); ``low_open`` / ``high_open``: the bound itself
            is excluded (``> low``, ``< high``).
        integer: the value must be a whole number (``int`` parameters: set by :func:`for_annotation`).
        choices: the allowed values; for a list parameter, of each element (and the list is non-empty).
        why: what the value means, added to the message in parentheses ("eq. 9's λ").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None
    why: str = ""

    def describe(self) -> str:
        """What a valid value is, as in "must be <describe()>": ``an integer >= 1``, ``a number in (0, 1)``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_number(self.high)}"
        return kind

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is valid, else ``must be <describe()>; got <value>``."""
        if value is None or self._holds(value):
            return None
        what = self.describe()
        if self.choices is not None and isinstance(value, (list, tuple)):
            what = "a non-empty list of " + ", ".join(map(str, self.choices))
        return f"must be {what}{f' ({self.why})' if self.why else ''}; got {value!r}"

    def _holds(self, value: Any) -> bool:
        if self.choices is not None:
            if isinstance(value, (list, tuple)):
                return bool(value) and all(item in self.choices for item in value)
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:  # bool, text, NaN
            return False
        if self.integer and int(value) != value:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def source(self) -> str:
        """Python source that builds this rule (only the fields that differ from the defaults)."""
        given = [f"{item.name}={getattr(self, item.name)!r}" for item in dataclasses.fields(self)
                 if getattr(self, item.name) != item.default]
        return f"Valid({', '.join(given)})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def rule_of(annotation: Any) -> Valid | None:
    """The :class:`Valid` of an ``Annotated[...]`` annotation, or of ``Optional[Annotated[...]]`` (``integer``
    set for an ``int`` one), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [rule_of(arg) for arg in typing.get_args(annotation)]
        return next((rule for rule in inner if rule is not None), None)
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    base, *extras = typing.get_args(annotation)
    rules = [extra for extra in extras if isinstance(extra, Valid)]
    if not rules:
        return None
    rule = rules[0]
    if _is_int_type(base) and not rule.integer and rule.choices is None:
        rule = dataclasses.replace(rule, integer=True)
    return rule


def _is_int_type(annotation: Any) -> bool:
    if annotation is int:
        return True
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and args == [int]


def declared_rules(function: Callable[..., Any]) -> dict[str, Valid]:
    """Parameter name -> its :class:`Valid`, for the parameters of ``function`` (or a dataclass: its fields)
    that declare one. An annotation that does not resolve raises (``NameError``): a rule is never dropped."""
    hints = typing.get_type_hints(function, include_extras=True)
    return {name: rule for name, hint in hints.items() if (rule := rule_of(hint)) is not None}


def checked_arguments(function: Function) -> Function:
    """Decorate a constructor (or function): each call checks its arguments against their declared
    :class:`Valid` values and raises ``ValueError("<Class>: <name> must be ...; got ...")`` naming the first
    one that is not valid (``<Class>``: the class of ``self`` for a method, else the function's name)."""
    signature = inspect.signature(function)
    is_method = next(iter(signature.parameters), None) == "self"
    rules: dict[str, Valid] | None = None  # read at the first call, when the annotations' names all exist

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal rules
        if rules is None:
            rules = declared_rules(function)
        bound = signature.bind(*args, **kwargs)
        for name, rule in rules.items():
            problem = rule.problem(bound.arguments.get(name))
            if problem is not None:
                owner = type(bound.arguments["self"]).__name__ if is_method else function.__qualname__
                raise ValueError(f"{owner}: {name} {problem}")
        return function(*args, **kwargs)

    return typing.cast(Function, wrapper)


def check_fields(instance: Any) -> None:
    """Check a parameter dataclass's fields against their declared :class:`Valid` values (call it from
    ``__post_init__``); ``ValueError("<Class>: <field> must be ...")`` on the first that is not valid."""
    for name, rule in declared_rules(type(instance)).items():
        problem = rule.problem(getattr(instance, name))
        if problem is not None:
            raise ValueError(f"{type(instance).__name__}: {name} {problem}")


def field_problems(params: Any, prefix: str) -> list[str]:
    """``<prefix>.<field>=<value>: must be ...`` for every field of the config dataclass ``params`` whose
    metadata's :class:`Valid` (written by the catalogue generator) refuses its value. Torch-free."""
    problems = []
    for item in dataclasses.fields(params):
        rule = item.metadata.get(METADATA_KEY)
        value = getattr(params, item.name)
        problem = None if rule is None else rule.problem(value)
        if problem is not None:
            problems.append(f"{prefix}.{item.name}={value!r}: {problem.split('; got ')[0]}")
    return problems


# The rules most parameters use, as annotations: ``k: Count = 50``.
#: A whole number >= 1 (a neighbour count, rows per chunk, a dimension).
Count = typing.Annotated[int, Valid(low=1)]
#: A number > 0 (a temperature, a scale).
Positive = typing.Annotated[float, Valid(low=0, low_open=True)]
#: A number >= 0.
NonNegative = typing.Annotated[float, Valid(low=0)]
#: A percentile in OpenOOD's percent units: [0, 100).
Percent = typing.Annotated[float, Valid(low=0, high=100, high_open=True)]

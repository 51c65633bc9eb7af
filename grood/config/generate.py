"""The config schema of a component from the one declaration of its parameters (hydra-zen).

A component's parameters are declared once, next to the code that reads them: a detector's constructor
signature (or that of the class it forwards to, ``parameters_from``), an OOD-prototype strategy's
parameter dataclass, an index's constructor. :func:`parameters_schema` turns that declaration into the
dataclass Hydra's ConfigStore holds (hydra-zen ``builds(..., populate_full_signature=True)``; the
arguments a run supplies itself, :data:`RUN_ARGUMENTS`, are left out).

The built-in components' schemas are written, as source, into :mod:`grood.config.catalogue` and the
methods' yaml files (``grood/configs/method/<name>.yaml``: defaults and APS search values) by

    python -m grood.config.generate          # rewrite them
    python -m grood.config.generate --check  # exit 1 when they differ from the code

so that composing and validating a run imports neither torch nor the detectors (the catalogue is plain
dataclasses); ``tests/test_components.py`` fails when they drift. A plugin's schema is built at its
registration (:func:`grood.components.register_method`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from grood.valid_values import METADATA_KEY, declared_rules

#: Constructor arguments a run supplies itself, never config keys, by group. A method's: the run's device and
#: progress bars, the ``index`` group (``index``, ``index_params``), the input normalisation (ODIN's
#: ``input_std``: the transform's std) and GROOD's rows per chunk (not a setting of grood's runs). An
#: index's: the vectors' dimension and device.
RUN_ARGUMENTS = {"method": ("device", "progress", "index", "index_params", "input_std", "batch_size"),
                 "index": ("dim", "device"), "prototype": ()}

CATALOGUE_PATH = Path(__file__).resolve().parent / "catalogue.py"
METHOD_YAML_DIR = Path(__file__).resolve().parents[1] / "configs" / "method"


# --------------------------------------------------------------------------- types
def _config_type(annotation: Any, where: str) -> Any:
    """The OmegaConf-supported type of a parameter annotation (``int | None`` -> ``Optional[int]``,
    ``Sequence[float]`` -> ``List[float]``, ``dict[str, Any]`` -> ``Dict[str, Any]``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (int, float, bool, str):
        return annotation
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        if set(kept) == {int, float}:
            kept = [float]
        if len(kept) != 1:
            raise TypeError(f"{where}: annotation {annotation!r} is a union the config cannot type; give one type "
                            "(or Optional of one)")
        inner = _config_type(kept[0], where)
        return Optional[inner] if type(None) in args else inner
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])):
        return List[_config_type(args[0], where)] if args else List[Any]
    if origin is dict:
        return Dict[str, Any]
    if annotation is Any or annotation is inspect.Parameter.empty:
        return Any
    raise TypeError(f"{where}: annotation {annotation!r} has no config type; give int, float, bool, str, "
                    "a list of them, a dict or Optional of one of these")


def _type_source(kind: Any) -> str:
    if kind in (int, float, bool, str):
        return kind.__name__
    if kind is Any:
        return "Any"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return f"Optional[{_type_source([a for a in args if a is not type(None)][0])}]"
    if origin is list:
        return f"List[{_type_source(args[0])}]"
    if origin is dict:
        return "Dict[str, Any]"
    raise TypeError(f"no source for {kind!r}")


# --------------------------------------------------------------------------- schema of one declaration
@dataclasses.dataclass(frozen=True)
class Parameter:
    """One config key: its name, config type, default (``dataclasses.MISSING``: none) and the valid values its
    annotation declares (:class:`grood.valid_values.Valid`; None: any value of its type)."""

    name: str
    type: Any
    default: Any
    valid: Any = None

    def field(self) -> Any:
        """The dataclass field of this key: its default (lists by factory) and its valid values (metadata)."""
        metadata = {} if self.valid is None else {METADATA_KEY: self.valid}
        if isinstance(self.default, (list, tuple, dict)):
            return dataclasses.field(default_factory=lambda d=self.default: dict(d) if isinstance(d, dict)
                                     else list(d), metadata=metadata)
        return dataclasses.field(default=self.default, metadata=metadata)


def declared_parameters(target: Any, group: str, unset_default: bool = False) -> list[Parameter]:
    """The config parameters of ``target`` (a class or function; a dataclass of parameters too): its
    signature read by hydra-zen ``builds(populate_full_signature=True)``, less ``group``'s
    :data:`RUN_ARGUMENTS`.
    ``unset_default``: every parameter ``Optional`` with default None (a baseline's: None = the
    constructor's default, or APS's pick)."""
    from hydra_zen import builds

    exclude = [name for name in inspect.signature(target).parameters if name in RUN_ARGUMENTS[group]]
    built = builds(target, populate_full_signature=True, zen_exclude=exclude)
    hints: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    for owner in (inspect.getmro(target) if inspect.isclass(target) else (target,)):
        function = owner if dataclasses.is_dataclass(owner) or not inspect.isclass(owner) else owner.__init__
        try:
            hints = {**typing.get_type_hints(function), **hints}
        except Exception:  # noqa: BLE001 - a base class's hints that do not resolve (object)
            pass
        rules = {**declared_rules(function), **rules}
    out = []
    for item in dataclasses.fields(built):
        if item.name.startswith("_"):
            continue
        where = f"{getattr(target, '__qualname__', target)} parameter {item.name!r}"
        kind = _config_type(hints.get(item.name, item.type), where)
        default = item.default if item.default_factory is dataclasses.MISSING else item.default_factory()
        if unset_default:
            kind, default = (kind if typing.get_origin(kind) is typing.Union else Optional[kind]), None
        out.append(Parameter(item.name, kind, default, rules.get(item.name)))
    return out


def parameters_schema(class_name: str, parameters: list[Parameter], module: str | None = None) -> type:
    """A dataclass ``class_name`` with one field per parameter (list defaults by factory)."""
    cls = dataclasses.make_dataclass(class_name, [(p.name, p.type, p.field()) for p in parameters])
    if module is not None:
        cls.__module__ = module
    return cls


def method_parameters(cls: Any) -> list[Parameter]:
    """The config parameters of detector class ``cls`` (its ``parameters_from``, else its constructor)."""
    target = getattr(cls, "parameters_from", None) or cls
    return declared_parameters(target, "method", unset_default=not getattr(cls, "defaults_in_config", False))


def schema_class_name(group: str, name: str) -> str:
    suffix = {"method": "Params", "prototype": "PrototypeConfig", "index": "IndexParams"}[group]
    return "".join(part.title() for part in name.split("_")) + suffix


# --------------------------------------------------------------------------- the built-ins
def builtin_components() -> list[tuple[str, str, str, list[Parameter]]]:
    """``(group, name, target, parameters)`` of every built-in method, OOD-prototype strategy and index
    (imports them all: torch included)."""
    from grood.detectors.registry import DETECTORS
    from grood.method.neighbours import INDEX_CLASSES
    from grood.method.strategies import FilterParams, STRATEGIES

    out = []
    for name, cls in DETECTORS.items():
        out.append(("method", name, f"{cls.__module__}:{cls.__qualname__}", method_parameters(cls)))
    for name, strategy in STRATEGIES.items():
        params = [Parameter("strategy", str, name), *declared_parameters(strategy.parameters, "prototype"),
                  *declared_parameters(FilterParams, "prototype")]
        out.append(("prototype", name, f"grood.method.strategies:{strategy.parameters.__qualname__}", params))
    out.append(("index", "exact", "grood.method.neighbours:exact_choice", []))
    for kind, cls in INDEX_CLASSES.items():
        out.append(("index", kind, f"{cls.__module__}:{cls.__qualname__}", declared_parameters(cls, "index")))
    return out


def _value_source(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def catalogue_source() -> str:
    """The source of :mod:`grood.config.catalogue` for the code as it is."""
    lines = [
        '"""GENERATED by `python -m grood.config.generate` from the components\' own declarations (constructor',
        "signatures, parameter dataclasses); do not edit: tests/test_components.py fails when it differs from the",
        "code. Plain dataclasses, so that composing and validating a run imports neither torch nor the detectors.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass, field",
        "from typing import Any, Dict, List, Optional",
        "",
        "from grood.valid_values import Valid",
        "",
    ]
    entries = []
    for group, name, target, parameters in builtin_components():
        class_name = schema_class_name(group, name)
        lines += ["", "@dataclass", f"class {class_name}:"]
        lines.append(f'    """``{group}={name}``: {target.replace(":", ".")}."""')
        if parameters:
            lines.append("")
        for p in parameters:
            metadata = "" if p.valid is None else f"metadata={{{METADATA_KEY!r}: {p.valid.source()}}}"
            if isinstance(p.default, (list, tuple)):
                default = f"field(default_factory=lambda: {_value_source(p.default)}{', ' if metadata else ''}{metadata})"
            elif metadata:
                default = f"field(default={_value_source(p.default)}, {metadata})"
            else:
                default = _value_source(p.default)
            lines.append(f"    {p.name}: {_type_source(p.type)} = {default}")
        lines.append("")
        entries.append(f"    ({group!r}, {name!r}, {target!r}, {class_name}),")
    methods = [name for group, name, _, _ in builtin_components() if group == "method"]
    lines += ["", "@dataclass", "class AllParams:", '    """``method=all``: every method\'s params (``method.params.vim.dim=32``)."""', ""]
    lines += [f"    {name}: {schema_class_name('method', name)} = field(default_factory={schema_class_name('method', name)})"
              for name in methods]
    lines += ["", "", "#: (group, name, import path of the code, schema) of every built-in component.",
              "BUILTIN: tuple[tuple[str, str, str, type], ...] = (", *entries, ")", ""]
    return "\n".join(lines)


def method_yaml(name: str, cls: Any, parameters: list[Parameter]) -> str:
    """``grood/configs/method/<name>.yaml`` for detector ``cls``: its defaults and APS search values."""
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    needs = [text for flag, text in (
        ("uses_ood_prototype", "the OOD prototype of the `prototype` group"), ("uses_index", "the `index` group"),
        ("needs_network", "the network (it scores the images)")) if getattr(cls, flag, False)]
    head = [
        *textwrap.wrap(f"{cls.__name__} ({cls.__module__}): {doc}", 110, initial_indent="# ", subsequent_indent="# "),
        *textwrap.wrap(f"Reference: {cls.reference}", 110, initial_indent="# ", subsequent_indent="# "),
        "# GENERATED by `python -m grood.config.generate` from the constructor and `sweep` of the class: do not",
        "# edit (tests/test_components.py fails when this file and the code differ).",
    ]
    if needs:
        head.append(f"# Uses {', '.join(needs)}.")
    if getattr(cls, "defaults_in_config", False):
        head.append("# params: the defaults; set one with method.params.<key>=<value>.")
    else:
        head += ["# params: null = the default shown, or with aps=true the value APS picks among the search values",
                 "# (on the ID and OOD validation lists); a value you set (method.params.<key>=<value>) is kept fixed."]
    body = ["defaults:", f"  - /schema/method/{name}@_here_   # the keys and types: grood/config/catalogue.py",
            "  - _self_", f"name: {name}"]
    sweep = dict(getattr(cls, "sweep", {}) or {})
    if not parameters:
        body.append("params: {}")
    else:
        body.append("params:")
        target = getattr(cls, "parameters_from", None) or cls
        signature = inspect.signature(target)
        width = max(len(p.name) for p in parameters) + len(": null")
        docs = _argument_docs(target)
        for p in parameters:
            default = signature.parameters[p.name].default
            if p.name in docs:
                body += textwrap.wrap(docs[p.name], 110, initial_indent="  # ", subsequent_indent="  # ")
            if getattr(cls, "defaults_in_config", False):
                body.append(f"  {p.name}: {_yaml_value(p.default)}")
                continue
            comment = f"default {_yaml_value(default)}"
            if p.name in sweep:
                comment += f"; APS searches {_yaml_value(list(sweep[p.name]))}"
            body.append(f"  {(p.name + ': null').ljust(width)}  # {comment}")
    unknown = sorted(set(sweep) - {p.name for p in parameters})
    if unknown:
        raise TypeError(f"detector {name!r}: sweep keys {unknown} are not parameters")
    return "\n".join(head + body) + "\n"


def _argument_docs(target: Any) -> dict[str, str]:
    """Parameter -> the first line of its entry in the ``Args:`` section of ``target``'s docstring."""
    docs: dict[str, str] = {}
    for owner in (inspect.getmro(target) if inspect.isclass(target) else (target,)):
        text = inspect.getdoc(owner) or ""
        section = text.split("Args:", 1)[1] if "Args:" in text else ""
        entries: dict[str, str] = {}
        name = None
        for line in section.splitlines()[1:]:
            if line and not line.startswith(" "):
                break  # the next section
            found = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.+)$", line)
            if found:
                name = found.group(1)
                entries[name] = found.group(2).strip()
            elif name is not None and line.startswith(" " * 8):  # the entry goes on
                entries[name] += " " + line.strip()
        docs = {**entries, **docs}
    return docs


def _yaml_value(value: Any) -> str:
    import json

    if isinstance(value, tuple):
        value = list(value)
    return "null" if value is None else json.dumps(value)


def generated_files() -> dict[Path, str]:
    """Path -> the text it must hold."""
    from grood.detectors.registry import DETECTORS

    files = {CATALOGUE_PATH: catalogue_source()}
    for name, cls in DETECTORS.items():
        files[METHOD_YAML_DIR / f"{name}.yaml"] = method_yaml(name, cls, method_parameters(cls))
    return files


def main(argv: list[str]) -> int:
    stale = [path for path, text in generated_files().items()
             if not path.is_file() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path} differs from the code: run python -m grood.config.generate", file=sys.stderr)
        return 1 if stale else 0
    from grood.io import atomic_write

    for path, text in generated_files().items():
        if path in stale:
            with atomic_write(path) as handle:
                handle.write(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Every component a run configuration names: methods (detectors), OOD-prototype strategies, indexes.

Importing this module imports neither torch nor the components: each is known by its config group, its
name, the import path of its code and the dataclass of its config parameters (for the built-ins,
generated into :mod:`grood.config.catalogue` from their own declarations). Its code is imported when a
run needs it (:func:`load`).

Adding a method from your own code (no edit to grood): a :class:`~grood.detectors.base.Detector`
subclass and one call::

    from grood.components import register_method

    @register_method
    class MaxLogit(Detector):
        name = "maxlogit"
        sweep = {"scale": [1.0, 2.0]}            # APS's search values (optional)
        def __init__(self, scale: float = 1.0): ...
        def score(self, data): ...

The constructor's signature declares the method's parameters (``method.params.scale``), and its
class attributes what it needs from a run (see :class:`~grood.detectors.base.Detector`). For the command
line (``grood run method=maxlogit``), list the module in the ``grood.plugins`` entry-point group
of your package (pyproject ``[project.entry-points."grood.plugins"] maxlogit = "my_package.module"``):
:func:`load_plugins` imports every such module before the configuration is composed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

#: The config groups whose options are components.
GROUPS = ("method", "prototype", "index")
#: The entry-point group of plugin modules (each registers its components when imported).
PLUGIN_GROUP = "grood.plugins"


@dataclass(frozen=True)
class Component:
    """One option of a config group: ``group=name``.

    Attributes:
        target: ``"module:attribute"``, the code (imported by :func:`load`).
        schema: the dataclass of its config parameters (``method.params``, ``prototype``, ``index.params``).
    """

    group: str
    name: str
    target: str
    schema: type


_PLUGINS: dict[tuple[str, str], tuple[Component, Any]] = {}
_plugins_loaded = False


def _builtin() -> dict[tuple[str, str], Component]:
    from grood.config.catalogue import BUILTIN

    return {(group, name): Component(group, name, target, schema) for group, name, target, schema in BUILTIN}


def components(group: str) -> dict[str, Component]:
    """The options of ``group``, by name: the built-ins (in their order; for methods, GROOD first), then the
    registered plugins."""
    if group not in GROUPS:
        raise ValueError(f"unknown component group {group!r}; valid: {', '.join(GROUPS)}")
    found = {name: c for (g, name), c in _builtin().items() if g == group}
    found.update({name: c for (g, name), (c, _) in _PLUGINS.items() if g == group})
    return found


def load(group: str, name: str) -> Any:
    """The code of component ``group=name`` (a detector class, ...), imported now."""
    if (group, name) in _PLUGINS:
        return _PLUGINS[(group, name)][1]
    known = components(group)
    if name not in known:
        raise ValueError(f"unknown {group} {name!r}; valid: {', '.join(known)}")
    module, _, attribute = known[name].target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def plugin_names(group: str) -> list[str]:
    """The registered plugins of ``group``."""
    return [name for (g, name) in _PLUGINS if g == group]


def register_method(cls: type) -> type:
    """Register detector class ``cls`` (a :class:`~grood.detectors.base.Detector` with a ``name``) as
    ``method=<cls.name>``; its config parameters come from its constructor's signature (hydra-zen). Returns
    ``cls`` (usable as a class decorator). Call it before the configuration is composed."""
    from grood.config.generate import method_parameters, parameters_schema, schema_class_name

    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"{cls.__qualname__}.name={name!r}: a method needs a lower-case identifier as its name")
    if name == "all" or ("method", name) in _builtin():
        raise ValueError(f"method name {name!r} is taken by grood; choose another")
    schema = parameters_schema(schema_class_name("method", name), method_parameters(cls), module=cls.__module__)
    _PLUGINS[("method", name)] = (Component("method", name, f"{cls.__module__}:{cls.__qualname__}", schema), cls)
    return cls


def load_plugins() -> None:
    """Import every module of the ``grood.plugins`` entry-point group (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()

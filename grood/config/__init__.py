"""grood's run configuration: typed schema (:mod:`grood.config.schema`), composition and validation.

    from grood.config import compose_run_config
    config = compose_run_config(["experiment=smoke", "method=knn", "method.params.k=5"])   # a RunConfig

``grood run`` (Hydra app), ``grood reproduce`` and the tests all go through :func:`validate`, so
every run is checked the same way before anything is computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from grood.config.schema import (PRESETS, ConfigError, RunConfig, all_params_schema, component_schemas, register_configs,
                                 typed_object)
from grood.valid_values import field_problems

__all__ = [
    "CONFIG_DIR", "ConfigError", "RunConfig", "check_command_line", "check_parameters", "command_line_overrides",
    "compose_run_config", "config_hash", "explain_override_error",
    "hydra_compose", "register_configs", "result_config", "to_plain", "validate",
]

#: The Hydra config folder, shipped inside the package (``grood/configs``; the checkout's top-level
#: ``configs`` is a link to it), so an installed wheel composes runs from any working directory.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: Keys that change how a run goes, not what it computes: left out of :func:`config_hash` and of the
#: comparison that decides whether a finished run can be reused.
NON_RESULT_KEYS: tuple[str, ...] = (
    "progress", "num_workers", "batch_size", "experiment_name", "paths.cache_dir", "paths.results_dir",
    "paths.shared_dir", "paths.smoke_data_root", "paths.checkpoint_root", "cache.verify", "check_files",
    "cache.shard_batches", "extract.num_jobs", "extract.job_index", "extract.only",
)

#: Keys added after results were first recorded, left out of :func:`result_config` while unset (None or
#: ``{}``), so that the runs recorded before them keep their config hash.
UNSET_OPTIONAL_KEYS: tuple[str, ...] = (
    "method.preset", "backbone.target", "backbone.early_layer", "backbone.feature_layer", "backbone.head_layer",
    "backbone.kwargs",
)
#: Config nodes whose keys are free (not declared in the schema), and what they hold.
OPEN_KEYS: dict[str, str] = {"backbone.kwargs": "the keyword arguments of backbone.target (backbone=module)"}

# --------------------------------------------------------------------------- validation
def _walk_problems(node: Any, prefix: str) -> list[str]:
    """Every ``problems()`` of ``node`` and of the dataclasses below it, each prefixed by its key path."""
    found: list[str] = []
    if not dataclasses.is_dataclass(node):
        return found
    if hasattr(node, "problems"):  # "key=value: why", or ": why" for the node as a whole
        found += [f"{prefix[:-1] if problem.startswith(': ') else prefix}{problem}" for problem in node.problems()]
    for item in dataclasses.fields(node):
        found += _walk_problems(getattr(node, item.name), f"{prefix}{item.name}.")
    return found


def _check_group_types(config: RunConfig) -> list[str]:
    """A group's name key changed by hand (``method.name=knn`` on ``method=grood``) leaves the other
    option's schema in place: say to select the option instead."""
    found = []
    method, prototype, index = config.method, config.prototype, config.index
    methods = component_schemas("method")
    expected = all_params_schema() if method.name == "all" else methods.get(method.name)
    if expected is None:
        found.append(f"method.name={method.name!r}: unknown method; valid: {sorted([*methods, 'all'])}")
    elif type(method.params) is not expected:
        found.append(f"method.name={method.name!r} was set without its parameters' schema: select the method "
                     f"with method={method.name}")
    prototypes = component_schemas("prototype")
    expected = prototypes.get(prototype.strategy)
    if expected is None:
        found.append(f"prototype.strategy={prototype.strategy!r}: unknown; valid: {sorted(prototypes)}")
    elif type(prototype) is not expected:
        found.append(f"prototype.strategy={prototype.strategy!r} was set by hand: select it with "
                     f"prototype={prototype.strategy}")
    indexes = component_schemas("index")
    expected = indexes.get(index.kind)
    if expected is None:
        found.append(f"index.kind={index.kind!r}: unknown; valid: {sorted(indexes)}")
    elif type(index.params) is not expected:
        found.append(f"index.kind={index.kind!r} was set by hand: select it with index={index.kind}")
    return found


def _check_preset(config: RunConfig) -> list[str]:
    """A run that records ``method.preset`` holds that preset's settings (:data:`~grood.config.schema.PRESETS`):
    changing one of them is another configuration, which ``method=grood`` with the settings wanted runs."""
    preset = getattr(config.method, "preset", None)
    if preset is None:
        return []
    if preset not in PRESETS:
        return [f"method.preset={preset!r}: unknown preset; valid: {sorted(PRESETS)}"]
    found = []
    for key, wanted in PRESETS[preset].items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part, None)
        if value != wanted:
            found.append(f"{key}={value!r}: method={preset} sets {key}={wanted!r}; to change it, run method=grood "
                         f"with the settings you want instead of the preset")
    return found


def validate(cfg: DictConfig | RunConfig, components: bool = False) -> RunConfig:
    """The composed config as a checked :class:`RunConfig`; every problem is reported at once. Imports
    neither torch nor the components, unless ``components``: then each component also checks its own
    parameters (:func:`parameter_problems`).

    Raises:
        ConfigError: one line per problem, each naming the key, its value and the valid range.
    """
    if isinstance(cfg, RunConfig):
        config = cfg
    else:
        config = typed_object(cfg, RunConfig, "configuration", "run configuration (configs/config.yaml)",
                              "grood/config/schema.py")
    problems = _check_group_types(config)
    if not problems:
        problems = _check_preset(config)
    if not problems:
        problems = _walk_problems(config, "") + (parameter_problems(config) if components else [])
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return config


def method_params(method: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, params)]`` of ``config.method``: one method, or every method of ``method=all`` (in the
    registry's order, GROOD first). ``params``: the values that are set (a baseline's None = its default
    or APS's pick)."""
    def given(params: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(params).items() if v is not None}

    if method.name == "all":
        return [(name, given(getattr(method.params, name))) for name in component_schemas("method")]
    return [(method.name, given(method.params))]


def check_parameters(config: RunConfig) -> None:
    """:func:`parameter_problems` as one :class:`ConfigError` (one line per problem, naming the key)."""
    problems = parameter_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def parameter_problems(config: RunConfig) -> list[str]:
    """Every component parameter of ``config`` that cannot work, one line each: first against the valid
    values the components declare (:mod:`grood.valid_values`, copied into the config schema: no torch
    import), and only when those all hold, by the components themselves (a method's constructor, the
    OOD-prototype strategy, the index: relations between parameters; imports them, and torch)."""
    problems = declared_value_problems(config)
    if problems:
        return problems
    from grood.components import load
    from grood.method.strategies import strategy_params

    several = config.method.name == "all"
    for name, params in method_params(config.method):
        cls = load("method", name)
        try:
            cls(**params)
        except (TypeError, ValueError) as error:
            key = f"method.params.{name}" if several else "method.params"
            problems.append(f"{key}: {error} (set: {params})")
    prototype = {k: v for k, v in dataclasses.asdict(config.prototype).items() if k != "strategy"}
    try:
        strategy_params(config.prototype.strategy, prototype)
    except ValueError as error:
        problems.append(f"prototype: {error}")
    index = dataclasses.asdict(config.index.params)
    if index:
        try:
            load("index", config.index.kind)(1, **index)
        except (TypeError, ValueError) as error:
            problems.append(f"index.params: {error} (index={config.index.kind})")
    return problems


def declared_value_problems(config: RunConfig) -> list[str]:
    """``<key>=<value>: must be ...`` for every component parameter of ``config`` outside the valid values
    its schema field declares. Torch-free: reads the config dataclasses' field metadata only."""
    problems = []
    several = config.method.name == "all"
    for name, _ in method_params(config.method):
        params = getattr(config.method.params, name) if several else config.method.params
        problems += field_problems(params, f"method.params.{name}" if several else "method.params")
    problems += field_problems(config.prototype, "prototype")
    problems += field_problems(config.index.params, "index.params")
    return problems


@contextmanager
def _unlocked(cfg: DictConfig) -> Iterator[None]:
    from omegaconf import open_dict

    with open_dict(cfg):
        yield


# --------------------------------------------------------------------------- plain data and hashes
def to_plain(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON-ready data (what ``run.json`` records)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def result_config(plain: dict[str, Any]) -> dict[str, Any]:
    """``plain`` without :data:`NON_RESULT_KEYS`, the data root and checkpoint as absolute paths: what
    determines a run's numbers."""
    out = json.loads(json.dumps(plain))
    paths = out.get("paths") or {}
    if paths.get("data_root"):  # ../shared/x and /abs/shared/x are the same data
        paths["data_root"] = str(Path(paths["data_root"]).expanduser().resolve())
    dataset = out.get("dataset") or {}
    if dataset.get("checkpoint"):
        dataset["checkpoint"] = str(Path(dataset["checkpoint"]).expanduser().resolve())
    for dotted in (*NON_RESULT_KEYS, *UNSET_OPTIONAL_KEYS):
        node = out
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and (dotted in NON_RESULT_KEYS or node.get(last) in (None, {})):
            node.pop(last, None)
    return out


def config_hash(plain: dict[str, Any], length: int = 8) -> str:
    """A short hash of :func:`result_config` (``plain``): equal for runs that compute the same numbers."""
    text = json.dumps(result_config(plain), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _run_hash_resolver(*, _root_: DictConfig) -> str:
    """``${grood.run_hash:}``: :func:`config_hash` of the run config holding it (results folder names)."""
    root = _root_.copy()
    with _unlocked(root):
        if "hydra" in root:
            del root["hydra"]
    try:
        plain = OmegaConf.to_container(root, resolve=True)
    except Exception:  # an unresolvable key: the run stops at validation with a clear message
        return "unresolved"
    return config_hash(plain)


OmegaConf.register_new_resolver("grood.run_hash", _run_hash_resolver, replace=True)


# --------------------------------------------------------------------------- composition
#: OmegaConf's type names in "could not be converted to <Type>" -> the Python type a user writes.
_OMEGACONF_TYPES = {"Integer": "int", "Float": "float", "Boolean": "bool", "String": "str"}


def explain_override_error(error: BaseException, cfg: DictConfig | None = None) -> str:
    """Hydra's "Key 'kk' is not in struct" with the valid keys of the node it names; a value of the wrong
    type (``method.params.k=five``) named as such, with the type the key expects."""
    from omegaconf.errors import OmegaConfBaseException, ValidationError

    cause = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    message = str(error).strip()
    full_key = getattr(cause, "full_key", None)
    if cause is None or not full_key:
        return message
    if isinstance(cause, ValidationError):  # the key exists; its value does not convert to the key's type
        reason = str(getattr(cause, "msg", cause)).splitlines()[0]
        found = re.search(r"converted to (\w+)|is not a valid (\w+)", reason)
        wanted = (found.group(1) or found.group(2)) if found else ""
        wanted = _OMEGACONF_TYPES.get(wanted, wanted)
        value = getattr(cause, "value", None)
        expected = f"expected {wanted}, got {value!r}" if wanted else reason
        return (f"{message}\n'{full_key}' is a setting, but its value has the wrong type: {expected} "
                f"(OmegaConf: {reason})")
    # Hydra's own hint "To append to your config use +key=value" would contradict grood's rule: a key added
    # with '+' is refused (nothing reads it), except in the free dicts of OPEN_KEYS
    message = "\n".join(line for line in message.splitlines() if not line.startswith("To append to your config use +"))
    if cfg is None:
        return f"{message}\n'{full_key}' is not a setting; check the spelling (every key is declared in grood/config/schema.py)"
    parent_key = full_key.rpartition(".")[0]
    if parent_key in OPEN_KEYS:  # a dict of free keys: Hydra adds a new one with '+'
        return (f"{message}\n{parent_key} holds {OPEN_KEYS[parent_key]}; add a key with +{full_key}=<value> "
                f"(Hydra's '+' for a key the config does not hold yet)")
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # a declared key given a bad value
        return f"{message}\n{full_key}: {str(cause).splitlines()[0]}"
    node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(node, DictConfig):
        valid = ", ".join(str(k) for k in node.keys())
        where = parent_key or "the top level"
        return f"{message}\n'{full_key}' is not a setting; valid keys of {where}: {valid}"
    return message


def _group_defaults(overrides: Sequence[str]) -> list[str]:
    """The group selections among ``overrides`` (``method=knn``), to compose the base config the other
    overrides apply to."""
    return [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]


def hydra_compose(overrides: Sequence[str], config_dir: str | Path = CONFIG_DIR, config_name: str = "config",
                  return_hydra_config: bool = False) -> DictConfig:
    """Hydra's compose API on ``configs/`` (no run, no output folder); errors name the valid keys.
    ``return_hydra_config``: keep the ``hydra`` node (launcher, run dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="grood"):
        try:
            return compose(config_name=config_name, overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
        except Exception as error:
            try:
                base = compose(config_name=config_name, overrides=_group_defaults(overrides))
            except Exception:
                base = None
            raise ConfigError(explain_override_error(error, base)) from error


def compose_run_config(overrides: Sequence[str], config_dir: str | Path = CONFIG_DIR,
                       check: bool = True) -> RunConfig:
    """:func:`hydra_compose` then :func:`validate` and (``check``) :func:`check_parameters`, which imports
    the components: the checked run config ``grood run`` would get."""
    return validate(hydra_compose(overrides, config_dir), components=check)


# --------------------------------------------------------------------------- the command line
#: Hydra flags that take a value (``--config-name x``); the others (``-m``, ``--multirun``) take none.
_FLAGS_WITH_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--info", "-i", "--experimental-rerun")


def command_line_overrides(argv: Sequence[str]) -> list[str]:
    """The config overrides of a ``grood run`` command line, each sweep (``seed=0,1,2``) at its first
    value; Hydra's own flags and ``hydra.*`` / ``hydra/...`` overrides are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
            continue
        if arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            continue
        args.append(arg)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args)
    except Exception as error:  # Hydra's override grammar
        raise ConfigError(f"cannot parse the command line: {error}") from error
    out = []
    for override, text in zip(parsed, args):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def check_command_line(argv: Sequence[str]) -> RunConfig:
    """Compose and validate the config of a ``grood run`` command line (sweeps at their first value)
    before Hydra starts: a bad key or value stops it with a message listing the valid keys. A key or type
    error is found before torch is imported (Hydra's composition); then every range problem at once, the
    components checking their own parameters."""
    return compose_run_config(command_line_overrides(argv))

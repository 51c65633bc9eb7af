"""The typed run configuration: every key a user may set, with its type, default and valid range.

Hydra composes ``configs/config.yaml`` on top of these dataclasses (stored in Hydra's ConfigStore by
:func:`register_configs`), so a key that is not declared here is an error at composition time, a value of
the wrong type too, and ``method.params.k=5`` works without Hydra's ``+``. :func:`validate` then turns the
composed config into a :class:`RunConfig` and checks every range at once (``k >= 1``,
``0 < mixup_lambda < 1``, ...); the pipeline receives that object, never a dict with fallbacks.

Groups (one schema per option where the options differ):

- ``paths``: :class:`PathsConfig`; ``backbone``: :class:`BackboneConfig`; ``dataset``: :class:`DatasetConfig`;
- ``method``: ``<name>`` -> :class:`MethodConfig` whose ``params`` are that method's own dataclass;
  ``all`` -> every method's params, one field per method;
- ``prototype``: one dataclass per strategy; ``index``: one per kind.

The method, prototype and index dataclasses are generated from each component's own declaration of its
parameters (:mod:`grood.config.generate`, :func:`component_schemas`). Baseline parameters default to
``None``: OpenOOD v1.5's default (its ``postprocessor_args``), or the value OpenOOD's automatic parameter
search picks when ``aps=true``. A value set here is kept fixed. Each method's values are shown in
``configs/method/<name>.yaml``. Their ranges are checked by the components themselves
(:func:`grood.config.parameter_problems`), which imports them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to do."""


def typed_object(cfg: Any, schema: type, what: str, expected: str, declared_in: str) -> Any:
    """The composed ``cfg`` (a DictConfig) as an instance of ``schema``, its ``hydra`` node left out.

    Raises:
        ConfigError: an interpolation that cannot resolve, a config of another kind, or keys that ``schema``
            does not declare (added with Hydra's ``+``: nothing would read them), all named. In messages,
            ``what`` names the configuration, ``expected`` the kind wanted and ``declared_in`` the file that
            declares its keys.
    """
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    if "hydra" in cfg:
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        config = OmegaConf.to_object(cfg)
    except Exception as error:  # an interpolation that cannot resolve, a missing mandatory value
        raise ConfigError(f"the {what} cannot be resolved: {error}") from error
    if not isinstance(config, schema):
        raise ConfigError(f"expected a {expected}; got {type(config).__name__}")
    undeclared = undeclared_keys(OmegaConf.to_container(cfg, resolve=False),
                                 OmegaConf.to_container(OmegaConf.structured(config), resolve=False), "")
    if undeclared:
        raise ConfigError(f"undeclared {what} key(s), which nothing would read: " + ", ".join(undeclared)
                          + f"\n(every key is declared in {declared_in}; check the spelling)")
    return config


def undeclared_keys(given: Any, declared: Any, prefix: str) -> list[str]:
    """Dotted keys of ``given`` that ``declared`` (the typed config) lacks."""
    if not isinstance(given, dict) or not isinstance(declared, dict):
        return []
    found = []
    for key, value in given.items():
        if key not in declared:
            found.append(f"{prefix}{key}")
        else:
            found += undeclared_keys(value, declared[key], f"{prefix}{key}.")
    return found


# --------------------------------------------------------------------------- small checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(problems: list[str], key: str, value: Any, low: int) -> None:
    if value is not None and (not _is_int(value) or value < low):
        problems.append(f"{key}={value!r}: must be an integer >= {low}")


def _one_of(problems: list[str], key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value is not None and value not in valid:
        problems.append(f"{key}={value!r}: must be one of {list(valid)}")


def _three_numbers(problems: list[str], key: str, value: Any, positive: bool = False) -> None:
    if value is None:
        return
    if len(value) != 3:
        problems.append(f"{key}={list(value)!r}: must hold 3 numbers (R, G, B)")
    elif positive and any(v <= 0 for v in value):
        problems.append(f"{key}={list(value)!r}: must be positive")


# --------------------------------------------------------------------------- paths, data, network
@dataclass
class PathsConfig:
    """Where things live (``configs/paths/default.yaml`` sets them from the environment)."""

    data_root: str = MISSING        # the one data root (OpenOOD v1.5 layout); $GROOD_DATA_ROOT
    checkpoint_root: str = MISSING  # $GROOD_CHECKPOINT_ROOT
    cache_dir: str = MISSING        # feature and prototype cache; $GROOD_CACHE_DIR
    results_dir: str = MISSING      # $GROOD_RESULTS_DIR
    shared_dir: str = MISSING       # the shared smoke benchmark and its checkpoint; $GROOD_SHARED_DIR
    smoke_data_root: str = MISSING  # the smoke benchmark's root inside shared_dir (experiment=smoke uses it)


@dataclass
class TransformConfig:
    """Overrides of the test transform (``None`` = keep what the benchmark and the backbone say)."""

    size: Optional[int] = None
    crop_size: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    interpolation: Optional[str] = None

    def problems(self) -> list[str]:
        found: list[str] = []
        _at_least(found, "size", self.size, 1)
        _at_least(found, "crop_size", self.crop_size, 1)
        _three_numbers(found, "mean", self.mean)
        _three_numbers(found, "std", self.std, positive=True)
        _one_of(found, "interpolation", self.interpolation, ("nearest", "bilinear", "bicubic"))
        return found

    def given(self) -> dict[str, Any]:
        """The keys that are set, as a plain dict (lists for mean/std)."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class BackboneConfig:
    """The network. ``transform``: the input statistics (and sizes) its checkpoints were trained with;
    unset keys come from the benchmark's OpenOOD preset."""

    name: str = MISSING
    split_block: Optional[int] = None   # None = the default split (after the first block)
    weights: Optional[str] = None       # torchvision weight name or file (ImageNet nets)
    transform: TransformConfig = field(default_factory=TransformConfig)
    # backbone=module only: any importable network factory, split by layer name (grood.wrap). Its checkpoint
    # is dataset.checkpoint, the one checkpoint setting (the issue's `backbone.checkpoint`).
    target: Optional[str] = None        # e.g. torchvision.models.resnet50 (called with kwargs)
    early_layer: Optional[str] = None   # e.g. layer1: the early split (eq. 9's mixup layer)
    feature_layer: Optional[str] = None  # e.g. avgpool; None = the input of head_layer
    head_layer: Optional[str] = None    # e.g. fc: the final classifier layer
    kwargs: Dict[str, Any] = field(default_factory=dict)  # the factory's keyword arguments, e.g. num_classes: 10

    def problems(self) -> list[str]:
        found: list[str] = []
        _at_least(found, "split_block", self.split_block, 0)
        module_keys = {"target": self.target, "early_layer": self.early_layer, "feature_layer": self.feature_layer,
                       "head_layer": self.head_layer, "kwargs": self.kwargs or None}
        if self.name == "module":
            for key in ("target", "early_layer", "head_layer"):
                if not module_keys[key]:
                    found.append(f"{key}={module_keys[key]!r}: backbone=module needs it (e.g. backbone.target="
                                 "torchvision.models.resnet18 backbone.early_layer=layer1 backbone.head_layer=fc)")
            for key in ("split_block", "weights"):
                if getattr(self, key) is not None:
                    found.append(f"{key}={getattr(self, key)!r}: not read by backbone=module (the split is "
                                 "early_layer; torchvision weights go in kwargs.weights); leave it null")
        else:
            found += [f"{key}={value!r}: read only by backbone=module; leave it unset"
                      for key, value in module_keys.items() if value is not None]
        return found + [f"transform.{p}" for p in self.transform.problems()]


@dataclass
class DatasetConfig:
    """The benchmark (a registry name, or a user definition) and the checkpoint evaluated on it.

    The data root is never set here: it is ``paths.data_root``."""

    name: str = MISSING
    benchmark: Optional[str] = None
    definition: Dict[str, Any] = field(default_factory=dict)  # a user benchmark (grood.data.benchmark_from_dict); {} = none
    checkpoint: Optional[str] = None
    transform: TransformConfig = field(default_factory=TransformConfig)  # the user's own overrides: win

    def problems(self) -> list[str]:
        found = [f"transform.{p}" for p in self.transform.problems()]
        if not self.benchmark and not self.definition:
            found.append("benchmark: give a registry name (dataset.benchmark) or a user benchmark (dataset.definition)")
        return found


# --------------------------------------------------------------------------- methods, prototypes, indexes
def component_schemas(group: str) -> dict[str, type]:
    """Option name -> the dataclass of its parameters, for ``group`` ("method", "prototype", "index"):
    generated from each component's own declaration (:mod:`grood.config.catalogue`, plugins: at their
    registration; see :mod:`grood.components`)."""
    from grood.components import components

    return {name: component.schema for name, component in components(group).items()}


_ALL_PARAMS: dict[tuple[str, ...], type] = {}


def all_params_schema() -> type:
    """``method=all``'s params: one field per method (``method.params.vim.dim=32``): the catalogue's, with a
    field added per plugin method (one class per set of plugins)."""
    from grood.config.catalogue import AllParams

    methods = component_schemas("method")
    extra = [(name, schema, field(default_factory=schema)) for name, schema in methods.items()
             if name not in {f.name for f in dataclasses.fields(AllParams)}]
    if not extra:
        return AllParams
    key = tuple(name for name, _, _ in extra)
    if key not in _ALL_PARAMS:
        _ALL_PARAMS[key] = dataclasses.make_dataclass("AllParams", extra, bases=(AllParams,))
    return _ALL_PARAMS[key]


@dataclass
class MethodConfig:
    """``method=<name>``: the method and its parameters (``params``: its schema, :func:`component_schemas`)."""

    name: str = MISSING
    params: Any = None
    preset: Optional[str] = None    # set by a preset of settings (configs/method/grood_openood.yaml); see PRESETS


#: A method preset (``method=<preset>``, a ``# @package _global_`` option that also selects other groups) ->
#: the method it runs (``method.name``, so results tables list it as that method) and the settings that make
#: it that preset. :func:`grood.config.validate` refuses a run that records the preset but changed one of them.
PRESETS: dict[str, dict[str, Any]] = {
    "grood_openood": {"method.name": "grood", "prototype.strategy": "val_ood", "index.kind": "faiss_ivf",
                      "method.params.fit_on": "correct"},
}


@dataclass
class IndexConfig:
    kind: str = MISSING
    params: Any = None


# --------------------------------------------------------------------------- the run
@dataclass
class CacheConfig:
    """The feature cache. ``verify``: how the listed images are fingerprinted in the cache key."""

    verify: str = "stat"   # stat: size + modification time of every listed file; content: sha256 of each
    shard_batches: int = 64  # a cache shard is shard_batches * batch_size rows, on disk as soon as computed

    def problems(self) -> list[str]:
        found: list[str] = []
        _one_of(found, "verify", self.verify, ("stat", "content"))
        _at_least(found, "shard_batches", self.shard_batches, 1)
        return found


@dataclass
class ExtractConfig:
    """Feature extraction shared by several jobs (a SLURM array job; torchrun ranks set it themselves): this
    job computes the cache shards ``s`` with ``s % num_jobs == job_index`` of every split. ``only``: extract
    this job's shards and stop (no method runs); a later run with ``num_jobs=1`` reads the complete cache."""

    num_jobs: int = 1
    job_index: int = 0
    only: bool = False

    def problems(self) -> list[str]:
        found: list[str] = []
        _at_least(found, "num_jobs", self.num_jobs, 1)
        _at_least(found, "job_index", self.job_index, 0)
        if _is_int(self.num_jobs) and _is_int(self.job_index) and self.job_index >= self.num_jobs:
            found.append(f"job_index={self.job_index}: must be below num_jobs={self.num_jobs}")
        if self.num_jobs > 1 and not self.only:
            found.append(f"num_jobs={self.num_jobs}: a job that extracts only its share of the shards cannot run "
                         "the methods; set extract.only=true (then run once more without extract.* settings)")
        return found


@dataclass
class ExtraConfig:
    """Labels recorded in ``run.json`` ``extra`` (the table generators filter on them); no effect on the run."""

    epoch: Optional[int] = None   # the training epoch of dataset.checkpoint (Table 5, Figure 3)
    index: Optional[str] = None   # the timing table's index label (appendix A.4)

    def problems(self) -> list[str]:
        return []


@dataclass
class RunConfig:
    """One ``grood run`` run. Every key, its type and its default."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: Any = MISSING           # a MethodConfig (method/<name>.yaml)
    prototype: Any = MISSING        # a prototype schema (component_schemas("prototype"); prototype/<strategy>.yaml)
    index: Any = MISSING            # an IndexConfig (index/<kind>.yaml); read by the methods that use_index
    cache: CacheConfig = field(default_factory=CacheConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    extra: ExtraConfig = field(default_factory=ExtraConfig)
    seed: int = 0                   # selects the checkpoint (OpenOOD's s0/s1/s2) and seeds every sampler
    device: str = "auto"            # auto (cuda when available, else cpu) | cpu | cuda | cuda:<n>
    batch_size: int = 128
    num_workers: int = 4            # data-loader workers (at most the machine's cores)
    progress: bool = True           # tqdm progress bars; false: one log line per phase start and end
    experiment_name: str = "default"  # recorded in run.json; the table generators filter on it
    check_files: bool = True        # every listed image exists and decodes, checked before the first forward pass
    aps: bool = True                # OpenOOD's automatic parameter search for the baselines with a sweep
    on_invalid: str = "error"       # a method parameter invalid for this network: error | adapt (nearest valid)
    # full-spectrum OOD (OpenOOD's eval_ood(fsood=True)): the benchmark's covariate-shifted ID sets (csid lists,
    # e.g. CIFAR-10-C) count as ID; adds metrics_fsood.csv (its rows + one per csid set) and run.json "fsood".
    # A benchmark without csid lists is an error.
    fsood: bool = False

    def problems(self) -> list[str]:
        found: list[str] = []
        _at_least(found, "seed", self.seed, 0)
        _at_least(found, "batch_size", self.batch_size, 1)
        _at_least(found, "num_workers", self.num_workers, 0)
        _one_of(found, "on_invalid", self.on_invalid, ("error", "adapt"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            found.append(f"device={self.device!r}: must be auto, cpu, cuda or cuda:<n>")
        return found


# --------------------------------------------------------------------------- Hydra registration
def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent), after importing the plugins
    (:func:`grood.components.load_plugins`). The yaml files name them in their defaults:
    ``config.yaml`` -> ``run_schema``; ``method/<name>.yaml`` -> ``/schema/method/<name>``;
    ``prototype/<s>.yaml`` -> ``/schema/prototype/<s>``; ``index/<kind>.yaml`` -> ``/schema/index/<kind>``
    (paths, backbone and dataset are typed by :class:`RunConfig` itself). The ``schema/`` groups keep them
    out of the options a user picks from. A plugin method without a yaml file is an option all the same."""
    from hydra.core.config_store import ConfigStore

    from grood.components import GROUPS, load_plugins, plugin_names

    load_plugins()
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    wrap = {"method": lambda name, schema: MethodConfig(name=name, params=schema()),
            "prototype": lambda name, schema: schema(),
            "index": lambda name, schema: IndexConfig(kind=name, params=schema())}
    for group in GROUPS:  # methods, OOD-prototype strategies and indexes alike
        for name, schema in component_schemas(group).items():
            node = wrap[group](name, schema)
            store.store(group=f"schema/{group}", name=name, node=node)
            if group == "method" and name in plugin_names(group):  # the option: a plugin has no yaml file
                store.store(group="method", name=name, node={"defaults": [f"/schema/method/{name}@_here_", "_self_"]},
                            provider="grood")
    store.store(group="schema/method", name="all", node=MethodConfig(name="all", params=all_params_schema()()))

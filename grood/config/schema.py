"""The typed run configuration: every key a user may set, with its type, default and valid range.

Hydra composes ``configs/config.yaml`` on top of these dataclasses (stored in Hydra's ConfigStore by
:func:`register_configs`), so a key that is not declared here is an error at composition time, a value of
the wrong type too, and ``method.params.k=5`` works without Hydra's ``+``. :func:`validate` then turns the
composed config into a :class:`RunConfig` and checks every range at once (``k >= 1``,
``0 < mixup_lambda < 1``, ...); the pipeline receives that object, never a dict with fallbacks.

Groups (one schema per option where the options differ):

- ``paths``: :class:`PathsConfig`; ``backbone``: :class:`BackboneConfig`; ``dataset``: :class:`DatasetConfig`;
- ``method``: ``<name>`` -> :class:`MethodConfig` whose ``params`` are that method's own dataclass
  (:data:`METHOD_PARAMS`); ``all`` -> every method's params, one field per method;
- ``prototype``: one dataclass per strategy (:data:`PROTOTYPE_SCHEMAS`); ``index``: one per kind
  (:data:`INDEX_SCHEMAS`).

Baseline parameters default to ``None``: OpenOOD v1.5's default (its ``postprocessor_args``), or the value
OpenOOD's automatic parameter search picks when ``aps=true``. A value set here is kept fixed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to do."""


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


def _importable(cls: type) -> type:
    """A generated dataclass made an attribute of this module, so that pickle (and cloudpickle, which the
    submitit launcher uses to ship a job's config) refers to it by name: the job's config then has the very
    schema types that :func:`grood.config.validate` checks, not copies."""
    if cls.__name__ in globals():
        raise TypeError(f"generated schema {cls.__name__} clashes with a name of grood.config.schema")
    cls.__module__ = __name__
    cls.__qualname__ = cls.__name__
    globals()[cls.__name__] = cls
    return cls


# --------------------------------------------------------------------------- methods
@dataclass
class GROODParams:
    """GROOD's own parameters (never searched by APS); checked by :meth:`grood.method.GROOD.check_params`."""

    k: int = 1                 # eq. 6: distance to the k-th nearest training gradient (Fig. 5)
    fit_on: str = "all"        # all | correct (only correctly classified training samples are indexed)
    variant: str = "grood"     # grood | ood_distance | gradient_l1 | class_gradient (Table 4)

    def problems(self) -> list[str]:
        from grood.method.detector import GROOD

        try:
            GROOD.check_params(k=self.k, fit_on=self.fit_on, variant=self.variant)
        except ValueError as error:
            return [f": {error} (k={self.k!r}, fit_on={self.fit_on!r}, variant={self.variant!r})"]
        return []


#: OpenOOD's spelling of a method parameter -> grood's, per method: the keys of OpenOOD v1.5's
#: ``configs/postprocessors/<name>.yml`` ``postprocessor_args`` that grood spells otherwise, and OpenMax's
#: constants as ``openmax_postprocessor.py`` names them. Each alias is a declared field of the method's
#: params (``method=knn method.params.K=50``); :func:`canonical_params` moves it to grood's name, the one
#: ``run.json`` records. The only place that knows the aliases.
PARAM_ALIASES: dict[str, dict[str, str]] = {
    "knn": {"K": "k"},
    "gen": {"M": "m"},
    "openmax": {"weibull_tail": "tail_size", "weibull_alpha": "alpha"},
}


def canonical_params(method: str, values: dict[str, Any],
                     key: str = "method.params") -> tuple[dict[str, Any], list[str]]:
    """``values`` (a method's params, plain) with each alias set moved to grood's name (the alias left None),
    and the problems: an alias set together with its canonical name (``key``: the config path, for the message)."""
    out, problems = dict(values), []
    for alias, canonical in PARAM_ALIASES.get(method, {}).items():
        if out.get(alias) is None:
            continue
        if out.get(canonical) is not None:
            problems.append(f"{key}.{alias}={out[alias]!r} and {key}.{canonical}={out[canonical]!r}: {alias!r} is "
                            f"OpenOOD's name for {canonical!r}; set only one of them")
            continue
        out[canonical], out[alias] = out[alias], None
    return out, problems


def _baseline_params_dataclass(name: str) -> type:
    """A dataclass with one ``Optional`` field per constructor parameter of baseline ``name`` (default None =
    OpenOOD's default or APS's choice), and one per OpenOOD alias of :data:`PARAM_ALIASES` (same type);
    its ``problems`` checks the ranges the detector documents."""
    import inspect

    from grood.detectors.registry import DETECTORS

    cls = DETECTORS[name]
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    fields = []
    for key, parameter in inspect.signature(cls.__init__).parameters.items():
        if key in ("self", "device") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = str(parameter.annotation)
        if annotation in simple:
            kind: Any = Optional[simple[annotation]]
        elif annotation.startswith(("Sequence[float]", "tuple[float")):
            kind = Optional[List[float]]
        elif annotation.startswith("dict"):
            kind = Optional[Dict[str, Any]]
        else:
            raise TypeError(f"detector {name!r}: parameter {key!r} has an annotation ({annotation}) the config "
                            "schema cannot declare; give it int, float, bool, str, Sequence[float] or dict")
        fields.append((key, kind, field(default=None)))
    kinds = {key: kind for key, kind, _ in fields}
    for alias, canonical in PARAM_ALIASES.get(name, {}).items():
        fields.append((alias, kinds[canonical], field(default=None)))

    def problems(self: Any) -> list[str]:
        """The detector's own constructor checks the values that are set (the one place they are checked)."""
        aliases = PARAM_ALIASES.get(name, {})
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in aliases}
        try:
            cls(**given)
        except (TypeError, ValueError) as error:
            return [f": {error} (set: {given})"]
        return []

    return _importable(dataclasses.make_dataclass(f"{name.upper()}Params", fields, namespace={"problems": problems}))


def _method_params() -> dict[str, type]:
    from grood.detectors.registry import DETECTORS

    params: dict[str, type] = {"grood": GROODParams}
    for name in DETECTORS:
        if name != "grood":
            params[name] = _baseline_params_dataclass(name)
    return params


#: Method name -> the dataclass of its ``method.params``.
METHOD_PARAMS: dict[str, type] = _method_params()

#: ``method=all``'s params: one field per method (``method.params.vim.dim=32``).
AllParams = dataclasses.make_dataclass(
    "AllParams",
    [(name, cls, field(default_factory=cls)) for name, cls in METHOD_PARAMS.items()],
    namespace={"problems": lambda self: []},
)
AllParams.__module__ = __name__  # pickled by name (see _importable)


@dataclass
class MethodConfig:
    """``method=<name>``: the method and its parameters (``params`` is :data:`METHOD_PARAMS` ``[name]``)."""

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


# --------------------------------------------------------------------------- GROOD's OOD prototype
#: The type of each OOD-prototype parameter (names and defaults: grood.method.strategies' registry).
PROTOTYPE_PARAM_TYPES: dict[str, Any] = {
    "mixup_lambda": float, "num_images": Optional[int], "keep": int, "corruptions": List[str],
    "filter_quantile": Optional[float], "min_keep": int, "source": str,
}


def _prototype_schema(strategy: str) -> type:
    """``prototype=<strategy>``'s dataclass: its registry parameters (and the proximity filter's) with the
    registry's defaults; :func:`grood.method.strategies.strategy_params` checks them."""
    from grood.method.strategies import FILTER_PARAMS, STRATEGIES, strategy_params

    fields: list[tuple[str, Any, Any]] = [("strategy", str, field(default=strategy))]
    for key, default in {**STRATEGIES[strategy].params, **FILTER_PARAMS}.items():
        if key not in PROTOTYPE_PARAM_TYPES:
            raise TypeError(f"OOD-prototype parameter {key!r} has no declared type; add it to PROTOTYPE_PARAM_TYPES")
        value = field(default_factory=lambda d=default: list(d)) if isinstance(default, (list, tuple)) \
            else field(default=default)
        fields.append((key, PROTOTYPE_PARAM_TYPES[key], value))

    def problems(self: Any) -> list[str]:
        params = {k: v for k, v in dataclasses.asdict(self).items() if k != "strategy"}
        try:
            strategy_params(self.strategy, params)
        except ValueError as error:
            return [f": {error}"]
        return []

    name = "".join(part.title() for part in strategy.split("_")) + "PrototypeConfig"
    return _importable(dataclasses.make_dataclass(name, fields, namespace={"problems": problems}))


def _prototype_schemas() -> dict[str, type]:
    from grood.method.strategies import STRATEGIES

    return {strategy: _prototype_schema(strategy) for strategy in STRATEGIES}


#: Strategy -> its schema (every strategy of grood.method.strategies.STRATEGIES).
PROTOTYPE_SCHEMAS: dict[str, type] = _prototype_schemas()


# --------------------------------------------------------------------------- nearest-neighbour index
@dataclass
class ExactIndexParams:
    def problems(self) -> list[str]:
        return []


@dataclass
class IVFIndexParams:
    nlist: Optional[int] = None       # None = grood.method's default
    nprobe: Optional[int] = None
    routing_dim: Optional[int] = None
    scan: str = "float32"             # float32 | int8 (int8 codes, candidates reranked exactly; CPU only)
    storage: str = "float32"          # float32 | float16 (codes; candidates reranked from the features)

    def problems(self) -> list[str]:
        found: list[str] = []
        for key in ("nlist", "nprobe", "routing_dim"):
            _at_least(found, key, getattr(self, key), 1)
        _one_of(found, "scan", self.scan, ("float32", "int8"))
        _one_of(found, "storage", self.storage, ("float32", "float16"))
        return found


@dataclass
class TorchIndexParams:
    norm_pruning: bool = False
    storage: str = "float32"          # float32 | float16 (codes; candidates reranked from the features)

    def problems(self) -> list[str]:
        found: list[str] = []
        _one_of(found, "storage", self.storage, ("float32", "float16"))
        return found


@dataclass
class FaissIVFIndexParams:
    """``index=faiss_ivf``: FAISS ``IndexIVFFlat`` with the author's OpenOOD rule (grood.method.neighbours.faiss_ivf)."""

    nprobe: int = 4                   # cells scanned per query (the port's 4)
    nlist: Optional[int] = None       # None = int(4 * sqrt(train_batches))
    train_batches: Optional[int] = None  # None = min(600, floor(0.8 * batches)) loader batches train the cells
    loader_batch_size: int = 200      # training rows per loader batch (OpenOOD's Evaluator default)

    def problems(self) -> list[str]:
        found: list[str] = []
        for key in ("nprobe", "nlist", "train_batches", "loader_batch_size"):
            _at_least(found, key, getattr(self, key), 1)
        return found


#: Index kind -> its params' schema.
INDEX_SCHEMAS: dict[str, type] = {"exact": ExactIndexParams, "faiss_flat": ExactIndexParams, "ivf": IVFIndexParams,
                                  "torch": TorchIndexParams, "faiss_ivf": FaissIVFIndexParams}


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
    """One ``scripts/run.py`` run. Every key, its type and its default."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: Any = MISSING           # a MethodConfig (method/<name>.yaml)
    prototype: Any = MISSING        # a PROTOTYPE_SCHEMAS[strategy] (prototype/<strategy>.yaml)
    index: Any = MISSING            # an IndexConfig (index/<kind>.yaml)
    cache: CacheConfig = field(default_factory=CacheConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    extra: ExtraConfig = field(default_factory=ExtraConfig)
    seed: int = 0                   # selects the checkpoint (OpenOOD's s0/s1/s2) and seeds every sampler
    device: str = "auto"            # auto (cuda when available, else cpu) | cpu | cuda | cuda:<n>
    batch_size: int = 128
    num_workers: int = 4            # data-loader workers (at most the machine's cores)
    progress: bool = True           # tqdm progress bars; false: one log line per phase start and end
    experiment_name: str = "default"  # recorded in run.json; the table generators filter on it
    check_files: bool = True        # check every listed image exists before the first forward pass
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
    """Store every schema in Hydra's ConfigStore (idempotent). The yaml files name them in their defaults:
    ``config.yaml`` -> ``run_schema``; ``method/<name>.yaml`` -> ``/schema/method/<name>``;
    ``prototype/<s>.yaml`` -> ``/schema/prototype/<s>``; ``index/<kind>.yaml`` -> ``/schema/index/<kind>``
    (paths, backbone and dataset are typed by :class:`RunConfig` itself). The ``schema/`` groups keep them
    out of the options a user picks from."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name, params in METHOD_PARAMS.items():
        store.store(group="schema/method", name=name, node=MethodConfig(name=name, params=params()))
    store.store(group="schema/method", name="all", node=MethodConfig(name="all", params=AllParams()))
    for strategy, schema in PROTOTYPE_SCHEMAS.items():
        store.store(group="schema/prototype", name=strategy, node=schema())
    for kind, schema in INDEX_SCHEMAS.items():
        store.store(group="schema/index", name=kind, node=IndexConfig(kind=kind, params=schema()))

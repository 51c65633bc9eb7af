"""One evaluation run from a validated :class:`grood.config.RunConfig` (what ``scripts/run.py`` passes).

The flow: data root -> image lists -> backbone + checkpoint -> one cached forward pass
per split -> every requested detector on the cache -> OpenOOD's tables -> a results folder that says
what produced it (``metrics.csv``, ``metrics.json``, ``run.json`` with the resolved config, package
versions, git commit and checkpoint hash, and ``scores.pt`` for the figures).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from grood import aps
from grood.components import load
from grood.backbones import build_backbone
from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import missing_checkpoint_hint
from grood.config import ConfigError, RunConfig, check_parameters, config_hash, method_params, to_plain, validate
from grood.config.schema import MethodConfig
from grood.data import Benchmark, available_benchmarks, benchmark_from_dict, get_benchmark, resolve_spec, test_transform
from grood.data.benchmarks import CORRUPTED_SPLIT, DataLayoutError
from grood.data.imagelist import ImageListError
from grood.data.verify import VERIFIED_DIR, verify_images
from grood.detectors.base import Detector
from grood.detectors.registry import detector_parameters
from grood.evaluation import fsood_table, metrics_table, pooled_accuracy
from grood.feature_store import CacheSpaceError
from grood.features import FeatureCache, SplitOutputs, cache_key, extract_split
from grood.featureset import FeatureSet
from grood.io import atomic_write, write_json
from grood.method.prototypes import class_prototypes
from grood.method.strategies import STRATEGIES, build_ood_prototype, oracle_split, strategy_params
from grood.metrics import accuracy
from grood.prototype_inputs import TrainingPass, prototype_inputs
from grood.provenance import git_commit, package_versions, sha256_of_file
from grood.resources import loader_workers
from grood.run_lock import ResultsFolderBusyError, results_folder_lock  # noqa: F401 - re-exported for the entry points
from grood.timings import forward_timings, own_seconds, start_clock, timings_record

log = logging.getLogger(__name__)


class RunInputError(ValueError):
    """Inputs of a run that cannot work (bad lists, missing images, an unreadable checkpoint, method
    parameters invalid for the network), all listed at once, found before the first forward pass."""


class MissingInputError(FileNotFoundError):
    """Inputs of a run that are absent (data root, lists, images, checkpoint), all listed at once."""


class MethodsFailedError(RuntimeError):
    """Some methods of a run could not run; the others' results are written. Lists each with its reason."""


@dataclass
class BenchmarkRun:
    """Everything one (benchmark, checkpoint) run shares between methods, checked by :func:`prepare_run`.

    Attributes:
        datasets: split -> its image-list dataset, every split the run reads (parsed and checked): the
            benchmark's splits, and the optional ones it asks for (``csid:<name>`` with ``fsood=true``,
            ``corrupted_val`` for ``prototype=corrupted prototype.source=real``).
        split_transforms: split -> its own test transform, where the benchmark's ``split_transforms`` give
            one (ImageNet-C); the other splits use ``transform``.
        fingerprints: split -> :meth:`ImageListDataset.files_fingerprint` (what the listed files hold).
        feature_dim: ``D`` of the network's penultimate features.
        normalisation: the input ``mean``/``std`` used and where they come from (``source``).
    """

    config: RunConfig
    benchmark: Benchmark
    data_root: Path
    network: torch.nn.Module
    checkpoint_sha256: str | None
    transform: Any
    transform_spec: dict[str, Any]
    normalisation: dict[str, Any]
    cache: FeatureCache
    datasets: dict[str, Any]
    fingerprints: dict[str, str]
    feature_dim: int
    split_transforms: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, SplitOutputs] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # grood.timings: forward:<split> and each method's own
    forward_seconds: float = 0.0  # all shared forward passes so far (subtracted from the methods' own times)
    prototype_record: dict[str, Any] = field(default_factory=dict)  # how GROOD's OOD prototype was obtained
    input_images: dict[str, Any] = field(default_factory=dict)  # grood.data.verify.verify_images's record

    @property
    def device(self) -> str:
        return self.config.device

    def dataset(self, split: str):
        """The image-list dataset of ``split`` ("train", "test", "val", an OOD name or "val_ood:<name>")."""
        return self.datasets[split]

    def cache_key_parts(self, split: str) -> dict[str, Any]:
        """Everything that determines the network's outputs on ``split``."""
        backbone = self.config.backbone
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "backbone": backbone.name,
            "split_block": backbone.split_block,
            "weights": backbone.weights,
            **({"module": [backbone.target, backbone.early_layer, backbone.feature_layer, backbone.head_layer,
                           dict(backbone.kwargs)]} if backbone.name == "module" else {}),
            "transform": repr(self.split_transforms.get(split, self.transform)),
            "data_root": str(self.data_root),
            "list_sha256": self.dataset(split).list_sha256,
            "files": self.fingerprints[split],
            "files_fingerprint": self.config.cache.verify,
            "split": split,
        }

    def split_outputs(self, split: str, accumulate_early: bool = False) -> SplitOutputs:
        """Cached network outputs on ``split`` (the network runs at most once per split and key)."""
        name = f"{split}+early" if accumulate_early else split
        if name in self.outputs:
            return self.outputs[name]
        if accumulate_early and split in self.outputs:
            del self.outputs[split]
        dataset = self.dataset(split)
        key_parts = self.cache_key_parts(split)
        started = time.perf_counter()
        if not accumulate_early:  # an entry with early sums (from a GROOD run) serves a plain request too
            with_early = self.cache.load(cache_key({**key_parts, "accumulate_early": True}))
            if with_early is not None:
                self.outputs[split] = with_early
                return with_early
        config = self.config
        outputs = extract_split(
            self.network,
            dataset,
            cache=self.cache,
            key_parts=key_parts,
            num_classes=self.benchmark.num_classes,
            accumulate_early=accumulate_early,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            device=self.device,
            progress=config.progress,
            description=f"{self.benchmark.name}/{split}",
            shard_batches=config.cache.shard_batches,
        )
        seconds = time.perf_counter() - started
        self.timings[f"forward:{split}"] = self.timings.get(f"forward:{split}", 0.0) + seconds  # once per run
        self.forward_seconds += seconds
        self.outputs[name] = outputs
        if accumulate_early:
            self.outputs[split] = outputs
        return outputs

    def features(self, split: str) -> FeatureSet:
        return self.split_outputs(split).features


# --------------------------------------------------------------------------- building a run
def resolve_benchmark(name: str | None, definition: Mapping[str, Any] | None = None) -> Benchmark:
    """The registry benchmark ``name`` (config key ``dataset.benchmark``), or the user-defined one in
    ``definition`` (``dataset.definition``)."""
    if definition:
        try:
            return benchmark_from_dict(dict(definition))
        except ValueError as error:
            raise ConfigError(f"dataset.definition: {error}") from None
    if not name:
        raise ConfigError("dataset config needs 'benchmark' (a registry name) or 'definition' (a user benchmark)")
    try:
        return get_benchmark(name)
    except ValueError as error:
        raise ConfigError(f"dataset.benchmark: {error}") from None


def resolve_transform(benchmark: Benchmark, config: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test-transform spec and where its normalisation comes from.

    Layers, later ones win: the benchmark's OpenOOD preset; the backbone's ``transform`` (the input
    statistics and sizes its checkpoints were trained with, e.g. the CIFAR ResNets' ImageNet mean/std);
    the user's ``dataset.transform``. Returns ``(spec, {"mean", "std", "source"})``.
    """
    backbone, user = config.backbone.transform.given(), config.dataset.transform.given()
    try:
        spec = resolve_spec({**dict(benchmark.transform), **backbone, **user})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"dataset.transform / backbone.transform: {error}") from None
    sources = []
    for key in ("mean", "std"):
        if key in user:
            sources.append(f"{key}: dataset.transform (set by you)")
        elif key in backbone:
            sources.append(f"{key}: backbone {config.backbone.name} (its checkpoints' statistics)")
        else:
            sources.append(f"{key}: benchmark {benchmark.name} (OpenOOD's preset)")
    return spec, {"mean": list(spec["mean"]), "std": list(spec["std"]), "source": "; ".join(sources)}


def _feature_dim(network: SplitNetwork, spec: Mapping[str, Any]) -> int:
    """``D`` of the penultimate features, from one random input of the transform's size (no data)."""
    size = int(spec["crop_size"])
    was_training = network.training
    network.eval()
    with torch.no_grad():
        features = network.mid(network.early(torch.zeros(1, 3, size, size)))
    network.train(was_training)
    return int(features.reshape(1, -1).shape[1])


def optional_splits(config: RunConfig, benchmark: Benchmark, methods: Sequence[tuple[str, Any]]) -> list[str]:
    """The benchmark's optional splits this run reads: ``csid:<name>`` with ``fsood=true``, and
    ``corrupted_val`` when GROOD runs with ``prototype=corrupted prototype.source=real``.

    Raises:
        ConfigError: ``fsood=true`` on a benchmark without csid lists (or with an oracle prototype), or a
            real corrupted prototype on a benchmark without ``corrupted_val``; before anything is computed.
    """
    extra: list[str] = []
    runs_grood = any(load("method", name).uses_ood_prototype for name, _ in methods)  # builds an OOD prototype
    prototype = config.prototype
    if config.fsood:
        if not benchmark.csid:
            with_csid = [name for name in available_benchmarks() if get_benchmark(name).csid]
            raise ConfigError(
                f"fsood=true: benchmark {benchmark.name!r} has no covariate-shifted ID (csid) lists (key 'csid'); "
                f"benchmarks with csid lists: {with_csid}; or give them in dataset.definition.csid, or set fsood=false"
            )
        if runs_grood and STRATEGIES[prototype.strategy].per_ood_set:
            raise ConfigError(
                f"fsood=true with prototype={prototype.strategy}: an oracle prototype has one detector per OOD set, "
                "which OpenOOD's full-spectrum table (one set of ID scores) does not define; choose a single-prototype "
                "strategy or fsood=false"
            )
        extra += benchmark.csid_splits()
    if runs_grood and prototype.strategy == "corrupted" and prototype.source == "real":
        if benchmark.corrupted_val is None:
            raise ConfigError(
                f"prototype=corrupted prototype.source=real: benchmark {benchmark.name!r} defines no real corrupted "
                "ID images (key 'corrupted_val'); set prototype.source=synthetic to corrupt ID validation images "
                "in code, or give corrupted_val in dataset.definition"
            )
        extra.append(CORRUPTED_SPLIT)
    return extra


def prepare_run(config: RunConfig) -> BenchmarkRun:
    """Check every input, then build the network and the cache; nothing runs the network on data yet.

    Checked, and reported together: the data root's layout; every line of every list of every split (paths,
    labels, empty lists, duplicate lines); that every listed file exists; the checkpoint (exists, is a torch
    checkpoint, every floating tensor finite, loads into the backbone); every method's parameters against the
    network's feature dimension (with ``method=all``, a method that cannot run is logged at once; the others
    run). Then, when all of that holds (``check_files``): every listed image is decoded
    (:func:`grood.data.verify.verify_images`; only those not verified by an earlier run), every unusable one
    reported at once.

    Raises:
        ConfigError: a config value that cannot work. MissingInputError: absent files (data root, lists,
        images, checkpoint). RunInputError: other unusable inputs.
    """
    benchmark = resolve_benchmark(config.dataset.benchmark, config.dataset.definition)
    methods = method_list(config.method)
    splits = benchmark.splits() + optional_splits(config, benchmark, methods)
    data_root = Path(config.paths.data_root).expanduser().resolve()
    transform_spec, normalisation = resolve_transform(benchmark, config)
    transform = test_transform(transform_spec)
    split_transforms = {split: test_transform({**transform_spec, **benchmark.split_transforms[split]})
                        for split in splits if split in benchmark.split_transforms}
    missing: list[str] = []
    unusable: list[str] = []
    datasets: dict[str, Any] = {}
    try:
        benchmark.validate(data_root, splits)
    except DataLayoutError as error:
        missing.append(str(error))
        if CORRUPTED_SPLIT in splits and benchmark.missing(data_root, [CORRUPTED_SPLIT]):
            missing.append(f"prototype=corrupted prototype.source=real reads the real corrupted ID images "
                           f"{benchmark.corrupted_val}; fetch them with the csid data (make data CSID=1) or set "
                           "prototype.source=synthetic to corrupt ID validation images in code")
    else:
        for split in splits:
            try:
                datasets[split] = benchmark.dataset(split, data_root, split_transforms.get(split, transform),
                                                    check_files=config.check_files)
            except ImageListError as error:
                (missing if "missing under" in str(error) else unusable).append(str(error))
    checkpoint_path = Path(config.dataset.checkpoint).expanduser() if config.dataset.checkpoint else None
    network = None
    if checkpoint_path is not None and not checkpoint_path.is_file():
        missing.append(f"checkpoint {checkpoint_path} (config key dataset.checkpoint) not found; "
                       f"{missing_checkpoint_hint(checkpoint_path, config.dataset.name)}")
    else:
        try:
            backbone = config.backbone
            network = build_backbone(backbone.name, num_classes=benchmark.num_classes,
                                     checkpoint=checkpoint_path, split_block=backbone.split_block,
                                     weights=backbone.weights, target=backbone.target,
                                     early_layer=backbone.early_layer, feature_layer=backbone.feature_layer,
                                     head_layer=backbone.head_layer, kwargs=dict(backbone.kwargs) or None)
        except (ValueError, RuntimeError) as error:  # unreadable or mismatched checkpoint, bad split_block
            unusable.append(f"backbone {config.backbone.name} with checkpoint {checkpoint_path}: {error}")
    feature_dim = 0
    if network is not None:
        feature_dim = _feature_dim(network, transform_spec)
        for name, params in methods:
            problem = method_problem(name, params, feature_dim, config)
            if problem is not None and config.method.name != "all":
                unusable.append(problem)
            elif problem is not None:  # method=all: said now, before the first forward pass, not at its turn
                log.error("%s. It will be recorded as failed; the other methods run", problem)
    if missing:
        raise MissingInputError("\n".join(missing + unusable))
    if unusable:
        raise RunInputError("\n".join(unusable))
    try:  # every listed image decoded (only those not verified by an earlier run): grood/data/verify.py
        images = verify_images(datasets, Path(config.paths.cache_dir) / VERIFIED_DIR,
                               config.num_workers) if config.check_files else {}
    except ImageListError as error:
        raise RunInputError(str(error)) from None
    fingerprints = {split: dataset.files_fingerprint(config.cache.verify) for split, dataset in datasets.items()}
    return BenchmarkRun(
        config=config,
        benchmark=benchmark,
        data_root=data_root,
        network=network,
        checkpoint_sha256=sha256_of_file(checkpoint_path) if checkpoint_path else None,
        transform=transform,
        transform_spec=transform_spec,
        normalisation=normalisation,
        cache=FeatureCache(Path(config.paths.cache_dir)),
        datasets=datasets,
        fingerprints=fingerprints,
        feature_dim=feature_dim,
        split_transforms=split_transforms,
        input_images=images,
    )


# --------------------------------------------------------------------------- method parameters
def method_problem(name: str, params: Mapping[str, Any], feature_dim: int, config: RunConfig) -> str | None:
    """Why baseline ``name`` cannot run with ``params`` on ``feature_dim``-dimensional features (a value the
    user set, OpenOOD's default, or every value of its APS sweep is invalid), or None. With
    ``on_invalid=adapt`` it is None when :func:`adapt_parameters` can fix it."""
    cls = load("method", name)
    searched = config.aps and len(aps.search_space(name, params)) > 0
    candidates = _candidate_parameters(name, params, config)
    reasons = [reason for reason in (cls.parameter_problem(c, feature_dim) for c in candidates) if reason]
    if len(reasons) < len(candidates):
        return None
    if config.on_invalid == "adapt" and any(cls.parameter_problem(cls.nearest_valid(c, feature_dim), feature_dim)
                                            is None for c in candidates):
        return None
    where = "every value of its APS sweep is" if searched else "its parameters are"
    adapted = cls.nearest_valid(candidates[0], feature_dim)
    fixed = {key: value for key, value in adapted.items() if candidates[0].get(key) != value}
    keys = " / ".join(f"{_params_key(name, config)}.{key}=<value>" for key in fixed) \
        or f"{_params_key(name, config)}.<key>=<value>"
    return (f"method {name}: {where} invalid for this network ({reasons[0]}); set a valid value with {keys}, "
            f"or on_invalid=adapt to use {fixed or 'a valid value'}")


def _candidate_parameters(name: str, params: Mapping[str, Any], config: RunConfig) -> list[dict[str, Any]]:
    """The complete parameter sets the run would try: each APS combination, or the one set."""
    defaults = {**detector_parameters(name), **run_arguments(load("method", name), config)}
    space = aps.search_space(name, params) if config.aps else {}
    if not space:
        return [{**defaults, **params}]
    keys = list(space)
    return [{**defaults, **params, **dict(zip(keys, values))} for values in itertools.product(*space.values())]


def run_arguments(cls: type[Detector], config: RunConfig, transform_spec: Mapping[str, Any] | None = None,
                  ) -> dict[str, Any]:
    """The constructor arguments of detector ``cls`` that the run supplies (never config keys): the device,
    the progress bars, the ``index`` group (``uses_index``), the input std (ODIN's ``input_std``)."""
    accepted = detector_parameters(cls.name)
    out: dict[str, Any] = {}
    if "device" in accepted:
        out["device"] = config.device
    if "progress" in accepted:
        out["progress"] = config.progress
    if cls.uses_index:
        out["index"] = config.index.kind
        out["index_params"] = {k: v for k, v in dataclasses.asdict(config.index.params).items() if v is not None}
    if "input_std" in accepted and transform_spec is not None:
        out["input_std"] = tuple(transform_spec["std"])
    return out


def _params_key(name: str, config: RunConfig) -> str:
    return f"method.params.{name}" if config.method.name == "all" else "method.params"


def adapt_parameters(name: str, params: Mapping[str, Any], feature_dim: int,
                     config: RunConfig) -> tuple[dict[str, Any], dict[str, list[Any]] | None, list[str]]:
    """``(params, sweep, notes)`` valid for ``feature_dim``: invalid APS values are left out of the sweep
    (``sweep``: the values to search, None = the detector's own); with ``on_invalid=adapt`` an invalid value
    is replaced by the nearest valid one. ``notes`` say what changed (for the log and ``run.json``)."""
    cls = load("method", name)
    notes: list[str] = []
    space = aps.search_space(name, params) if config.aps else {}
    if space:
        keys = list(space)
        combos = [dict(zip(keys, values)) for values in itertools.product(*space.values())]
        defaults = {**detector_parameters(name), **run_arguments(cls, config)}
        valid = [c for c in combos if cls.parameter_problem({**defaults, **params, **c}, feature_dim) is None]
        if len(valid) == len(combos):
            return dict(params), None, notes
        if valid:
            dropped = [c for c in combos if c not in valid]
            notes.append(f"{name}: APS values {dropped} are invalid for D={feature_dim} and not searched")
            return dict(params), {k: sorted({c[k] for c in valid}, key=space[k].index) for k in keys}, notes
        adapted = cls.nearest_valid({**defaults, **params, **combos[0]}, feature_dim)
        fixed = {k: adapted[k] for k in keys}
        notes.append(f"{name}: every APS value of {space} is invalid for D={feature_dim}; on_invalid=adapt "
                     f"uses {fixed}")
        return {**params, **fixed}, None, notes
    full = {**detector_parameters(name), **run_arguments(cls, config), **params}
    if cls.parameter_problem(full, feature_dim) is None:
        return dict(params), None, notes
    adapted = cls.nearest_valid(full, feature_dim)
    changed = {k: v for k, v in adapted.items() if full.get(k) != v}
    notes.append(f"{name}: {cls.parameter_problem(full, feature_dim)}; on_invalid=adapt uses {changed}")
    return {**params, **changed}, None, notes


# --------------------------------------------------------------------------- GROOD's OOD prototype
def _prototype_params(prototype_cfg: Any) -> dict[str, Any]:
    """The strategy's parameters from its typed config (registry names; None = the strategy's default)."""
    params = {k: v for k, v in dataclasses.asdict(prototype_cfg).items() if k != "strategy"}
    try:
        return strategy_params(prototype_cfg.strategy, params)
    except ValueError as error:
        raise ConfigError(f"config group prototype: {error}") from error


def grood_prototype(run: BenchmarkRun, prototype_cfg: Any, class_protos: torch.Tensor) -> torch.Tensor:
    """``[D]`` the OOD prototype of a non-oracle strategy (section 5.2 / appendix A.2), built by the one
    strategy registry (:func:`grood.method.strategies.build_ood_prototype`) on this run's cached outputs.

    ``prototype_cfg``: the run's ``prototype`` config (a :func:`grood.config.schema.component_schemas` ``("prototype")`` dataclass)."""
    strategy = prototype_cfg.strategy
    if strategy not in STRATEGIES or STRATEGIES[strategy].per_ood_set:
        raise ConfigError(
            f"prototype.strategy={strategy!r} is not a single-prototype strategy; valid: "
            f"{[name for name, s in STRATEGIES.items() if not s.per_ood_set]} (oracles are handled per OOD set)"
        )
    params = _prototype_params(prototype_cfg)
    config = run.config
    spec = run.transform_spec

    def training() -> TrainingPass:
        train = run.split_outputs("train", accumulate_early=True)
        return TrainingPass(run.dataset("train"), train.features.logits, train.features.labels,
                            train.early_prototypes())

    def val_ood() -> torch.Tensor:
        names = list(run.benchmark.val_ood)
        if not names:
            raise ConfigError(f"benchmark {run.benchmark.name!r} has no val OOD list for prototype=val_ood")
        return torch.cat([run.features(f"val_ood:{name}").features for name in names])

    def id_validation() -> tuple[Any, torch.Tensor]:
        dataset = run.dataset("val" if run.benchmark.has_split("val") else "test")
        return dataset, dataset.labels

    def corrupted_id() -> tuple[Any, torch.Tensor]:
        dataset = run.dataset(CORRUPTED_SPLIT)  # loaded by prepare_run for source=real (optional_splits)
        return dataset, dataset.labels

    def image_shape() -> tuple[int, int, int]:
        size = int(spec.get("crop_size") or spec.get("size"))
        return (3, size, size)

    inputs = prototype_inputs(
        class_protos, network=run.network, training=training, image_shape=image_shape,
        normalization=lambda: (spec["mean"], spec["std"]), id_validation=id_validation, val_ood=val_ood,
        corrupted_id=corrupted_id if CORRUPTED_SPLIT in run.datasets else None,
        seed=config.seed, batch_size=config.batch_size, num_workers=config.num_workers, device=run.device,
        progress=config.progress,
    )
    if not STRATEGIES[strategy].uses_network:  # built from cached features in moments: nothing to cache
        run.prototype_record = {"strategy": strategy, "network_pass": False}
        return build_ood_prototype(strategy, inputs, params)
    parts = prototype_cache_parts(run, strategy, params)
    key = cache_key(parts)
    started = time.perf_counter()
    cached = run.cache.load_prototype(key)
    if cached is not None:
        log.info("OOD prototype (%s): reusing cached %s", strategy, run.cache.prototype_path(key))
        run.prototype_record = {"strategy": strategy, "network_pass": False, "source": "cache", "key": key}
        return cached
    prototype = build_ood_prototype(strategy, inputs, params)
    run.cache.save_prototype(key, prototype, parts)
    run.prototype_record = {"strategy": strategy, "network_pass": True, "source": "computed", "key": key,
                            "seconds": round(time.perf_counter() - started, 3)}
    return prototype


def prototype_cache_parts(run: BenchmarkRun, strategy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that determines a network-built OOD prototype: the network (checkpoint, backbone, split,
    transform), the images it reads (the training split: its early-layer prototypes and the proximity
    filter's class prototypes; for ``corrupted``, the ID validation split or the real corrupted images), the
    strategy, its parameters
    and the seed."""
    splits = ["train"]
    if strategy == "corrupted":  # the images it corrupts (synthetic) or the real corrupted ones
        splits.append(CORRUPTED_SPLIT if params.get("source") == "real"
                      else "val" if run.benchmark.has_split("val") else "test")
    return {
        "kind": "ood_prototype",
        "strategy": strategy,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        "seed": run.config.seed,
        "images": {split: run.cache_key_parts(split) for split in splits},
    }


# --------------------------------------------------------------------------- scoring
@dataclass
class MethodScores:
    """Scores of one method: on the ID test split (one tensor, or one per OOD set for the oracles), on each
    OOD test set and, with ``fsood=true``, on each csid set (name without ``csid:`` -> ``[N]``)."""

    id_scores: torch.Tensor | dict[str, torch.Tensor]
    ood_scores: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    csid_scores: dict[str, torch.Tensor] = field(default_factory=dict)


def _csid(run: BenchmarkRun) -> dict[str, str]:
    """csid set name -> its split (``csid:<name>``), the sets this run scores (``fsood=true``), in order."""
    if not run.config.fsood:
        return {}
    return {name: split for name, split in zip(run.benchmark.csid, run.benchmark.csid_splits())}


def _groups(run: BenchmarkRun) -> dict[str, list[str]]:
    return {"near": list(run.benchmark.near), "far": list(run.benchmark.far)}


def build_method(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> Detector:
    """A new, unfitted detector ``name`` with ``params`` and the arguments the run supplies."""
    cls = load("method", name)
    return cls(**{**run_arguments(cls, run.config, run.transform_spec), **dict(params)})


def score_method(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> MethodScores:
    """Method ``name`` fitted and scored on this run: with the run's OOD prototype when it uses one
    (:func:`score_with_prototype`), else as a baseline (:func:`score_baseline`)."""
    if load("method", name).uses_ood_prototype:
        return score_with_prototype(run, name, params)
    return score_baseline(run, name, params)


def score_with_prototype(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> MethodScores:
    """A detector that takes the OOD prototype (GROOD) with the configured strategy (oracles: one
    prototype per OOD set)."""
    prototype_cfg = run.config.prototype
    strategy = prototype_cfg.strategy
    train = run.split_outputs("train", accumulate_early=strategy == "mixup").features
    test = run.features("test")
    ood_names = [name for names in _groups(run).values() for name in names]
    detector = build_method(run, name, params)
    head = run.network.linear_head()
    started = start_clock(run)  # own times: the shared forward passes are recorded once (grood.timings)
    class_protos = class_prototypes(train.features, train.labels, run.benchmark.num_classes)
    class_seconds = own_seconds(run, started)  # eq. 7, part of the fit
    started = start_clock(run)
    if not (strategy in STRATEGIES and STRATEGIES[strategy].per_ood_set):
        p_ood = grood_prototype(run, prototype_cfg, class_protos)
        # the OOD prototype's own time (mixup: a pass of the network over mixed images, or a cache read);
        # "method:grood" is the time on cached features alone (fit + score), as for every other method
        run.timings[f"prototype:{name}"] = own_seconds(run, started)
        started = start_clock(run)
        detector.fit(train, head, ood_prototype=p_ood, class_prototypes=class_protos)
        ood_scores = {name: detector.score(run.features(name)) for name in ood_names}
        scores = MethodScores(detector.score(test), ood_scores,
                              csid_scores={n: detector.score(run.features(s)) for n, s in _csid(run).items()})
    else:
        oracle_params = _prototype_params(prototype_cfg)
        num_oracle = strategy_params(strategy, oracle_params)["num_images"]
        seed = run.config.seed
        # the rows of each OOD set behind its oracle prototype are held out of its scores
        splits = {name: oracle_split(len(run.features(name)), num_oracle, seed) for name in ood_names}
        inputs = prototype_inputs(class_protos, ood_names=ood_names, seed=seed,
                                  ood_test=lambda name: run.features(name).features)
        id_scores, ood_scores = {}, {}
        for ood_name in ood_names:
            p_ood = build_ood_prototype(strategy, inputs, oracle_params, target=ood_name)
            detector.fit(train, head, ood_prototype=p_ood, class_prototypes=class_protos)
            id_scores[ood_name] = detector.score(test)
            ood_scores[ood_name] = detector.score(run.features(ood_name).subset(splits[ood_name][1]))
        scores = MethodScores(id_scores, ood_scores)
    scores.info.update(detector.run_info(test))
    scores.info["prototype"] = strategy
    if strategy == "corrupted":  # which images the "ID-Corrupted Val" prototype read (tables label it)
        scores.info["prototype_source"] = prototype_cfg.source
    run.timings[f"method:{name}"] = class_seconds + own_seconds(run, started)
    if not (strategy in STRATEGIES and STRATEGIES[strategy].per_ood_set):
        started = time.perf_counter()  # untimed in method:<name>: how approximate its search was (run.json)
        queries = {"test": test, **{ood: run.features(ood) for ood in ood_names}}
        recall = detector.search_recall(train, queries, seed=run.config.seed)
        if recall is not None:
            scores.info["recall"] = recall
            run.timings[f"recall:{name}"] = time.perf_counter() - started
    return scores


def baseline_split_scores(
    run: BenchmarkRun, name: str, params: Mapping[str, Any], splits: list[str]
) -> dict[str, torch.Tensor]:
    """Fit baseline ``name`` with ``params`` and score each of ``splits`` (cached features; ODIN re-runs
    the network on the images). Returns split -> ``[N]`` scores, higher = more ID."""
    detector = build_method(run, name, params)
    detector.fit(run.features(detector.fit_split), run.network.linear_head())
    if not detector.needs_network:
        return {split: detector.score(run.features(split)) for split in splits}
    scores = {}
    for split in splits:
        loader = torch.utils.data.DataLoader(run.dataset(split), batch_size=run.config.batch_size,
                                             num_workers=loader_workers(run.config.num_workers))
        scores[split] = detector.score_images(run.network, loader, device=run.device, description=f"ODIN {split}",
                                              progress=run.config.progress)
    return scores


def score_baseline(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> MethodScores:
    """A baseline of :mod:`grood.detectors` on the ID test set, every OOD test set and (``fsood=true``)
    every csid set."""
    ood_names = [n for names in _groups(run).values() for n in names]
    csid = _csid(run)
    started = start_clock(run)
    scores = baseline_split_scores(run, name, params, ["test", *ood_names, *csid.values()])
    run.timings[f"method:{name}"] = own_seconds(run, started)
    return MethodScores(scores["test"], {n: scores[n] for n in ood_names},
                        csid_scores={n: scores[split] for n, split in csid.items()})


def search_baseline_parameters(run: BenchmarkRun, name: str, params: Mapping[str, Any],
                               space: Mapping[str, list[Any]] | None = None) -> aps.SearchResult:
    """OpenOOD's APS (:mod:`grood.aps`) for baseline ``name`` on the benchmark's validation lists
    (``space``: the values to search, None = the detector's sweep)."""
    started = start_clock(run)
    try:
        result = aps.search_parameters(
            name, params, run.benchmark, lambda n, p, splits: baseline_split_scores(run, n, p, splits),
            progress=run.config.progress, space=space,
        )
    except aps.APSError as error:
        raise ConfigError(str(error)) from error
    if result.trials:
        run.timings[f"aps:{name}"] = own_seconds(run, started)
    return result


def run_record(run: BenchmarkRun, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` says of every method's run: the config, the inputs and what produced them."""
    config = run.config
    plain = to_plain(config)
    return {
        "benchmark": run.benchmark.name,
        "dataset": config.dataset.name,
        "method": method,
        "method_params": dict(params),
        "seed": config.seed,
        "data_root": str(run.data_root),
        "checkpoint": config.dataset.checkpoint,
        "checkpoint_sha256": run.checkpoint_sha256,
        "backbone": plain["backbone"],
        "input_normalisation": run.normalisation,
        "input_images": run.input_images,
        "groups": _groups(run),
        "experiment": config.experiment_name,
        "config": plain,
        "config_hash": config_hash(plain),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def write_method_results(
    out_dir: Path, run: BenchmarkRun, method: str, params: Mapping[str, Any], table: pd.DataFrame,
    scores: MethodScores, id_accuracy: float, aps_record: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (), fsood: tuple[pd.DataFrame, dict[str, Any]] | None = None,
) -> None:
    """``metrics.csv``, ``metrics.json``, ``scores.pt`` and, last, ``run.json`` for one method (atomic writes:
    a folder with ``run.json`` is complete).

    ``aps_record``: the parameter search that chose ``params`` (:meth:`grood.aps.SearchResult.record`),
    written to ``run.json`` as ``aps`` (None: no search ran). ``notes``: parameter adaptations.
    ``fsood``: ``(table, record)`` of the full-spectrum evaluation (:func:`full_spectrum`), written to
    ``metrics_fsood.csv`` and ``run.json`` ``fsood``; ``metrics.csv`` stays OpenOOD's plain OOD table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "metrics.csv") as handle:
        table.to_csv(handle, float_format="%.4f")
    tables = {"table": table.reset_index().to_dict(orient="records")}
    if fsood is not None:
        with atomic_write(out_dir / "metrics_fsood.csv") as handle:
            fsood[0].to_csv(handle, float_format="%.4f")
        tables["fsood_table"] = json.loads(fsood[0].reset_index().to_json(orient="records"))
    else:
        (out_dir / "metrics_fsood.csv").unlink(missing_ok=True)  # never beside a run without fsood
    write_json(out_dir / "metrics.json", tables)
    with atomic_write(out_dir / "scores.pt", "wb") as handle:
        torch.save({"id": scores.id_scores, "ood": scores.ood_scores, "csid": scores.csid_scores}, handle)
    extra = {k: v for k, v in dataclasses.asdict(run.config.extra).items() if v is not None}
    write_json(out_dir / "run.json", {
        **run_record(run, method, params),
        "status": "ok",
        "aps": None if aps_record is None else dict(aps_record),
        "parameter_notes": list(notes),
        "id_accuracy": 100.0 * id_accuracy,
        "ncp_accuracy": scores.info.get("ncp_accuracy"),
        "extra": {**extra, **{k: v for k, v in scores.info.items() if k != "ncp_accuracy"}},
        "fsood": None if fsood is None else fsood[1],
        **timings_record(run, method),
        **({"ood_prototype": dict(run.prototype_record)} if load("method", method).uses_ood_prototype else {}),
    })


def full_spectrum(run: BenchmarkRun, scores: MethodScores) -> tuple[pd.DataFrame, dict[str, Any]]:
    """OpenOOD's ``eval_ood(fsood=True)`` for one method (:func:`grood.evaluation.fsood_table`): the table
    and what ``run.json`` records of it (csid sets, their sizes and accuracies, the pooled accuracy)."""
    csid = _csid(run)
    test = run.features("test")
    outputs = [test] + [run.features(split) for split in csid.values()]
    pooled = pooled_accuracy([o.logits.argmax(1) for o in outputs], [o.labels for o in outputs])
    per_set = {name: accuracy(run.features(split).logits, run.features(split).labels)
               for name, split in csid.items()}
    table = fsood_table(scores.id_scores, scores.csid_scores, scores.ood_scores, _groups(run), pooled, per_set)
    record = {
        "csid": {name: {"list": run.benchmark.csid[name], "samples": len(run.features(split)),
                        "accuracy": 100.0 * per_set[name]} for name, split in csid.items()},
        "accuracy": 100.0 * pooled,
        "near_auroc": _auroc(table, "nearood"),
        "far_auroc": _auroc(table, "farood"),
    }
    return table, record


def method_list(method_cfg: MethodConfig) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, params)]`` for ``method=<name>`` or ``method=all`` (every registered method, GROOD first).

    ``params`` hold the values that are set (a baseline's ``None`` = OpenOOD's default or APS's choice)."""
    return method_params(method_cfg)


def _failure_record(run: BenchmarkRun, name: str, params: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {**run_record(run, name, params), "status": "failed", "error": reason,
            **timings_record(run, name)}


def check_results_folder(output_dir: str | Path, config: RunConfig) -> None:
    """Refuse a results folder that holds a run of another configuration (its ``run.json`` or
    ``summary.json`` records another config hash); a run of the same configuration is replaced, with a
    log line."""
    output_dir = Path(output_dir)
    wanted = config_hash(to_plain(config))
    for record_path in (output_dir / "summary.json", output_dir / "run.json"):
        if not record_path.is_file():
            continue
        try:
            recorded = json.loads(record_path.read_text()).get("config_hash")
        except (OSError, ValueError) as error:
            raise RunInputError(f"{record_path} is unreadable ({error}); move the folder away or delete it") from None
        if recorded != wanted:
            raise RunInputError(
                f"results folder {output_dir} holds a run of another configuration ({record_path.name}: config "
                f"hash {recorded}, this run: {wanted}); choose another folder (hydra.run.dir=...) or move it away"
            )
        log.info("results folder %s holds a run of this very configuration: its files are replaced", output_dir)


def run_evaluation(config: RunConfig, output_dir: str | Path, run: BenchmarkRun | None = None) -> dict[str, pd.DataFrame]:
    """Evaluate every configured method on one benchmark; write one results folder per method.

    Every input is checked first (:func:`prepare_run`). With ``method=all`` a method that cannot run (a
    parameter invalid for this network, a numerical failure) is recorded, with its reason, in its folder's
    ``run.json`` and in ``summary.json``; the others still run.

    ``run``: the run :func:`prepare_run` already built for ``config`` (a shared extraction), else built here.

    Returns method name -> OpenOOD table (percent).

    The results folder is locked while the run writes it (:mod:`grood.run_lock`): a second run on it stops
    at once.

    Raises:
        MethodsFailedError: at the end, when any method failed (every other result is written).
        ResultsFolderBusyError: another live run writes ``output_dir``.
    """
    output_dir = Path(output_dir)
    with results_folder_lock(output_dir):
        return _evaluate_methods(config, output_dir, run)


def _evaluate_methods(config: RunConfig, output_dir: Path, run: BenchmarkRun | None) -> dict[str, pd.DataFrame]:
    """:func:`run_evaluation`'s work, with the results folder locked."""
    config = validate(config)
    check_parameters(config)
    methods = method_list(config.method)
    run = prepare_run(config) if run is None else run
    several = len(methods) > 1
    if any(load("method", name).uses_ood_prototype for name, _ in methods) and config.prototype.strategy == "mixup":
        run.split_outputs("train", accumulate_early=True)  # one train pass serves the mixup and every method
    test = run.features("test")
    id_accuracy = accuracy(test.logits, test.labels)
    tables: dict[str, pd.DataFrame] = {}
    failures: dict[str, str] = {}
    for name, params in methods:
        target = output_dir / name if several else output_dir
        try:
            problem = method_problem(name, params, run.feature_dim, config)
            if problem is not None:
                raise ConfigError(problem)
            aps_record = None
            params, sweep, notes = adapt_parameters(name, params, run.feature_dim, config)
            for note in notes:
                log.warning("%s", note)
            if config.aps and load("method", name).sweep:
                result = search_baseline_parameters(run, name, params, sweep)
                params = result.chosen
                aps_record = result.record() if result.trials else None
            scores = score_method(run, name, params)
            table = metrics_table(scores.id_scores, scores.ood_scores, _groups(run), id_accuracy)
            fsood = full_spectrum(run, scores) if config.fsood else None
        except CacheSpaceError:  # a full disk stops the run: the next method would need the disk too
            raise
        except Exception as error:  # noqa: BLE001 - recorded; the other methods still run
            reason = f"{type(error).__name__}: {error}"
            failures[name] = reason
            log.error("method %s failed: %s", name, reason)
            target.mkdir(parents=True, exist_ok=True)
            # never beside a failed run.json
            for stale in ("metrics.csv", "metrics_fsood.csv", "metrics.json", "scores.pt"):
                (target / stale).unlink(missing_ok=True)
            write_json(target / "run.json", _failure_record(run, name, params, reason))
            if not several:
                raise
            continue
        write_method_results(target, run, name, params, table, scores, id_accuracy, aps_record, notes, fsood)
        tables[name] = table
    if several:
        write_json(output_dir / "summary.json", {
            "config_hash": config_hash(to_plain(config)),
            "forward_passes_s": forward_timings(run.timings),  # shared by every method, recorded once
            "methods": {name: ({"status": "failed", "error": failures[name]} if name in failures
                               else {"status": "ok", "near_auroc": _auroc(tables[name], "nearood"),
                                     "far_auroc": _auroc(tables[name], "farood")})
                        for name, _ in methods},
        })
    if failures:
        raise MethodsFailedError(
            f"{len(failures)} of {len(methods)} method(s) failed (the others' results are in {output_dir}):\n"
            + "\n".join(f"  {name}: {reason}" for name, reason in failures.items())
        )
    return tables


def _auroc(table: pd.DataFrame, row: str) -> float | None:
    return None if row not in table.index else round(float(table.loc[row, "AUROC"]), 4)

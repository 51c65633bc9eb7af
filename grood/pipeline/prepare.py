"""Run preparation: the benchmark, its inputs checked before the first forward pass, the network and
the feature cache (:class:`BenchmarkRun`), and each method's parameters against the network.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from grood import aps
from grood.components import load
from grood.backbones import build_backbone
from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import missing_checkpoint_hint
from grood.config import ConfigError, RunConfig, method_params
from grood.config.schema import MethodConfig
from grood.data import Benchmark, available_benchmarks, benchmark_from_dict, get_benchmark, resolve_spec, test_transform
from grood.data.benchmarks import CORRUPTED_SPLIT, DataLayoutError
from grood.data.imagelist import ImageListError
from grood.data.verify import VERIFIED_DIR, verify_images
from grood.detectors.base import Detector
from grood.detectors.registry import detector_parameters
from grood.features import FeatureCache, SplitOutputs, cache_key, extract_split
from grood.featureset import FeatureSet
from grood.method.strategies import STRATEGIES
from grood.provenance import sha256_of_file

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
            with_early = self.cache.load(cache_key({**key_parts, "accumulate_early": True}), early=False)
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


def method_list(method_cfg: MethodConfig) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, params)]`` for ``method=<name>`` or ``method=all`` (every registered method, GROOD first).

    ``params`` hold the values that are set (a baseline's ``None`` = OpenOOD's default or APS's choice)."""
    return method_params(method_cfg)

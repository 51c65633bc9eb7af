"""Scoring: every method on the cached features (through the detectors' capabilities), the OOD
prototype of the methods that use one, and the baselines' parameter search.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from grood import aps
from grood.components import load
from grood.config import ConfigError
from grood.data.benchmarks import CORRUPTED_SPLIT
from grood.detectors.base import Detector
from grood.features import cache_key
from grood.method.prototypes import class_prototypes
from grood.method.strategies import STRATEGIES, build_ood_prototype, oracle_split, strategy_params
from grood.prototype_inputs import TrainingPass, prototype_inputs
from grood.resources import loader_workers
from grood.timings import own_seconds, start_clock
from grood.pipeline.prepare import BenchmarkRun, run_arguments

log = logging.getLogger(__name__)


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

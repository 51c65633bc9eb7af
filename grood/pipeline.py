"""One evaluation run from a plain config mapping (what ``scripts/run.py`` passes after Hydra composes it).

The flow of ``DESIGN.md``: data root -> image lists -> backbone + checkpoint -> one cached forward pass
per split -> every requested detector on the cache -> OpenOOD's tables -> a results folder that says
what produced it (``metrics.csv``, ``metrics.json``, ``run.json`` with the resolved config, package
versions, git commit and checkpoint hash, and ``scores.pt`` for the figures).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from grood.backbones import build_backbone
from grood.data import Benchmark, benchmark_from_dict, get_benchmark, resolve_spec, test_transform
from grood.detectors.grood_detector import GROODDetector
from grood.detectors.registry import build_detector, detector_parameters
from grood.evaluation import metrics_table
from grood.metrics import accuracy
from grood.features import FeatureCache, SplitOutputs, cache_key, extract_split
from grood.featureset import FeatureSet
from grood.io import atomic_write, write_json
from grood.method.prototypes import class_prototypes
from grood import aps, ood_prototypes
from grood.provenance import git_commit, package_versions, sha256_of_file
from grood.resources import loader_workers

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to do."""


@dataclass
class BenchmarkRun:
    """Everything one (benchmark, checkpoint) run shares between methods."""

    config: Mapping[str, Any]
    benchmark: Benchmark
    data_root: Path
    network: torch.nn.Module
    checkpoint_sha256: str | None
    transform: Any
    transform_spec: dict[str, Any]
    cache: FeatureCache
    datasets: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, SplitOutputs] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.config.get("device", "auto"))

    def dataset(self, split: str):
        """The image-list dataset of ``split`` ("train", "test", "val", an OOD name or "val_ood:<name>")."""
        if split not in self.datasets:
            self.datasets[split] = self.benchmark.dataset(
                split, self.data_root, self.transform, check_files=bool(self.config.get("check_files", True))
            )
        return self.datasets[split]

    def split_outputs(self, split: str, accumulate_early: bool = False) -> SplitOutputs:
        """Cached network outputs on ``split`` (the network runs at most once per split and key)."""
        name = f"{split}+early" if accumulate_early else split
        if name in self.outputs:
            return self.outputs[name]
        if accumulate_early and split in self.outputs:
            del self.outputs[split]
        dataset = self.dataset(split)
        backbone = self.config["backbone"]
        key_parts = {
            "checkpoint_sha256": self.checkpoint_sha256,
            "backbone": backbone["name"],
            "split_block": backbone.get("split_block"),
            "weights": backbone.get("weights"),
            "transform": repr(self.transform),
            "list_sha256": dataset.list_sha256,
            "split": split,
        }
        started = time.perf_counter()
        if not accumulate_early:  # an entry with early sums (from a GROOD run) serves a plain request too
            with_early = self.cache.load(cache_key({**key_parts, "accumulate_early": True}))
            if with_early is not None:
                self.outputs[split] = with_early
                return with_early
        outputs = extract_split(
            self.network,
            dataset,
            cache=self.cache,
            key_parts=key_parts,
            num_classes=self.benchmark.num_classes,
            accumulate_early=accumulate_early,
            batch_size=int(self.config.get("batch_size", 128)),
            num_workers=int(self.config.get("num_workers", 0)),
            device=self.device,
            progress=bool(self.config.get("progress", True)),
            description=f"{self.benchmark.name}/{split}",
        )
        self.timings[f"forward:{split}"] = time.perf_counter() - started
        self.outputs[name] = outputs
        if accumulate_early:
            self.outputs[split] = outputs
        return outputs

    def features(self, split: str) -> FeatureSet:
        return self.split_outputs(split).features


# --------------------------------------------------------------------------- building a run
def resolve_benchmark(dataset_cfg: Mapping[str, Any]) -> Benchmark:
    """The registry benchmark named by ``dataset.benchmark``, or a user-defined one in ``dataset.definition``."""
    if dataset_cfg.get("definition"):
        return benchmark_from_dict(dict(dataset_cfg["definition"]))
    name = dataset_cfg.get("benchmark")
    if not name:
        raise ConfigError("dataset config needs 'benchmark' (a registry name) or 'definition' (a user benchmark)")
    return get_benchmark(str(name))


def prepare_run(config: Mapping[str, Any]) -> BenchmarkRun:
    """Validate data and checkpoint, build the network and the cache; nothing runs the network yet."""
    dataset_cfg, backbone_cfg, paths = config["dataset"], config["backbone"], config["paths"]
    benchmark = resolve_benchmark(dataset_cfg)
    data_root = Path(str(dataset_cfg.get("data_root") or paths["data_root"])).expanduser()
    benchmark.validate(data_root)
    checkpoint = dataset_cfg.get("checkpoint")
    checkpoint_path = Path(str(checkpoint)).expanduser() if checkpoint else None
    if checkpoint_path is not None and not checkpoint_path.exists():
        raise FileNotFoundError(
            f"checkpoint {checkpoint_path} (config key dataset.checkpoint) not found; fetch it with "
            f"`make checkpoints DATASET={dataset_cfg.get('name', benchmark.name)}` or point dataset.checkpoint at it"
        )
    network = build_backbone(
        str(backbone_cfg["name"]),
        num_classes=benchmark.num_classes,
        checkpoint=checkpoint_path,
        split_block=backbone_cfg.get("split_block"),
        weights=backbone_cfg.get("weights"),
    )
    transform_spec = resolve_spec({
        **dict(benchmark.transform),
        **dict(backbone_cfg.get("transform") or {}),  # e.g. Swin-T's own resize
        **dict(dataset_cfg.get("transform") or {}),
    })
    return BenchmarkRun(
        config=config,
        benchmark=benchmark,
        data_root=data_root,
        network=network,
        checkpoint_sha256=sha256_of_file(checkpoint_path) if checkpoint_path else None,
        transform=test_transform(transform_spec),
        transform_spec=transform_spec,
        cache=FeatureCache(Path(str(paths["cache_dir"]))),
    )


# --------------------------------------------------------------------------- GROOD's OOD prototype
def grood_prototype(run: BenchmarkRun, prototype_cfg: Mapping[str, Any], class_protos: torch.Tensor) -> torch.Tensor:
    """``[D]`` the OOD prototype of a non-oracle strategy (section 5.2 / appendix A.2)."""
    strategy = str(prototype_cfg.get("strategy", "mixup"))
    seed = int(run.config.get("seed", 0))
    common = dict(batch_size=int(run.config.get("batch_size", 128)), device=run.device)
    spec = run.transform_spec
    if strategy == "mixup":
        train = run.split_outputs("train", accumulate_early=True)
        candidates = ood_prototypes.mixup_features(
            run.network, run.dataset("train"), train.features.logits, train.early_prototypes(),
            mixup_lambda=float(prototype_cfg.get("mixup_lambda", 0.5)),
            num_images=prototype_cfg.get("num_images"), train_labels=train.features.labels, seed=seed,
            num_workers=int(run.config.get("num_workers", 0)), progress=bool(run.config.get("progress", True)),
            **common,
        )
    elif strategy == "uniform":
        image_size = int(spec.get("crop_size") or spec.get("size"))
        candidates = ood_prototypes.uniform_noise_features(
            run.network, image_shape=(3, image_size, image_size), mean=spec["mean"], std=spec["std"],
            num_images=int(prototype_cfg.get("num_images", 1000)), keep=int(prototype_cfg.get("keep", 100)),
            seed=seed, **common,
        )
    elif strategy == "val_ood":
        names = list(run.benchmark.val_ood)
        if not names:
            raise ConfigError(f"benchmark {run.benchmark.name!r} has no val OOD list for prototype=val_ood")
        features = torch.cat([run.features(f"val_ood:{name}").features for name in names])
        rows = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))
        candidates = features[rows[: int(prototype_cfg.get("num_images", 100))]]
    elif strategy == "corrupted":
        split = "val" if run.benchmark.has_split("val") else "test"
        dataset = run.dataset(split)
        candidates = ood_prototypes.corrupted_id_features(
            run.network, dataset, dataset.labels, mean=spec["mean"], std=spec["std"],
            num_images=int(prototype_cfg.get("num_images", 100)), seed=seed, **common,
        )
    elif strategy == "mean":
        return ood_prototypes.mean_prototype(class_protos)
    else:
        raise ConfigError(
            f"prototype.strategy={strategy!r} is not a single-prototype strategy; valid: "
            f"{[s for s in ood_prototypes.STRATEGIES if 'oracle' not in s]} (oracles are handled per OOD set)"
        )
    return ood_prototypes.finish_prototype(
        candidates, class_protos, filter_quantile=prototype_cfg.get("filter_quantile"),
        min_keep=int(prototype_cfg.get("min_keep", 1)),
    )


# --------------------------------------------------------------------------- scoring
@dataclass
class MethodScores:
    """Scores of one method: on the ID test split (one tensor, or one per OOD set for the oracles)."""

    id_scores: torch.Tensor | dict[str, torch.Tensor]
    ood_scores: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def _groups(run: BenchmarkRun) -> dict[str, list[str]]:
    return {"near": list(run.benchmark.near), "far": list(run.benchmark.far)}


def _grood_params(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    index_cfg = config.get("index") or {"kind": "exact", "params": {}}
    merged = {
        "index": index_cfg.get("kind", "exact"),
        "index_params": {k: v for k, v in dict(index_cfg.get("params") or {}).items() if v is not None},
        "device": config.get("device", "auto"),
        "progress": bool(config.get("progress", True)),
    }
    merged.update(dict(params))
    return merged


def score_grood(run: BenchmarkRun, params: Mapping[str, Any]) -> MethodScores:
    """GROOD with the configured OOD-prototype strategy (oracles: one prototype per OOD set)."""
    prototype_cfg = dict(run.config.get("prototype") or {"strategy": "mixup"})
    strategy = str(prototype_cfg.get("strategy", "mixup"))
    train = run.split_outputs("train", accumulate_early=strategy == "mixup").features
    head = run.network.linear_head()
    test = run.features("test")
    ood_names = [name for names in _groups(run).values() for name in names]
    detector = GROODDetector(**_grood_params(run.config, params))
    class_protos = class_prototypes(train.features, train.labels, run.benchmark.num_classes)
    started = time.perf_counter()
    if strategy not in ("local_oracle", "global_oracle"):
        p_ood = grood_prototype(run, prototype_cfg, class_protos)
        # of "method:grood", the time of the OOD prototype (mixup: a pass of the network over mixed images)
        run.timings["prototype:grood"] = time.perf_counter() - started
        detector.set_ood_prototype(p_ood).fit(train, head, class_prototypes=class_protos)
        ood_scores = {name: detector.score(run.features(name)) for name in ood_names}
        scores = MethodScores(detector.score(test), ood_scores)
    else:
        num_oracle = int(prototype_cfg.get("num_images", 100))
        seed = int(run.config.get("seed", 0))
        splits = {name: ood_prototypes.oracle_split(len(run.features(name)), num_oracle, seed) for name in ood_names}
        id_scores, ood_scores = {}, {}
        for name in ood_names:
            if strategy == "local_oracle":
                candidates = run.features(name).features[splits[name][0]]
            else:
                others = [other for other in ood_names if other != name]
                candidates = torch.cat([run.features(other).features[splits[other][0]] for other in others])
            p_ood = ood_prototypes.finish_prototype(
                candidates, class_protos, filter_quantile=prototype_cfg.get("filter_quantile"),
                min_keep=int(prototype_cfg.get("min_keep", 1)),
            )
            detector.set_ood_prototype(p_ood).fit(train, head, class_prototypes=class_protos)
            id_scores[name] = detector.score(test)
            ood_scores[name] = detector.score(run.features(name).subset(splits[name][1]))
        scores = MethodScores(id_scores, ood_scores)
    scores.info["ncp_accuracy"] = 100.0 * accuracy(detector.predict(test), test.labels)
    scores.info["prototype"] = strategy
    run.timings["method:grood"] = time.perf_counter() - started
    return scores


def _baseline_params(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` completed with what comes from the run (ODIN scales its gradient by the input std)."""
    params = dict(params)
    if "input_std" in detector_parameters(name) and params.get("input_std") is None:
        params["input_std"] = tuple(run.transform_spec["std"])
    return params


def baseline_split_scores(
    run: BenchmarkRun, name: str, params: Mapping[str, Any], splits: list[str]
) -> dict[str, torch.Tensor]:
    """Fit baseline ``name`` with ``params`` and score each of ``splits`` (cached features; ODIN re-runs
    the network on the images). Returns split -> ``[N]`` scores, higher = more ID."""
    detector = build_detector(name, **_baseline_params(run, name, params))
    detector.fit(run.features(detector.fit_split), run.network.linear_head())
    if not detector.needs_network:
        return {split: detector.score(run.features(split)) for split in splits}
    batch_size = int(run.config.get("batch_size", 128))
    scores = {}
    for split in splits:
        loader = torch.utils.data.DataLoader(run.dataset(split), batch_size=batch_size,
                                             num_workers=loader_workers(int(run.config.get("num_workers", 0))))
        scores[split] = detector.score_images(run.network, loader, device=run.device, description=f"ODIN {split}",
                                              progress=bool(run.config.get("progress", True)))
    return scores


def score_baseline(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> MethodScores:
    """A baseline of :mod:`grood.detectors` on the ID test set and every OOD test set."""
    ood_names = [n for names in _groups(run).values() for n in names]
    started = time.perf_counter()
    scores = baseline_split_scores(run, name, params, ["test", *ood_names])
    run.timings[f"method:{name}"] = time.perf_counter() - started
    return MethodScores(scores["test"], {n: scores[n] for n in ood_names})


def search_baseline_parameters(run: BenchmarkRun, name: str, params: Mapping[str, Any]) -> aps.SearchResult:
    """OpenOOD's APS (:mod:`grood.aps`) for baseline ``name`` on the benchmark's validation lists."""
    started = time.perf_counter()
    try:
        result = aps.search_parameters(
            name, params, run.benchmark, lambda n, p, splits: baseline_split_scores(run, n, p, splits),
            progress=bool(run.config.get("progress", False)),
        )
    except aps.APSError as error:
        raise ConfigError(str(error)) from error
    if result.trials:
        run.timings[f"aps:{name}"] = time.perf_counter() - started
    return result


def write_method_results(
    out_dir: Path, run: BenchmarkRun, method: str, params: Mapping[str, Any], table: pd.DataFrame,
    scores: MethodScores, id_accuracy: float, aps_record: Mapping[str, Any] | None = None,
) -> None:
    """``metrics.csv``, ``metrics.json``, ``run.json`` and ``scores.pt`` for one method (atomic writes).

    ``aps_record``: the parameter search that chose ``params`` (:meth:`grood.aps.SearchResult.record`),
    written to ``run.json`` as ``aps`` (None: no search ran)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "metrics.csv") as handle:
        table.to_csv(handle, float_format="%.4f")
    write_json(out_dir / "metrics.json", {"table": table.reset_index().to_dict(orient="records")})
    with atomic_write(out_dir / "scores.pt", "wb") as handle:
        torch.save({"id": scores.id_scores, "ood": scores.ood_scores}, handle)
    config = run.config
    write_json(out_dir / "run.json", {
        "benchmark": run.benchmark.name,
        "dataset": config["dataset"].get("name", run.benchmark.name),
        "method": method,
        "method_params": dict(params),
        "aps": None if aps_record is None else dict(aps_record),
        "seed": config.get("seed", 0),
        "checkpoint": config["dataset"].get("checkpoint"),
        "checkpoint_sha256": run.checkpoint_sha256,
        "backbone": config["backbone"],
        "id_accuracy": 100.0 * id_accuracy,
        "ncp_accuracy": scores.info.get("ncp_accuracy"),
        "groups": _groups(run),
        "experiment": config.get("experiment_name", "default"),
        "extra": {**dict(config.get("extra") or {}), **{k: v for k, v in scores.info.items() if k != "ncp_accuracy"}},
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "config": dict(config),
        "versions": package_versions(),
        "git_commit": git_commit(),
    })


def method_list(method_cfg: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, params)]`` for ``method=<name>`` or ``method=all`` (GROOD first, then every baseline)."""
    from grood.detectors.registry import DETECTORS

    name = str(method_cfg.get("name", "grood"))
    params = dict(method_cfg.get("params") or {})
    valid = ["grood", *DETECTORS]
    # params may hold per-method dicts ({vim: {dim: 32}}), as method=all and experiments use
    per_method = {key: dict(value) for key, value in params.items() if key in valid and isinstance(value, Mapping)}
    plain = {key: value for key, value in params.items() if key not in per_method}
    if name == "all":
        if plain:
            raise ConfigError(
                f"method=all takes per-method params (method.params.<method>.<key>); got {sorted(plain)}"
            )
        return [("grood", per_method.get("grood", {}))] + [
            (baseline, per_method.get(baseline, {})) for baseline in DETECTORS if baseline != "grood"
        ]
    if name not in valid:
        raise ConfigError(f"unknown method {name!r} (config key method.name); valid: {sorted(set(valid + ['all']))}")
    return [(name, {**plain, **per_method.get(name, {})})]


def run_evaluation(config: Mapping[str, Any], output_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Evaluate every configured method on one benchmark; write one results folder per method.

    Returns method name -> OpenOOD table (percent).
    """
    output_dir = Path(output_dir)
    methods = method_list(config["method"])
    run = prepare_run(config)
    strategy = str((config.get("prototype") or {}).get("strategy", "mixup"))
    if any(name == "grood" for name, _ in methods) and strategy == "mixup":
        run.split_outputs("train", accumulate_early=True)  # one train pass serves the mixup and every method
    test = run.features("test")
    id_accuracy = accuracy(test.logits, test.labels)
    tables: dict[str, pd.DataFrame] = {}
    search = bool(config.get("aps", False))
    for name, params in methods:
        aps_record = None
        if search and name != "grood":
            result = search_baseline_parameters(run, name, params)
            params = result.chosen
            aps_record = result.record() if result.trials else None
        scores = score_grood(run, params) if name == "grood" else score_baseline(run, name, params)
        table = metrics_table(scores.id_scores, scores.ood_scores, _groups(run), id_accuracy)
        target = output_dir / name if len(methods) > 1 else output_dir
        write_method_results(target, run, name, params, table, scores, id_accuracy, aps_record)
        tables[name] = table
    return tables

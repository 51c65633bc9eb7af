"""One training run from a checked :class:`~grood.config.train_schema.TrainRunConfig` (``grood train``).

The data checks (every list and image folder training reads, before anything is built), the datasets (the
evaluation's transform spec with the recipe's augmentation, class-balanced subsets for smoke runs), the
:class:`~grood.training.TrainConfig` of the loop, and the provenance of each session; the loop itself is
:func:`grood.training.train`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset, Subset

from grood.backbones import build_backbone
from grood.config.schema import ConfigError
from grood.config.train_schema import AUGMENTATIONS, TrainRunConfig, to_plain_train
from grood.data import Benchmark, ImageListError, resolve_spec, test_transform
from grood.data.download import manual_notes
from grood.io import write_json
from grood.pipeline import resolve_benchmark
from grood.provenance import git_commit, package_versions
from grood.training import (TrainConfig, balanced_subset, check_resumable, load_history, seed_everything, train,
                            train_transform)

log = logging.getLogger("grood.train")

#: TrainConfig fields that are top-level keys of the training config; the others are ``train.*`` keys.
TOP_LEVEL_FIELDS = ("seed", "manifold_mixup", "device", "num_workers", "progress")


class TrainingDataError(FileNotFoundError):
    """The training or evaluation data of a benchmark is missing; the message says how to get it."""


def _fetch_hint(benchmark: Benchmark, data_root: Path) -> str:
    """How to get ``benchmark``'s data into ``data_root`` (the make command; ImageNet's manual step)."""
    if not benchmark.downloadable:
        return ("no script downloads this benchmark: point paths.data_root ($GROOD_DATA_ROOT) at a folder holding it "
                "(dataset=cifar10_smoke: its train recipe uses paths.smoke_data_root, under paths.shared_dir / "
                "$GROOD_SHARED_DIR)")
    lines = [
        f"fetch it with `make data DATASET={benchmark.name} DATA_ROOT={data_root}` (or `grood download "
        f"data --benchmark {benchmark.name} --data-root {data_root}`), or point paths.data_root ($GROOD_DATA_ROOT) "
        "at the data root that holds it"
    ]
    return "\n".join(lines + manual_notes(benchmark.name, data_root))  # ImageNet-1K training images: by hand


def check_training_data(benchmark: Benchmark, data_root: Path, splits: list[str]) -> None:
    """Raise :class:`TrainingDataError` when a list or images folder that ``splits`` need is absent.

    Only the splits training reads are checked (the OOD test sets are not needed to train).
    """
    missing = []
    for split in splits:
        list_path, _ = benchmark.list_for(split)
        if not (data_root / list_path).is_file():
            missing.append(f"{list_path} (the {split} list)")
    for images in dict.fromkeys(benchmark.images_dir_for(split) for split in splits):
        if not (data_root / images).is_dir():
            missing.append(f"{images}/ (the images the lists name)")
    if missing:
        where = "does not exist" if not data_root.is_dir() else f"lacks {len(missing)} path(s)"
        raise TrainingDataError(
            f"training data of benchmark {benchmark.name!r}: data root {data_root} {where}:\n"
            + "\n".join(f"  missing: {path}" for path in missing)
            + f"\n{_fetch_hint(benchmark, data_root)}"
        )


def train_config_from(config: TrainRunConfig) -> TrainConfig:
    """The loop's :class:`TrainConfig`: each of its fields from the config key of the same name (``train.*``,
    or the top-level :data:`TOP_LEVEL_FIELDS`); ``extra`` records the dataset, backbone and eval split."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(TrainConfig):
        if item.name == "extra":
            continue
        source = config if item.name in TOP_LEVEL_FIELDS else config.train
        if not hasattr(source, item.name):  # the schema and the loop drifted apart: a bug, not a user error
            raise TypeError(f"TrainConfig.{item.name} has no key in grood/config/train_schema.py")
        values[item.name] = getattr(source, item.name)
    return TrainConfig(**values, extra={"dataset": config.dataset.name, "backbone": config.backbone.name,
                                        "eval_split": config.train.eval_split})


def build_datasets(config: TrainRunConfig) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """``(train set with augmentation, evaluation set or None, data provenance)`` of a checked config."""
    recipe, dataset_cfg = config.train, config.dataset
    benchmark = resolve_benchmark(dataset_cfg.benchmark, dataset_cfg.definition)
    data_root = Path(config.paths.data_root).expanduser()
    eval_split = recipe.eval_split
    if eval_split is not None and not benchmark.has_split(eval_split):
        raise ConfigError(f"config key train.eval_split={eval_split!r}: benchmark {benchmark.name!r} has no "
                                f"such split; give one of {['train', 'val', 'test']} that it has, or null for none")
    splits = ["train"] + ([eval_split] if eval_split else [])
    check_training_data(benchmark, data_root, splits)
    # The evaluation's transform spec (normalisation included), so train and test inputs match.
    spec = resolve_spec({**dict(benchmark.transform), **config.backbone.transform.given(),
                         **dataset_cfg.transform.given()})
    augment = train_transform(spec["crop_size"], spec["mean"], spec["std"],
                              large_scale=AUGMENTATIONS[recipe.augmentation], interpolation=spec["interpolation"])
    try:
        train_set: Dataset = benchmark.dataset("train", data_root, augment, check_files=config.check_files)
        eval_set: Dataset | None = (benchmark.dataset(eval_split, data_root, test_transform(spec),
                                                      check_files=config.check_files) if eval_split else None)
    except ImageListError as error:
        raise TrainingDataError(f"{error}\n{_fetch_hint(benchmark, data_root)}") from error
    info: dict[str, Any] = {
        "benchmark": benchmark.name, "data_root": str(data_root), "transform_spec": spec,
        "augmentation": recipe.augmentation, "train_list": benchmark.list_for("train")[0],
        "train_list_sha256": train_set.list_sha256, "eval_split": eval_split,
        "eval_list_sha256": eval_set.list_sha256 if eval_set is not None else None,
    }
    if recipe.subset_per_class is not None:
        indices = balanced_subset(train_set.labels, recipe.subset_per_class, seed=recipe.subset_seed)
        info["train_subset_indices"] = indices
        train_set = Subset(train_set, indices)
    if recipe.eval_subset_per_class is not None and eval_set is not None:
        indices = balanced_subset(eval_set.labels, recipe.eval_subset_per_class, seed=recipe.subset_seed)
        info["eval_subset_indices"] = indices
        eval_set = Subset(eval_set, indices)
    info["num_train"], info["num_eval"] = len(train_set), (len(eval_set) if eval_set is not None else 0)
    return train_set, eval_set, info


def write_provenance(output_dir: Path, session: dict[str, Any]) -> None:
    """Append (or update, by ``started``) this session in ``output_dir/provenance.json``."""
    path = output_dir / "provenance.json"
    sessions = []
    if path.exists():
        sessions = json.loads(path.read_text()).get("sessions", [])
    sessions = [s for s in sessions if s.get("started") != session["started"]] + [session]
    write_json(path, {"sessions": sessions})


def run_training(config: TrainRunConfig, command: Sequence[str] | None = None) -> Path:
    """Build the network and data ``config`` names, train (or resume) into ``config.output_dir``; the path of
    ``last.ckpt``. ``command``: the command line recorded in ``provenance.json`` (default ``sys.argv``)."""
    output_dir = Path(config.output_dir).expanduser()
    train_config = train_config_from(config)
    train_set, eval_set, data_info = build_datasets(config)
    seed_everything(train_config.seed)  # the initial weights depend on the seed only
    num_classes = resolve_benchmark(config.dataset.benchmark, config.dataset.definition).num_classes
    network = build_backbone(config.backbone.name, num_classes=num_classes, split_block=config.backbone.split_block)
    # A resume.pt from other settings fails here, before this session is recorded.
    resumed = check_resumable(output_dir, len(train_set), len(eval_set) if eval_set is not None else 0, train_config)
    output_dir.mkdir(parents=True, exist_ok=True)
    session = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "resumed": resumed,
        "config": to_plain_train(config), "packages": package_versions(), "git_commit": git_commit(),
        "command": list(sys.argv if command is None else command), "host": socket.gethostname(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "data": data_info,
    }
    write_provenance(output_dir, session)
    log.info("training %s on %s (%d images, eval %d) into %s", config.backbone.name, data_info["benchmark"],
             data_info["num_train"], data_info["num_eval"], output_dir)
    last = train(network, train_set, eval_set, output_dir, train_config)
    session["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    session["epochs_done"] = len(load_history(output_dir))
    write_provenance(output_dir, session)
    return last

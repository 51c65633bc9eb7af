#!/usr/bin/env python
"""Train a backbone with the paper's recipe (section 6) for the checkpoint studies (Hydra app).

    python scripts/train.py dataset=cifar100                          # ResNet-18 32x32, 100 epochs, seed 0
    python scripts/train.py -m dataset=cifar100 seed=0,1,2            # three seeds (multirun)
    python scripts/train.py dataset=cifar100 manifold_mixup=true      # Table 7's mixup-trained backbone
    python scripts/train.py dataset=imagenet200                       # ResNet-18 224x224, batch 256
    python scripts/train.py dataset=cifar10_smoke                     # CPU smoke run, seconds
    python scripts/train.py dataset=cifar10 train=smoke               # the smoke recipe on any data root

Config: ``configs/train.yaml``; the recipe of each dataset is ``configs/train/<dataset>.yaml``. Output, one
folder per run: ``<paths.checkpoint_root>/trained/<dataset>_<backbone>[_mixup]/s<seed>/`` with
``epoch_<NNN>.ckpt`` (per epoch; ``train.keep_epoch_checkpoints=15`` keeps only Table 5's last 15),
``best.ckpt`` (best accuracy on the val split), ``last.ckpt`` -- plain state dicts, OpenOOD's format --,
``history.json``, ``train_config.json``, ``provenance.json`` (resolved config, package versions, git commit,
data lists) and ``resume.pt``. Running the same command again continues after the last finished epoch.

Evaluate a checkpoint with ``python scripts/run.py dataset=cifar100 dataset.checkpoint=<folder>/epoch_090.ckpt
extra.epoch=90``.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]

import torch  # noqa: E402
from torch.utils.data import Dataset, Subset  # noqa: E402

from grood.backbones import build_backbone  # noqa: E402
from grood.data import Benchmark, ImageListError, resolve_spec, test_transform  # noqa: E402
from grood.io import write_json  # noqa: E402
from grood.pipeline import resolve_benchmark  # noqa: E402
from grood.provenance import git_commit, package_versions  # noqa: E402
from grood.resources import configure_threads  # noqa: E402
from grood.data.download import manual_notes  # noqa: E402
from grood.training import (  # noqa: E402
    ResumeMismatchError,
    TrainConfig,
    balanced_subset,
    check_resumable,
    load_history,
    seed_everything,
    train,
    train_transform,
)

log = logging.getLogger("grood.train")

# ``${grood.suffix_if:${manifold_mixup},_mixup}``: the suffix when the flag is true, else nothing.
OmegaConf.register_new_resolver("grood.suffix_if", lambda flag, suffix: suffix if flag else "", replace=True)

AUGMENTATIONS = {"cifar": False, "imagenet": True}  # name -> train_transform's large_scale


class TrainingDataError(FileNotFoundError):
    """The training or evaluation data of a benchmark is missing; the message says how to get it."""


def _fetch_hint(benchmark: Benchmark, data_root: Path) -> str:
    """How to get ``benchmark``'s data into ``data_root`` (the make command; ImageNet's manual step)."""
    if not benchmark.downloadable:
        return ("no script downloads this benchmark: point paths.data_root ($GROOD_DATA_ROOT) at a folder holding it "
                "(dataset=cifar10_smoke: its train recipe uses paths.smoke_data_root, under paths.shared_dir / "
                "$GROOD_SHARED_DIR)")
    lines = [
        f"fetch it with `make data DATASET={benchmark.name} DATA_ROOT={data_root}` (or `python scripts/download.py "
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


def train_config_from(cfg: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a resolved config (``train.*`` plus the top-level run settings)."""
    recipe = cfg["train"]
    if not isinstance(cfg["manifold_mixup"], bool):
        raise ValueError(f"config key manifold_mixup must be true or false; got {cfg['manifold_mixup']!r}")
    return TrainConfig(
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        learning_rate=float(recipe["learning_rate"]),
        min_learning_rate=float(recipe["min_learning_rate"]),
        momentum=float(recipe["momentum"]),
        weight_decay=float(recipe["weight_decay"]),
        nesterov=bool(recipe["nesterov"]),
        manifold_mixup=cfg["manifold_mixup"],
        mixup_alpha=float(recipe["mixup_alpha"]),
        seed=int(cfg["seed"]),
        num_workers=cfg["num_workers"],
        device=str(cfg["device"]),
        amp=bool(recipe["amp"]),
        max_batches_per_epoch=recipe["max_batches_per_epoch"],
        keep_epoch_checkpoints=recipe["keep_epoch_checkpoints"],
        progress=bool(cfg["progress"]),
        extra={"dataset": cfg["dataset"]["name"], "backbone": cfg["backbone"]["name"],
               "eval_split": recipe["eval_split"]},
    )


def build_datasets(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """``(train set with augmentation, evaluation set or None, data provenance)`` of a resolved config."""
    recipe, dataset_cfg = cfg["train"], cfg["dataset"]
    benchmark = resolve_benchmark(dataset_cfg.get("benchmark"), dataset_cfg.get("definition"))
    data_root = Path(str(cfg["paths"]["data_root"])).expanduser()
    eval_split = recipe["eval_split"]
    if eval_split is not None and not benchmark.has_split(eval_split):
        raise ValueError(f"config key train.eval_split={eval_split!r}: benchmark {benchmark.name!r} has no such "
                         f"split; give one of {['train', 'val', 'test']} that it has, or null for none")
    splits = ["train"] + ([eval_split] if eval_split else [])
    check_training_data(benchmark, data_root, splits)
    augmentation = recipe["augmentation"]
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"config key train.augmentation must be one of {sorted(AUGMENTATIONS)}; got {augmentation!r}")
    # The evaluation's transform spec (normalisation included), so train and test inputs match.
    spec = resolve_spec({**dict(benchmark.transform), **dict(cfg["backbone"].get("transform") or {}),
                         **dict(dataset_cfg.get("transform") or {})})
    augment = train_transform(spec["crop_size"], spec["mean"], spec["std"], large_scale=AUGMENTATIONS[augmentation],
                              interpolation=spec["interpolation"])
    check_files = bool(cfg["check_files"])
    try:
        train_set: Dataset = benchmark.dataset("train", data_root, augment, check_files=check_files)
        eval_set: Dataset | None = (benchmark.dataset(eval_split, data_root, test_transform(spec), check_files=check_files)
                                    if eval_split else None)
    except ImageListError as error:
        raise TrainingDataError(f"{error}\n{_fetch_hint(benchmark, data_root)}") from error
    info: dict[str, Any] = {
        "benchmark": benchmark.name, "data_root": str(data_root), "transform_spec": spec,
        "augmentation": augmentation, "train_list": benchmark.list_for("train")[0],
        "train_list_sha256": train_set.list_sha256, "eval_split": eval_split,
        "eval_list_sha256": eval_set.list_sha256 if eval_set is not None else None,
    }
    for name, per_class_key in (("train", "subset_per_class"), ("eval", "eval_subset_per_class")):
        per_class = recipe[per_class_key]
        dataset = train_set if name == "train" else eval_set
        if per_class is None or dataset is None:
            continue
        indices = balanced_subset(dataset.labels, int(per_class), seed=int(recipe["subset_seed"]))
        info[f"{name}_subset_indices"] = indices
        if name == "train":
            train_set = Subset(train_set, indices)
        else:
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


def run_training(cfg: DictConfig) -> Path:
    """Build the network and data a config names, train (or resume) into ``cfg.output_dir``; its path."""
    config = OmegaConf.to_container(cfg, resolve=True)
    output_dir = Path(str(config["output_dir"])).expanduser()
    train_config = train_config_from(config)
    train_set, eval_set, data_info = build_datasets(config)
    seed_everything(train_config.seed)  # the initial weights depend on the seed only
    num_classes = resolve_benchmark(config["dataset"].get("benchmark"), config["dataset"].get("definition")).num_classes
    network = build_backbone(str(config["backbone"]["name"]), num_classes=num_classes,
                             split_block=config["backbone"].get("split_block"))
    # A resume.pt from other settings fails here, before this session is recorded.
    resumed = check_resumable(output_dir, len(train_set), len(eval_set) if eval_set is not None else 0, train_config)
    output_dir.mkdir(parents=True, exist_ok=True)
    session = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "resumed": resumed,
        "config": config, "packages": package_versions(), "git_commit": git_commit(REPO_ROOT),
        "command": sys.argv, "host": socket.gethostname(), "cuda": torch.cuda.get_device_name(0)
        if torch.cuda.is_available() else None, "data": data_info,
    }
    write_provenance(output_dir, session)
    log.info("training %s on %s (%d images, eval %d) into %s", config["backbone"]["name"], data_info["benchmark"],
             data_info["num_train"], data_info["num_eval"], output_dir)
    last = train(network, train_set, eval_set, output_dir, train_config)
    session["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    session["epochs_done"] = len(load_history(output_dir))
    write_provenance(output_dir, session)
    return last


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    configure_threads()
    try:
        last = run_training(cfg)
    except (TrainingDataError, ResumeMismatchError) as error:  # setup problems: the message, no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    history = load_history(last.parent)
    log.info("done: %s (%d epochs)", last.parent, len(history))
    accuracies = [row["eval_accuracy"] for row in history if row["eval_accuracy"] is not None]
    return max(accuracies) if accuracies else None  # for Hydra sweepers


if __name__ == "__main__":
    main()

"""The training configuration (``grood train``, ``configs/train.yaml``), typed like the evaluation's.

    from grood.config.train_schema import compose_train_config
    config = compose_train_config(["dataset=cifar10_smoke", "train.epochs=1"])   # a TrainRunConfig

Every key of ``configs/train.yaml`` and ``configs/train/<recipe>.yaml`` is declared here with its type; the
values (the paper's recipe, section 6) live in those yaml files. ``paths``, ``backbone`` and ``dataset`` are
the evaluation's own groups and schemas (:mod:`grood.config.schema`). An unknown key, a value of the wrong type
or one out of range stops the command before anything is built, each problem named with its key. No torch here:
the command line is checked in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf

from grood.config.schema import BackboneConfig, ConfigError, DatasetConfig, PathsConfig, typed_object

#: ``train.augmentation`` -> whether it is the large-scale (ImageNet) augmentation of
#: :func:`grood.training.train_transform`: cifar = flip + random crop (padding 4); imagenet = random resized
#: crop + flip.
AUGMENTATIONS: dict[str, bool] = {"cifar": False, "imagenet": True}
#: The splits ``train.eval_split`` may name (the benchmark must have it).
EVAL_SPLITS = ("train", "val", "test")


def _positive_int(found: list[str], key: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        found.append(f"{key}={value!r}: must be an integer >= 1" + (" or null" if optional else ""))


@dataclass
class TrainRecipeConfig:
    """``train.*``: the optimisation recipe and the training data (values: ``configs/train.yaml``, what
    ``configs/train/<dataset>.yaml`` changes)."""

    epochs: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    min_learning_rate: float = MISSING        # where the per-step cosine ends
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    mixup_alpha: float = MISSING              # manifold mixup's α, λ ~ Beta(α, α) (with manifold_mixup=true)
    amp: bool = MISSING                       # float16 autocast + grad scaling, CUDA only
    augmentation: str = MISSING               # a key of AUGMENTATIONS
    eval_split: Optional[str] = MISSING       # per-epoch accuracy, selects best.ckpt; null = best is last
    keep_epoch_checkpoints: Optional[int] = MISSING  # null = every epoch_<NNN>.ckpt; N = the last N only
    max_batches_per_epoch: Optional[int] = MISSING   # smoke runs; null = the whole training set
    subset_per_class: Optional[int] = MISSING        # a seeded class-balanced subset of the train list
    eval_subset_per_class: Optional[int] = MISSING   # likewise for the eval split
    subset_seed: int = MISSING

    def problems(self) -> list[str]:
        found: list[str] = []
        _positive_int(found, "epochs", self.epochs)
        _positive_int(found, "batch_size", self.batch_size)
        for key in ("keep_epoch_checkpoints", "max_batches_per_epoch", "subset_per_class", "eval_subset_per_class"):
            _positive_int(found, key, getattr(self, key), optional=True)
        if not self.learning_rate > 0:
            found.append(f"learning_rate={self.learning_rate!r}: must be > 0")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            found.append(f"min_learning_rate={self.min_learning_rate!r}: must be in [0, learning_rate="
                         f"{self.learning_rate!r}]")
        if not 0 <= self.momentum < 1:
            found.append(f"momentum={self.momentum!r}: must be in [0, 1)")
        if not self.weight_decay >= 0:
            found.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not self.mixup_alpha > 0:
            found.append(f"mixup_alpha={self.mixup_alpha!r}: must be > 0 (λ ~ Beta(α, α))")
        if self.augmentation not in AUGMENTATIONS:
            found.append(f"augmentation={self.augmentation!r}: must be one of {list(AUGMENTATIONS)}")
        if self.eval_split is not None and self.eval_split not in EVAL_SPLITS:
            found.append(f"eval_split={self.eval_split!r}: must be one of {list(EVAL_SPLITS)} or null")
        if isinstance(self.subset_seed, bool) or self.subset_seed < 0:
            found.append(f"subset_seed={self.subset_seed!r}: must be an integer >= 0")
        return found


@dataclass
class TrainRunConfig:
    """One ``grood train`` run. Every key and its type (values: ``configs/train.yaml``)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainRecipeConfig = field(default_factory=TrainRecipeConfig)
    seed: int = MISSING              # seeds the initial weights, the sampler, the augmentation and mixup
    manifold_mixup: bool = MISSING   # Table 7: train with manifold mixup (Verma et al. 2019)
    device: str = MISSING            # auto (cuda when available, else cpu) | cpu | cuda | cuda:<n>
    num_workers: int = MISSING       # data-loader workers
    progress: bool = MISSING         # tqdm progress bars
    check_files: bool = MISSING      # check every image of the lists exists before training starts
    run_name: str = MISSING          # <dataset>_<backbone>[_mixup]
    output_dir: str = MISSING        # where the checkpoints, history and provenance go

    def problems(self) -> list[str]:
        found: list[str] = []
        if isinstance(self.seed, bool) or self.seed < 0:
            found.append(f"seed={self.seed!r}: must be an integer >= 0")
        if isinstance(self.num_workers, bool) or self.num_workers < 0:
            found.append(f"num_workers={self.num_workers!r}: must be an integer >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            found.append(f"device={self.device!r}: must be auto, cpu, cuda or cuda:<n>")
        found += [f"train.{p}" for p in self.train.problems()]
        found += [f"backbone.{p}" for p in self.backbone.problems()]
        found += [f"dataset.{p}" for p in self.dataset.problems()]
        return found


# ``${grood.suffix_if:${manifold_mixup},_mixup}`` (train.yaml's run_name): the suffix when the flag is true.
OmegaConf.register_new_resolver("grood.suffix_if", lambda flag, suffix: suffix if flag else "", replace=True)


def register_train_configs() -> None:
    """Store :class:`TrainRunConfig` in Hydra's ConfigStore as ``train_schema`` (``train.yaml``'s first default;
    idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainRunConfig)


def validate_train(cfg: DictConfig | TrainRunConfig) -> TrainRunConfig:
    """The composed training config as a checked :class:`TrainRunConfig`; every problem is reported at once.

    Raises:
        ConfigError: one line per problem, each naming the key, its value and the valid range.
    """
    if isinstance(cfg, TrainRunConfig):
        config = cfg
    else:
        config = typed_object(cfg, TrainRunConfig, "training configuration",
                              "training configuration (configs/train.yaml)", "grood/config/train_schema.py")
    problems = config.problems()
    if problems:
        raise ConfigError("invalid training configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return config


def compose_train_config(overrides: Sequence[str], config_dir: str | Path | None = None) -> TrainRunConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` (Hydra's compose API) and :func:`validate_train` it."""
    from grood.config import CONFIG_DIR, hydra_compose

    register_train_configs()
    try:
        composed = hydra_compose(overrides, config_dir or CONFIG_DIR, config_name="train")
    except ConfigError as error:
        raise ConfigError(_type_error(error) or str(error)) from error
    return validate_train(composed)


def _type_error(error: BaseException) -> str | None:
    """OmegaConf's "Value 'abc' of type 'str' could not be converted to Integer" behind a failed override, as
    ``key=value: why`` (Hydra's own message names only the override); None for other errors."""
    from omegaconf.errors import ValidationError

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    why = str(cause).splitlines()[0].strip()
    key = getattr(cause, "full_key", None)
    return f"invalid training configuration:\n  {key}: {why}" if key else f"invalid training configuration: {why}"


def check_train_command_line(argv: Sequence[str]) -> TrainRunConfig:
    """The checked config of a ``grood train`` command line (each sweep at its first value), before Hydra
    starts: a bad key or value stops it with a message naming the key."""
    from grood.config import command_line_overrides

    return compose_train_config(command_line_overrides(argv))


def to_plain_train(config: TrainRunConfig) -> dict[str, Any]:
    """The config as plain JSON-ready data (what ``provenance.json`` records)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))

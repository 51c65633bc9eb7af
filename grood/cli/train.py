"""``grood train``: train a backbone with the paper's recipe (section 6) for the checkpoint studies (Hydra app).

    grood train dataset=cifar100                          # ResNet-18 32x32, 100 epochs, seed 0
    grood train -m dataset=cifar100 seed=0,1,2            # three seeds (multirun)
    grood train dataset=cifar100 manifold_mixup=true      # Table 7's mixup-trained backbone
    grood train dataset=imagenet200                       # ResNet-18 224x224, batch 256
    grood train dataset=cifar10_smoke                     # CPU smoke run, seconds
    grood train dataset=cifar10 train=smoke               # the smoke recipe on any data root

Config: ``configs/train.yaml`` (every key typed in :mod:`grood.config.train_schema`); the recipe of each dataset
is ``configs/train/<dataset>.yaml``. Output, one folder per run:
``<paths.checkpoint_root>/trained/<dataset>_<backbone>[_mixup]/s<seed>/`` with ``epoch_<NNN>.ckpt`` (per epoch;
``train.keep_epoch_checkpoints=15`` keeps only Table 5's last 15), ``best.ckpt`` (best accuracy on the val
split), ``last.ckpt`` -- plain state dicts, OpenOOD's format --, ``history.json``, ``train_config.json``,
``provenance.json`` (resolved config, package versions, git commit, data lists) and ``resume.pt``. Running the
same command again continues after the last finished epoch. The work is :func:`grood.training_run.run_training`.

Evaluate a checkpoint with ``grood run dataset=cifar100 dataset.checkpoint=<folder>/epoch_090.ckpt extra.epoch=90``.
Exit status: 0 trained, 2 a bad command line or configuration, missing data or a resume from other settings.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from grood.cli.hydra_app import checked_hydra_app
from grood.config import CONFIG_DIR, ConfigError
from grood.config.train_schema import check_train_command_line, register_train_configs, validate_train

log = logging.getLogger("grood.train")
register_train_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    # torch loads here, after the command line was checked (a typo is reported at once)
    from grood.resources import configure_threads
    from grood.training import ResumeMismatchError, load_history
    from grood.training_run import TrainingDataError, run_training

    configure_threads()
    try:
        last = run_training(validate_train(cfg))
    except (ConfigError, TrainingDataError, ResumeMismatchError) as error:  # setup problems: no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    history = load_history(last.parent)
    log.info("done: %s (%d epochs)", last.parent, len(history))
    accuracies = [row["eval_accuracy"] for row in history if row["eval_accuracy"] is not None]
    return max(accuracies) if accuracies else None  # for Hydra sweepers


def cli(argv: Sequence[str] | None = None, prog: str = "grood train") -> int:
    """``grood train <overrides>``: check the command line (exit status 2 when bad), then the Hydra app."""
    return checked_hydra_app(main, check_train_command_line, prog, argv)


if __name__ == "__main__":
    sys.exit(cli())

#!/usr/bin/env python
"""Evaluate OOD detectors on one OpenOOD v1.5 benchmark (Hydra app).

    grood run dataset=cifar10 method=grood
    grood run dataset=cifar10 method=all              # every method on one feature cache
    grood run -m dataset=cifar10 seed=0,1,2 method=grood   # multirun over checkpoints
    grood run experiment=smoke                         # the shared CIFAR-10 smoke benchmark
    torchrun --nproc_per_node=4 -m grood run dataset=imagenet    # 4 processes extract the features (README)

Every key is typed (grood/config/schema.py): an unknown key, a wrong type or a value out of range stops the
run at once, before any output folder or cache entry is written, and so does every bad input (data root,
lists, images, checkpoint, method parameters invalid for the network) before the first forward pass.

Each run writes, in its output folder (``results/runs/<experiment>/<dataset>/<method>/seed<N>-<config
hash>``), one sub-folder per method with ``metrics.csv``/``metrics.json`` (OpenOOD's table), ``run.json``
(resolved config, package versions, git commit, checkpoint hash) and ``scores.pt``. Exit status: 0 when
every method ran, 1 when any failed or an input was bad, 2 for a bad command line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grood.cli.hydra_app import checked_hydra_app
from grood.config import CONFIG_DIR, ConfigError, check_command_line, register_configs, validate  # noqa: E402

log = logging.getLogger("grood.run")
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    # torch and the detectors load here, after the command line was checked (a typo is reported at once)
    from grood.feature_store import CacheSpaceError
    from grood.interrupt import exit_interrupted
    from grood.shared_extraction import start_sharing
    from grood.pipeline import (MethodsFailedError, MissingInputError, ResultsFolderBusyError, RunInputError,
                                check_results_folder, run_evaluation)
    from grood.resources import configure_threads

    configure_threads()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    sharing = None
    try:
        config = validate(cfg)
        sharing = start_sharing(config)  # torchrun ranks, or extract.* (an array job): None = extract alone
        if sharing is not None and not sharing.evaluates:
            sharing.extract(config)
            return None
        check_results_folder(output_dir, config)
        run = None if sharing is None else sharing.extract(config)
        tables = run_evaluation(config, output_dir, run=run)
    except (ConfigError, MissingInputError, RunInputError, MethodsFailedError, ResultsFolderBusyError,
            CacheSpaceError) as error:
        log.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        exit_interrupted(output_dir, log)
    finally:
        if sharing is not None:
            sharing.close()
    for method, table in tables.items():
        log.info("%s on %s:\n%s", method, config.dataset.name, table.round(2).to_string())
    log.info("results written under %s", output_dir)
    first = next(iter(tables.values()), None)
    return None if first is None or "farood" not in first.index else float(first.loc["farood", "AUROC"])


def cli(argv: Sequence[str] | None = None, prog: str = "grood run") -> int:
    """``grood run <overrides>``: check the command line (exit status 2 when bad), then the Hydra app."""
    return checked_hydra_app(main, check_command_line, prog, argv)


if __name__ == "__main__":
    sys.exit(cli())

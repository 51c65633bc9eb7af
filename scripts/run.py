#!/usr/bin/env python
"""Evaluate OOD detectors on one OpenOOD v1.5 benchmark (Hydra app).

    python scripts/run.py dataset=cifar10 method=grood
    python scripts/run.py dataset=cifar10 method=all              # every method on one feature cache
    python scripts/run.py -m dataset=cifar10 seed=0,1,2 method=grood   # multirun over checkpoints
    python scripts/run.py experiment=smoke                         # the shared CIFAR-10 smoke benchmark

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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grood.config import ConfigError, check_command_line, register_configs, validate  # noqa: E402

log = logging.getLogger("grood.run")
register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # imported here: a bad command line is reported before torch is imported (check_command_line)
    from grood.pipeline import MethodsFailedError, MissingInputError, RunInputError, check_results_folder, run_evaluation
    from grood.resources import configure_threads

    configure_threads()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = validate(cfg)
        check_results_folder(output_dir, config)
        tables = run_evaluation(config, output_dir)
    except (ConfigError, MissingInputError, RunInputError, MethodsFailedError) as error:
        log.error("%s", error)
        sys.exit(1)
    for method, table in tables.items():
        log.info("%s on %s:\n%s", method, config.dataset.name, table.round(2).to_string())
    log.info("results written under %s", output_dir)
    first = next(iter(tables.values()), None)
    return None if first is None or "farood" not in first.index else float(first.loc["farood", "AUROC"])


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as error:
        print(f"scripts/run.py: {error}", file=sys.stderr)
        sys.exit(2)
    main()

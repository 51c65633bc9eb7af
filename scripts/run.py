#!/usr/bin/env python
"""Evaluate OOD detectors on one OpenOOD v1.5 benchmark (Hydra app).

    python scripts/run.py dataset=cifar10 method=grood
    python scripts/run.py dataset=cifar10 method=all              # every method on one feature cache
    python scripts/run.py -m dataset=cifar10 seed=0,1,2 method=grood   # multirun over checkpoints
    python scripts/run.py experiment=smoke                         # the shared CIFAR-10 smoke benchmark

Each run writes, in its output folder (``results/runs/<experiment>/<dataset>/<method>/seed<N>``), one
sub-folder per method with ``metrics.csv``/``metrics.json`` (OpenOOD's table), ``run.json`` (resolved
config, package versions, git commit, checkpoint hash) and ``scores.pt``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grood.pipeline import run_evaluation  # noqa: E402
from grood.resources import configure_threads  # noqa: E402

log = logging.getLogger("grood.run")


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    configure_threads()
    config = OmegaConf.to_container(cfg, resolve=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    tables = run_evaluation(config, output_dir)
    for method, table in tables.items():
        log.info("%s on %s:\n%s", method, config["dataset"]["name"], table.round(2).to_string())
    log.info("results written under %s", output_dir)
    first = next(iter(tables.values()), None)
    return None if first is None or "farood" not in first.index else float(first.loc["farood", "AUROC"])


if __name__ == "__main__":
    main()

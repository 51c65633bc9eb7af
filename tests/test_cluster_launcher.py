"""The cluster path, exercised: a multirun through Hydra's submitit launcher (``hydra/launcher=submitit_local``,
the same plugin and job function as ``submitit_slurm``, run as local processes) gives the same results
folders and numbers as Hydra's basic launcher. The SLURM configuration differs from this tested one only in
its launcher name (configs/hydra/launcher/submitit_slurm.yaml).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _multirun(root: Path, cache: Path, results: Path, checkpoint: Path, *launcher: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/run.py", "-m", *launcher, "dataset=cifar10_smoke", "method=msp,ebo",
               "device=cpu", "progress=false", "num_workers=0", "batch_size=256", f"paths.data_root={root}",
               f"paths.cache_dir={cache}", f"paths.results_dir={results}", f"dataset.checkpoint={checkpoint}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


def _run_folders(results: Path) -> dict[str, Path]:
    return {str(path.parent.relative_to(results)): path.parent for path in results.rglob("run.json")}


@pytest.mark.slow
def test_submitit_local_multirun_matches_the_basic_launcher(tiny_root, tmp_path, resnet20_checkpoint):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the dev extra installs it: a failure, not a skip)

    basic = _multirun(tiny_root, tmp_path / "cache_basic", tmp_path / "basic", resnet20_checkpoint)
    assert basic.returncode == 0, basic.stderr[-3000:]
    submitit = _multirun(tiny_root, tmp_path / "cache_submitit", tmp_path / "submitit", resnet20_checkpoint,
                         "hydra/launcher=submitit_local")
    assert submitit.returncode == 0, submitit.stderr[-3000:]
    assert list((tmp_path / "submitit").rglob(".submitit")), "the submitit launcher did not run the jobs"
    folders_basic, folders_submitit = _run_folders(tmp_path / "basic"), _run_folders(tmp_path / "submitit")
    assert len(folders_basic) == 2 and sorted(folders_basic) == sorted(folders_submitit)
    for name, folder in folders_basic.items():
        assert {"msp", "ebo"} & set(Path(name).parts)
        pd.testing.assert_frame_equal(pd.read_csv(folder / "metrics.csv", index_col=0),
                                      pd.read_csv(folders_submitit[name] / "metrics.csv", index_col=0))


def test_a_composed_config_survives_pickling_as_submitit_ships_it():
    """submitit sends the job's config to the job process with cloudpickle: the generated schema types must
    come back as the same types (else validate reports every group as set by hand)."""
    import pickle

    import cloudpickle

    from grood.config import hydra_compose, validate

    for overrides in (["method=msp"], ["method=knn", "method.params.k=3"], []):
        cfg = hydra_compose(["experiment=smoke", *overrides])
        for module in (pickle, cloudpickle):
            assert validate(module.loads(module.dumps(cfg))) == validate(cfg)

"""Feature extraction shared by several processes (grood.shared_extraction): two torchrun ranks (gloo, CPU), or
two tasks of an array job through Hydra's submitit launcher, give the very cache entries and numbers of one
process, on real smoke images and the full pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grood.config import ConfigError, compose_run_config
from grood.shared_extraction import start_sharing

REPO = Path(__file__).resolve().parents[1]
#: 16-image batches, one per shard: the 1/20 smoke root's splits have 1 to 16 shards each
SETTINGS = ["dataset=cifar10_smoke", "method=grood", "device=cpu", "progress=false", "num_workers=0", "batch_size=16",
            "cache.shard_batches=1"]


def _command(root: Path, cache: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["scripts/run.py", *SETTINGS, f"paths.data_root={root}", f"paths.cache_dir={cache}",
            f"paths.results_dir={out}", f"dataset.checkpoint={checkpoint}", f"hydra.run.dir={out}/run", *extra]


def _run(args: list[str], threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    completed = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return completed


def _entries(cache: Path) -> dict[str, Path]:
    return {path.parent.name: path.parent for path in cache.glob("*/entry.json")}


def _workers(entry: Path) -> set[str]:
    return {json.loads(path.read_text())["worker"] for path in (entry / "shards").glob("*.json")}


def _assert_same_cache(got: Path, expected: Path) -> set[str]:
    """Every entry of ``expected`` is in ``got`` with equal arrays; returns the workers that wrote ``got``."""
    entries, reference = _entries(got), _entries(expected)
    assert sorted(entries) == sorted(reference) and len(reference) >= 6
    workers: set[str] = set()
    for key, folder in reference.items():
        for path in [*folder.glob("*.npy"), *(folder / "shards").glob("*.npy")]:
            other = entries[key] / path.relative_to(folder)
            assert np.array_equal(np.load(path, allow_pickle=False), np.load(other, allow_pickle=False)), other
        workers |= _workers(entries[key])
    return workers


def _metrics(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "run" / "metrics.csv", index_col=0)


@pytest.fixture(scope="module")
def one_process(smoke_data_root, resnet20_checkpoint, tmp_path_factory):
    """(cache, results) of one process on a 1/20 copy of the smoke root."""
    from conftest import copy_tiny_root

    base = tmp_path_factory.mktemp("shared")
    root = copy_tiny_root(smoke_data_root, base / "root")
    _run(_command(root, base / "cache_one", base / "one", resnet20_checkpoint))
    return root, base / "cache_one", base / "one"


@pytest.mark.slow
def test_two_torchrun_ranks_extract_what_one_process_does(one_process, resnet20_checkpoint, tmp_path):
    root, cache_one, out_one = one_process
    cache, out = tmp_path / "cache", tmp_path / "out"
    completed = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      *_command(root, cache, out, resnet20_checkpoint)])
    assert _assert_same_cache(cache, cache_one) == {"job 0 of 2", "job 1 of 2"}
    pd.testing.assert_frame_equal(_metrics(out), _metrics(out_one))
    assert json.loads((out / "run" / "run.json").read_text())["status"] == "ok"
    assert "every rank's shards are in the feature cache" in completed.stderr + completed.stdout


@pytest.mark.slow
def test_an_array_job_through_submitit_extracts_what_one_process_does(one_process, resnet20_checkpoint, tmp_path):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the dev extra installs it: a failure, not a skip)

    root, cache_one, out_one = one_process
    cache, out = tmp_path / "cache", tmp_path / "out"
    array = _command(root, cache, tmp_path / "array", resnet20_checkpoint)[:-1]  # no hydra.run.dir in a multirun
    _run([array[0], "-m", "hydra/launcher=submitit_local", *array[1:], "extract.only=true", "extract.num_jobs=2",
          "extract.job_index=0,1"])
    assert list((tmp_path / "array").rglob(".submitit")), "the submitit launcher did not run the jobs"
    assert not list((tmp_path / "array").rglob("metrics.csv"))  # extract.only: no method ran
    assert _assert_same_cache(cache, cache_one) == {"job 0 of 2", "job 1 of 2"}
    evaluation = _run(_command(root, cache, out, resnet20_checkpoint))
    assert "[shard" not in evaluation.stderr + evaluation.stdout  # every split read from the cache
    pd.testing.assert_frame_equal(_metrics(out), _metrics(out_one))


def test_extract_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"extract.job_index=2: must be below num_jobs=2"):
        compose_run_config(["extract.only=true", "extract.num_jobs=2", "extract.job_index=2"])
    with pytest.raises(ConfigError, match=r"extract.num_jobs=2: .* set extract.only=true"):
        compose_run_config(["extract.num_jobs=2"])
    config = compose_run_config(["extract.only=true", "extract.num_jobs=3", "extract.job_index=1"])
    sharing = start_sharing(config)
    assert (sharing.jobs.index, sharing.jobs.count, sharing.evaluates, sharing.distributed) == (1, 3, False, False)
    assert start_sharing(compose_run_config([])) is None


def test_torchrun_and_extract_jobs_are_not_combined(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="under torchrun: the ranks share the shards already"):
        start_sharing(compose_run_config(["extract.only=true", "extract.num_jobs=2", "extract.job_index=0"]))


def test_a_shared_extraction_extracts_only_the_splits_the_methods_read():
    from grood.shared_extraction import splits_read

    splits = ["train", "val", "test", "tin", "mnist", "val_ood:tin", "corrupted_val"]
    assert splits_read(compose_run_config(["method=grood"]), splits) == ["train", "test", "tin", "mnist"]
    assert splits_read(compose_run_config(["method=grood", "prototype=val_ood"]), splits) == [
        "train", "test", "tin", "mnist", "val_ood:tin"]
    assert splits_read(compose_run_config(["method=react", "aps=false"]), splits) == ["train", "val", "test", "tin",
                                                                                      "mnist"]
    assert splits_read(compose_run_config(["method=all"]), splits) == splits[:-1]

"""Shared pytest fixtures. The real smoke data lives outside the repository (never committed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("GROOD_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or ``$GROOD_SHARED_DIR``): the smoke data root and the ResNet-20 checkpoint.

    Fails (does not skip) when absent: CI always provides it, and a missing copy is a setup error.
    """
    path = _shared_dir()
    if not (path / "data" / "openood_cifar10_smoke").is_dir():
        pytest.fail(
            f"shared data not found at {path}/data/openood_cifar10_smoke; set GROOD_SHARED_DIR to the folder "
            "holding data/openood_cifar10_smoke and checkpoints/cifar10_resnet20_akamaster.th"
        )
    return path


@pytest.fixture(scope="session")
def smoke_data_root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "openood_cifar10_smoke"


@pytest.fixture(scope="session")
def resnet20_checkpoint(shared_dir: Path) -> Path:
    return shared_dir / "checkpoints" / "cifar10_resnet20_akamaster.th"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_config(smoke_data_root: Path, resnet20_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """``smoke_config(*overrides, cache_dir=None)``: the validated :class:`grood.config.RunConfig` of
    ``experiment=smoke`` on the real smoke data, CPU, no progress bars, one shared feature cache per session
    (``cache_dir``: another one)."""
    from grood.config import compose_run_config

    shared_cache = tmp_path_factory.mktemp("feature_cache")

    def make(*overrides: str, cache_dir: Path | None = None):
        return compose_run_config([
            "experiment=smoke", "device=cpu", "progress=false", "batch_size=500", "experiment_name=test",
            f"paths.data_root={smoke_data_root}", f"dataset.checkpoint={resnet20_checkpoint}",
            f"paths.cache_dir={cache_dir or shared_cache}", *overrides,
        ])

    return make


def copy_tiny_root(smoke_data_root: Path, target: Path, every: int = 20) -> Path:
    """Every ``every``-th line of each smoke list, with those images *copied* (so a test may change them):
    a data root in the smoke benchmark's layout whose forward pass takes seconds."""
    import shutil

    lists = target / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    for path in sorted((smoke_data_root / "benchmark_imglist" / "cifar10").glob("*.txt")):
        lines = path.read_text().splitlines(keepends=True)[::every]
        (lists / path.name).write_text("".join(lines))
        for line in lines:
            relative = line.split()[0]
            destination = target / "images_classic" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(smoke_data_root / "images_classic" / relative, destination)
    return target


@pytest.fixture()
def tiny_root(smoke_data_root: Path, tmp_path: Path) -> Path:
    """A fresh copy of a 1/20 subset of the smoke data root (see :func:`copy_tiny_root`)."""
    return copy_tiny_root(smoke_data_root, tmp_path / "tiny_root")

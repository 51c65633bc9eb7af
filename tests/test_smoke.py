"""The CI smoke run: every method on the shared CIFAR-10 smoke benchmark (real images, ResNet-20).

``make smoke`` runs ``scripts/run.py $(SMOKE_RUN)`` into ``results/smoke`` and then these tests with
``GROOD_SMOKE_RESULTS=results/smoke`` and ``GROOD_SMOKE_ARGS`` (the same overrides, to find the run's folder
by its config hash); run alone (``pytest -m smoke``) they run it themselves.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from grood.config import compose_run_config, config_hash, to_plain
from grood.detectors import DETECTORS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.smoke

#: README.md, "Reproducing the paper's tables and figures": near / far AUROC on the smoke benchmark.
README_AUROCS = {"grood": (73.47, 90.93), "knn": (79.74, 95.69)}
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def smoke_run_dir(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    given = os.environ.get("GROOD_SMOKE_RESULTS")
    if given:
        args = shlex.split(os.environ["GROOD_SMOKE_ARGS"])
    else:
        results = tmp_path_factory.mktemp("smoke")
        args = ["experiment=smoke", "progress=false", f"paths.results_dir={results}",
                f"paths.data_root={shared_dir / 'data' / 'openood_cifar10_smoke'}"]
        env = {**os.environ, "GROOD_SHARED_DIR": str(shared_dir)}
        subprocess.run([sys.executable, "scripts/run.py", *args], cwd=REPO, env=env, check=True)
    config = compose_run_config(args)
    return (Path(config.paths.results_dir) / "smoke" / "cifar10_smoke" / "all"
            / f"seed0-{config_hash(to_plain(config))}")


def test_every_method_wrote_parseable_outputs(smoke_run_dir: Path) -> None:
    summary = json.loads((smoke_run_dir / "summary.json").read_text())
    assert {name: entry["status"] for name, entry in summary["methods"].items()} == {m: "ok" for m in DETECTORS}
    for method in DETECTORS:
        folder = smoke_run_dir / method
        table = pd.read_csv(folder / "metrics.csv", index_col="dataset")
        assert list(table.columns) == ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"], method
        assert list(table.index) == ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood"], method
        assert table.notna().all().all(), method
        run = json.loads((folder / "run.json").read_text())
        assert run["method"] == method and run["benchmark"] == "cifar10_smoke"
        assert run["checkpoint_sha256"].startswith("12fca82f")
        assert {"torch", "python"} <= set(run["versions"])
        assert run["input_normalisation"]["mean"] == [0.485, 0.456, 0.406]  # the ResNet-20's statistics
        json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("method", sorted(README_AUROCS))
def test_the_readme_numbers(smoke_run_dir: Path, method: str) -> None:
    table = pd.read_csv(smoke_run_dir / method / "metrics.csv", index_col="dataset")
    near, far = README_AUROCS[method]
    assert abs(table.loc["nearood", "AUROC"] - near) <= TOLERANCE
    assert abs(table.loc["farood", "AUROC"] - far) <= TOLERANCE


def test_grood_on_the_smoke_benchmark(smoke_run_dir: Path) -> None:
    table = pd.read_csv(smoke_run_dir / "grood" / "metrics.csv", index_col="dataset")
    # the ResNet-20 reaches about 81% on the JPEG-compressed CIFAR-10 test images
    assert 75.0 < table.loc["farood", "ACC"] < 90.0
    run = json.loads((smoke_run_dir / "grood" / "run.json").read_text())
    assert run["ncp_accuracy"] > 70.0

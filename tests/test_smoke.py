"""The CI smoke run: every method on the shared CIFAR-10 smoke benchmark (real images, ResNet-20).

``make smoke`` runs ``scripts/run.py experiment=smoke`` into ``results/smoke`` and then these tests with
``GROOD_SMOKE_RESULTS=results/smoke/smoke``; run alone (``pytest -m smoke``) they run it themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from grood.detectors import DETECTORS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    given = os.environ.get("GROOD_SMOKE_RESULTS")
    if given:
        return Path(given)
    results = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "GROOD_SHARED_DIR": str(shared_dir)}
    subprocess.run(
        [sys.executable, "scripts/run.py", "experiment=smoke", "progress=false", f"paths.results_dir={results}"],
        cwd=REPO, env=env, check=True,
    )
    return results / "smoke"


def _method_dir(results: Path, method: str) -> Path:
    return results / "cifar10_smoke" / "all" / "seed0" / method


def test_every_method_wrote_parseable_outputs(smoke_results: Path) -> None:
    for method in DETECTORS:
        folder = _method_dir(smoke_results, method)
        table = pd.read_csv(folder / "metrics.csv", index_col="dataset")
        assert list(table.columns) == ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"], method
        assert list(table.index) == ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood"], method
        assert table.notna().all().all(), method
        run = json.loads((folder / "run.json").read_text())
        assert run["method"] == method and run["benchmark"] == "cifar10_smoke"
        assert run["checkpoint_sha256"].startswith("12fca82f")
        assert {"torch", "python"} <= set(run["versions"])
        json.loads((folder / "metrics.json").read_text())


def test_grood_detects_far_ood_on_the_smoke_benchmark(smoke_results: Path) -> None:
    table = pd.read_csv(_method_dir(smoke_results, "grood") / "metrics.csv", index_col="dataset")
    assert table.loc["farood", "AUROC"] > 85.0
    assert table.loc["nearood", "AUROC"] > 60.0
    # the ResNet-20 reaches about 81% on the JPEG-compressed CIFAR-10 test images
    assert 75.0 < table.loc["farood", "ACC"] < 90.0
    run = json.loads((_method_dir(smoke_results, "grood") / "run.json").read_text())
    assert run["ncp_accuracy"] > 70.0

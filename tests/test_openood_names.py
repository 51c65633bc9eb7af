"""OpenOOD's names and formats: its parameter names only at the boundary (the leaderboard), and
``make leaderboard``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import dataclasses

from grood.config import ConfigError, compose_run_config
from grood.config.schema import component_schemas
from grood.pipeline import MethodsFailedError, run_evaluation
from grood.reporting.leaderboard import COLUMNS, OPENOOD_PARAM_NAMES, leaderboard_rows, openood_params
from grood.reporting.runs import RunFormatError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ one spelling per setting
@pytest.mark.parametrize("method, openood, grood", [("knn", "K", "k"), ("gen", "M", "m"),
                                                    ("openmax", "weibull_tail", "tail_size")])
def test_openood_parameter_names_are_not_config_keys(method, openood, grood):
    """grood's configs, run hashes and run.json spell a setting one way; OpenOOD's name is an unknown key
    whose message lists grood's."""
    with pytest.raises(ConfigError, match=rf"'method.params.{openood}' is not a setting; valid keys of "
                                          rf"method.params: .*\b{grood}\b"):
        compose_run_config(["experiment=smoke", f"method={method}", f"method.params.{openood}=5"], check=False)
    assert openood not in {f.name for f in dataclasses.fields(component_schemas("method")[method])}


def test_leaderboard_translates_to_openood_names():
    assert set(OPENOOD_PARAM_NAMES) <= set(component_schemas("method"))
    for method, names in OPENOOD_PARAM_NAMES.items():
        assert set(names) <= {f.name for f in dataclasses.fields(component_schemas("method")[method])}, method
    assert openood_params("knn", {"k": 50, "chunk_rows": 10}) == {"K": 50, "chunk_rows": 10}
    assert openood_params("openmax", {"tail_size": 15, "alpha": 2}) == {"weibull_tail": 15, "weibull_alpha": 2}


# ------------------------------------------------------------------------ leaderboard
def _tiny(root: Path, cache: Path, checkpoint: Path, *overrides: str):
    return compose_run_config(["dataset=cifar10_smoke", "device=cpu", "progress=false", "num_workers=0",
                               "batch_size=256", "aps=false", f"paths.data_root={root}", f"paths.cache_dir={cache}",
                               f"dataset.checkpoint={checkpoint}", *overrides])


def test_leaderboard_prints_one_entry_per_method(tiny_root, tmp_path, resnet20_checkpoint):
    out = tmp_path / "all"
    config = _tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint, "method=all")
    with pytest.raises(MethodsFailedError):  # ViM's default dim 256 exceeds the ResNet-20's 64 features
        run_evaluation(config, out)
    summary = json.loads((out / "summary.json").read_text())["methods"]
    rows = leaderboard_rows(out)
    assert list(rows.columns) == COLUMNS
    assert len(rows) == len(summary) and rows["Postprocessor"].tolist()[:3] == ["GROOD", "OpenMax", "MSP"]
    knn = rows[rows["Postprocessor"] == "KNN"].iloc[0]
    metrics = pd.read_csv(out / "knn" / "metrics.csv", index_col=0)
    assert knn["Near-OOD AUROC"] == pytest.approx(metrics.loc["nearood", "AUROC"])
    assert knn["Far-OOD AUROC"] == pytest.approx(metrics.loc["farood", "AUROC"])
    assert knn["ID Accuracy"] == pytest.approx(json.loads((out / "knn" / "run.json").read_text())["id_accuracy"])
    assert knn["Model Arch."] == "ResNet20" and knn["Outlier Data"] == "No" and knn["Training"] == "CrossEntropy"
    vim = rows[rows["Postprocessor"] == "ViM"].iloc[0]
    assert "FAILED" in vim["Additional Description"] and pd.isna(vim["Near-OOD AUROC"])
    # the script and the make target print it as a markdown table
    result = subprocess.run([sys.executable, "scripts/leaderboard.py", str(out / "knn")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |" and len(lines) == 3
    assert f"| {metrics.loc['nearood', 'AUROC']:.2f} | {metrics.loc['farood', 'AUROC']:.2f} |" in lines[2]
    venv = tmp_path / "venv"  # a VENV whose install marker is newer than pyproject.toml: `setup` does nothing
    venv.mkdir()
    (venv / ".installed").touch()
    result = subprocess.run(["make", "-s", "leaderboard", f"RUN={out}", f"VENV={venv}", f"PY={sys.executable}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2 + len(summary)


def test_leaderboard_of_a_folder_without_results_names_it(tmp_path):
    with pytest.raises(RunFormatError, match=rf"{tmp_path}: neither run.json .* nor summary.json"):
        leaderboard_rows(tmp_path)
    result = subprocess.run([sys.executable, "scripts/leaderboard.py", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "neither run.json" in result.stderr

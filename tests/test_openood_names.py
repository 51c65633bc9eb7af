"""OpenOOD's names and formats: its parameter names as aliases, and ``make leaderboard``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from grood.config import ConfigError, compose_run_config, config_hash, hydra_compose, to_plain
from grood.config.schema import METHOD_PARAMS, PARAM_ALIASES
from grood.pipeline import MethodsFailedError, method_list, run_evaluation
from grood.reporting.leaderboard import COLUMNS, leaderboard_rows
from grood.reporting.runs import RunFormatError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ aliases
@pytest.mark.parametrize("method, alias, canonical, value", [("knn", "K", "k", 50), ("gen", "M", "m", 10),
                                                              ("openmax", "weibull_tail", "tail_size", 15)])
def test_openood_parameter_name_works_and_grood_name_is_recorded(method, alias, canonical, value):
    openood = compose_run_config(["experiment=smoke", f"method={method}", f"method.params.{alias}={value}"])
    ours = compose_run_config(["experiment=smoke", f"method={method}", f"method.params.{canonical}={value}"])
    assert method_list(openood.method) == [(method, {canonical: value})] == method_list(ours.method)
    assert getattr(openood.method.params, alias) is None
    assert config_hash(to_plain(openood)) == config_hash(to_plain(ours))
    # the results folder (Hydra's run dir, hashed before validation) is the same too
    dirs = [hydra_compose(["experiment=smoke", f"method={method}", f"method.params.{k}={value}"],
                          return_hydra_config=True).hydra.run.dir for k in (alias, canonical)]
    assert dirs[0] == dirs[1]


def test_alias_and_canonical_name_together_is_an_error():
    with pytest.raises(ConfigError, match=r"method.params.K=50 and method.params.k=3: 'K' is OpenOOD's name for "
                                          r"'k'; set only one of them"):
        compose_run_config(["experiment=smoke", "method=knn", "method.params.K=50", "method.params.k=3"])
    with pytest.raises(ConfigError, match=r"method.params.gen.M=5 and method.params.gen.m=7"):
        compose_run_config(["experiment=smoke", "method.params.gen.M=5", "method.params.gen.m=7"])
    all_methods = compose_run_config(["experiment=smoke", "method.params.knn.K=7"])
    assert dict(method_list(all_methods.method))["knn"] == {"k": 7}


def test_alias_values_are_checked_like_the_canonical_ones():
    with pytest.raises(ConfigError, match=r"method.params"):
        compose_run_config(["experiment=smoke", "method=knn", "method.params.K=0"])


def test_every_alias_names_a_parameter_of_its_method():
    import dataclasses

    for method, aliases in PARAM_ALIASES.items():
        names = {f.name for f in dataclasses.fields(METHOD_PARAMS[method])}
        assert set(aliases) | set(aliases.values()) <= names, method


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

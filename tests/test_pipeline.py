"""The evaluation pipeline on the real smoke benchmark: prototype strategies, oracles, results folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from grood.pipeline import run_evaluation


@pytest.mark.parametrize("strategy", ["val_ood", "mean", "local_oracle", "global_oracle"])
def test_grood_with_each_cached_feature_strategy(smoke_config, strategy: str, tmp_path: Path) -> None:
    config = smoke_config("method=grood", f"prototype={strategy}")
    table = run_evaluation(config, tmp_path)["grood"]
    assert list(table.index) == ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood"]
    assert table.notna().all().all()
    assert table.loc["farood", "AUROC"] > 75.0
    scores = torch.load(tmp_path / "scores.pt", weights_only=True)
    if "oracle" in strategy:  # 100 images of each OOD set build prototypes and are held out of the scores
        assert {name: len(s) for name, s in scores["ood"].items()} == {
            "tin": 900, "mnist": 900, "fashionmnist": 900, "texture": 900}
        assert set(scores["id"]) == {"tin", "mnist", "fashionmnist", "texture"}
    else:
        assert len(scores["id"]) == 2000 and all(len(s) == 1000 for s in scores["ood"].values())
        timings = json.loads((tmp_path / "run.json").read_text())["timings_s"]
        assert 0.0 <= timings["prototype:grood"] <= timings["method:grood"]  # the prototype's share, on its own


def test_a_run_folder_says_what_produced_it(smoke_config, tmp_path: Path) -> None:
    config = smoke_config("method=msp", "prototype=mean")
    run_evaluation(config, tmp_path)
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="dataset")
    assert list(table.columns) == ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["method"] == "msp" and run["checkpoint_sha256"].startswith("12fca82f")
    assert run["config"]["dataset"]["name"] == "cifar10_smoke"
    assert "torch" in run["versions"] and "git_commit" in run
    assert run["groups"] == {"near": ["tin"], "far": ["mnist", "fashionmnist", "texture"]}
    assert json.loads((tmp_path / "metrics.json").read_text())["table"][0]["dataset"] == "tin"


def test_missing_checkpoint_names_the_key_and_the_command(smoke_config, tmp_path: Path) -> None:
    config = smoke_config("method=msp", f"dataset.checkpoint={tmp_path / 'nope.ckpt'}")
    with pytest.raises(FileNotFoundError, match=r"dataset.checkpoint.*make checkpoints"):
        run_evaluation(config, tmp_path)

"""OpenOOD's automatic parameter search (grood.aps) and its use by the pipeline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grood.aps import APSError, search_parameters, search_space
from grood.data.benchmarks import get_benchmark
from grood.config import ConfigError
from grood.pipeline import run_evaluation

BENCHMARK = get_benchmark("cifar10_smoke")


def _scorer(quality: dict, calls: list):
    """fit_and_score whose validation AUROC rises with quality[params]; ValueError where quality is None."""

    def fit_and_score(name, params, splits):
        calls.append((name, dict(params), list(splits)))
        key = tuple(sorted(params.items()))
        if quality[key] is None:
            raise ValueError(f"bad combination {dict(params)}")
        shift = quality[key]
        scores = {splits[0]: torch.linspace(0, 1, 50) + shift}  # ID: shifted up by the quality
        scores.update({split: torch.linspace(0, 1, 20) for split in splits[1:]})
        return scores

    return fit_and_score


def test_the_best_validation_auroc_wins_and_the_first_on_ties() -> None:
    quality = {(("k", 50),): 0.1, (("k", 100),): 0.5, (("k", 200),): 0.5, (("k", 500),): 0.2, (("k", 1000),): 0.0}
    calls: list = []
    result = search_parameters("knn", {}, BENCHMARK, _scorer(quality, calls))
    assert result.chosen == {"k": 100}  # 100 and 200 tie: the first, as OpenOOD keeps it
    assert [trial["params"] for trial in result.trials] == [{"k": k} for k in (50, 100, 200, 500, 1000)]
    aurocs = [trial["auroc"] for trial in result.trials]
    assert aurocs[1] == aurocs[2] > aurocs[3] > aurocs[0] > aurocs[4]
    assert calls[0][2] == ["val", "val_ood:tin"]  # the validation lists, ID first
    record = result.record()
    assert record["searched"] == {"k": [50, 100, 200, 500, 1000]} and record["chosen"] == {"k": 100}


def test_fixed_parameters_are_not_searched() -> None:
    assert search_space("odin", {"noise": 0.0014}) == {"temperature": [1, 10, 100, 1000]}
    calls: list = []
    result = search_parameters("knn", {"k": 7}, BENCHMARK, _scorer({}, calls))
    assert result.chosen == {"k": 7} and result.trials == [] and calls == []
    # a grid of two parameters with one fixed: only the other is searched, the fixed one passed through
    quality = {(("noise", 0.0014), ("temperature", t)): float(t == 100) for t in (1, 10, 100, 1000)}
    result = search_parameters("odin", {"noise": 0.0014}, BENCHMARK, _scorer(quality, calls))
    assert result.chosen == {"noise": 0.0014, "temperature": 100}
    assert search_parameters("msp", {}, BENCHMARK, _scorer({}, calls)).trials == []  # no sweep at all


def test_rejected_combinations_are_recorded_and_all_rejected_is_an_error() -> None:
    quality = {(("dim", 256),): None, (("dim", 1000),): 0.3}
    result = search_parameters("vim", {}, BENCHMARK, _scorer(quality, []))
    assert result.chosen == {"dim": 1000}
    assert result.trials[0] == {"params": {"dim": 256}, "error": "bad combination {'dim': 256}"}
    quality = {(("dim", 256),): None, (("dim", 1000),): None}
    with pytest.raises(APSError, match=r"APS for 'vim': no combination .* \{'dim': 1000\}: bad combination"):
        search_parameters("vim", {}, BENCHMARK, _scorer(quality, []))


def test_a_benchmark_without_validation_lists_is_a_clear_error() -> None:
    no_val = dataclasses.replace(BENCHMARK, val=None, val_ood={})
    with pytest.raises(APSError, match=r"needs an ID validation list \(benchmark key 'val'\) and validation OOD"):
        search_parameters("knn", {}, no_val, _scorer({}, []))
    with pytest.raises(APSError, match="unknown detector 'nope'"):
        search_space("nope", {})


def test_pipeline_runs_aps_and_records_it(smoke_config, tmp_path: Path) -> None:
    config = smoke_config("method=knn", "prototype=mean", "aps=true")
    run_evaluation(config, tmp_path / "searched")
    run = json.loads((tmp_path / "searched" / "run.json").read_text())
    trials = run["aps"]["trials"]
    assert [trial["params"]["k"] for trial in trials] == [50, 100, 200, 500, 1000]
    best = max(trials, key=lambda trial: trial["auroc"])
    assert run["method_params"] == {"k": best["params"]["k"]} == run["aps"]["chosen"]
    assert run["aps"]["id_split"] == "val" and run["aps"]["ood_splits"] == ["val_ood:tin"]
    assert run["timings_s"]["aps:knn"] > 0
    # the user's value is kept, and nothing is searched
    fixed = smoke_config("method=knn", "prototype=mean", "method.params.k=5")
    run_evaluation(fixed, tmp_path / "fixed")
    run = json.loads((tmp_path / "fixed" / "run.json").read_text())
    assert run["method_params"] == {"k": 5} and run["aps"] is None
    # aps=false: OpenOOD's postprocessor_args default
    off = smoke_config("method=knn", "prototype=mean", "aps=false")
    run_evaluation(off, tmp_path / "off")
    assert json.loads((tmp_path / "off" / "run.json").read_text())["method_params"] == {}


def test_pipeline_aps_error_names_the_config_key(smoke_config, tmp_path: Path) -> None:
    definition = {**dataclasses.asdict(BENCHMARK), "name": "no_val", "val": None}
    config = smoke_config("method=knn")
    config = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, name="no_val",
                                                                     definition=definition))
    with pytest.raises(ConfigError, match=r"aps=true needs an ID validation list .* or run with aps=false"):
        run_evaluation(config, tmp_path / "out")

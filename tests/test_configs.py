"""Every Hydra config composes, and the pipeline reads method/params the documented way."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from grood.backbones import backbone_names
from grood.data import available_benchmarks
from grood.detectors import DETECTORS
from grood.config import ConfigError, compose_run_config, hydra_compose
from grood.config.schema import PRESETS
from grood.pipeline import method_list

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def _compose(overrides: list[str]) -> dict:
    return OmegaConf.to_container(hydra_compose(overrides), resolve=False)


def test_every_group_option_composes_and_names_a_real_thing() -> None:
    for dataset in _options("dataset"):
        config = _compose([f"dataset={dataset}"])
        assert config["dataset"]["benchmark"] in available_benchmarks(), dataset
        assert config["backbone"]["name"] in backbone_names(), dataset
    for backbone in _options("backbone"):
        assert _compose([f"backbone={backbone}"])["backbone"]["name"] == backbone
    assert set(_options("method")) == set(DETECTORS) | {"all"} | set(PRESETS)
    for method in _options("method"):
        composed = _compose([f"method={method}"])["method"]
        if method in PRESETS:  # a preset runs its method and records its own name
            assert (composed["name"], composed["preset"]) == (PRESETS[method]["method.name"], method)
        else:
            assert composed["name"] == method
    for group in ("prototype", "index", "experiment"):
        for option in _options(group):
            _compose([f"{group}={option}"])


def test_the_dataset_picks_its_backbone_and_the_command_line_wins() -> None:
    assert _compose(["dataset=imagenet"])["backbone"]["name"] == "resnet50"
    assert _compose(["dataset=imagenet", "backbone=vit_b_16"])["backbone"]["name"] == "vit_b_16"
    smoke = _compose(["experiment=smoke"])
    assert smoke["dataset"]["name"] == "cifar10_smoke" and smoke["method"]["name"] == "all"
    assert smoke["experiment_name"] == "smoke"


def test_method_list_handles_all_single_and_per_method_params() -> None:
    everything = method_list(compose_run_config(["method=all", "method.params.vim.dim=32"]).method)
    assert everything[0] == ("grood", {"k": 1, "fit_on": "all", "variant": "grood"}) and ("vim", {"dim": 32}) in everything
    assert len(everything) == len(DETECTORS)
    assert method_list(compose_run_config(["method=vim", "method.params.dim=32"]).method) == [("vim", {"dim": 32})]
    assert method_list(compose_run_config(["method=knn"]).method) == [("knn", {})]  # unset: OpenOOD's / APS's
    with pytest.raises(ConfigError, match=r"Could not find 'method/foo'"):
        compose_run_config(["method=foo"])
    with pytest.raises(ConfigError, match=r"valid keys of method.params: grood, openmax, msp"):
        compose_run_config(["method=all", "method.params.k=3"])

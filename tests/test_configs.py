"""Every Hydra config composes, and the pipeline reads method/params the documented way."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grood.backbones import backbone_names
from grood.data import available_benchmarks
from grood.detectors import DETECTORS
from grood.pipeline import ConfigError, method_list

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def _compose(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def test_every_group_option_composes_and_names_a_real_thing() -> None:
    for dataset in _options("dataset"):
        config = _compose([f"dataset={dataset}"])
        assert config["dataset"]["benchmark"] in available_benchmarks(), dataset
        assert config["backbone"]["name"] in backbone_names(), dataset
    for backbone in _options("backbone"):
        assert _compose([f"backbone={backbone}"])["backbone"]["name"] == backbone
    assert set(_options("method")) == set(DETECTORS) | {"all"}
    for method in _options("method"):
        assert _compose([f"method={method}"])["method"]["name"] == method
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
    everything = method_list({"name": "all", "params": {"vim": {"dim": 32}}})
    assert everything[0] == ("grood", {}) and ("vim", {"dim": 32}) in everything
    assert len(everything) == len(DETECTORS)
    assert method_list({"name": "vim", "params": {"vim": {"dim": 32}}}) == [("vim", {"dim": 32})]
    assert method_list({"name": "grood", "params": {"k": 3, "vim": {"dim": 32}}}) == [("grood", {"k": 3})]
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        method_list({"name": "foo"})
    with pytest.raises(ConfigError, match="per-method params"):
        method_list({"name": "all", "params": {"k": 3}})

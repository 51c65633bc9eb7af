"""``backbone=module``: any importable network factory from config, split by layer name (issue 11 part 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from grood import features as features_module
from grood.backbones import build_backbone
from grood.config import ConfigError, compose_run_config
from grood.pipeline import RunInputError, prepare_run, run_evaluation

RESNET18 = ["backbone=module", "backbone.target=torchvision.models.resnet18", "backbone.early_layer=layer1",
            "backbone.feature_layer=avgpool", "backbone.head_layer=fc"]


@pytest.fixture()
def resnet18_checkpoint(tmp_path: Path) -> Path:
    """A torchvision resnet18 with 10 classes and random weights, saved as a plain state dict."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18_10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def _config(root: Path, cache: Path, checkpoint: Path, *overrides: str):
    return compose_run_config(["dataset=cifar10_smoke", "method=grood", "device=cpu", "progress=false",
                               "num_workers=0", "batch_size=128", f"paths.data_root={root}",
                               f"paths.cache_dir={cache}", f"dataset.checkpoint={checkpoint}", *overrides])


def test_a_torchvision_factory_runs_end_to_end(tiny_root, tmp_path, resnet18_checkpoint):
    config = _config(tiny_root, tmp_path / "cache", resnet18_checkpoint, *RESNET18, "+backbone.kwargs.num_classes=10")
    table = run_evaluation(config, tmp_path / "out")["grood"]
    assert list(table.index) == ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood"]
    assert table.notna().all().all() and ((table["AUROC"] >= 0) & (table["AUROC"] <= 100)).all()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["backbone"]["target"] == "torchvision.models.resnet18"
    assert run["backbone"]["kwargs"] == {"num_classes": 10}
    # the checkpoint was loaded: the network's weights are the file's
    network = prepare_run(config).network
    saved = torch.load(resnet18_checkpoint, weights_only=True)
    torch.testing.assert_close(network.model.fc.weight, saved["fc.weight"])


def test_a_bad_layer_name_fails_before_any_forward_pass_listing_the_valid_names(
        tiny_root, tmp_path, resnet18_checkpoint, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran although the backbone cannot be split")

    monkeypatch.setattr(features_module, "forward_pass", forbidden)
    config = _config(tiny_root, tmp_path / "cache", resnet18_checkpoint, *RESNET18, "backbone.early_layer=layer9",
                     "+backbone.kwargs.num_classes=10")
    with pytest.raises(RunInputError, match=r"early_layer.*'layer9'.*layer1.*layer2.*avgpool.*fc"):
        run_evaluation(config, tmp_path / "out")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))
    # a head whose class count is not the benchmark's: the fix is named
    config = _config(tiny_root, tmp_path / "cache", resnet18_checkpoint, *RESNET18)
    with pytest.raises(RunInputError, match=r"fc.*does not fit|num_classes"):
        run_evaluation(config, tmp_path / "out")


def test_the_module_keys_are_checked_when_composed():
    with pytest.raises(ConfigError, match=r"backbone.target=None: backbone=module needs it"):
        compose_run_config(["backbone=module", "backbone.early_layer=layer1", "backbone.head_layer=fc"])
    with pytest.raises(ConfigError, match=r"backbone.early_layer='layer1': read only by backbone=module"):
        compose_run_config(["backbone.early_layer=layer1"])
    with pytest.raises(ConfigError, match=r"\+backbone.kwargs.num_classes=<value>"):
        compose_run_config([*RESNET18, "backbone.kwargs.num_classes=10"])
    with pytest.raises(ConfigError, match=r"backbone.split_block=1: not read by backbone=module"):
        compose_run_config([*RESNET18, "backbone.split_block=1"])


def test_build_backbone_module_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"cannot import module 'torchvision.nope'"):
        build_backbone("module", target="torchvision.nope.resnet18", early_layer="layer1", head_layer="fc")
    with pytest.raises(ValueError, match=r"kwargs=\{'classes': 10\}"):
        build_backbone("module", target="torchvision.models.resnet18", early_layer="layer1", head_layer="fc",
                       kwargs={"classes": 10})
    with pytest.raises(ValueError, match=r"1000 outputs but the benchmark has 10 classes.*kwargs.num_classes=10"):
        build_backbone("module", num_classes=10, target="torchvision.models.resnet18", early_layer="layer1",
                       feature_layer="avgpool", head_layer="fc")
    network = build_backbone("module", num_classes=10, target="torchvision.models.resnet18", early_layer="layer1",
                             feature_layer="avgpool", head_layer="fc", kwargs={"num_classes": 10}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(network.head(network.mid(network.early(x))), network.model(x))

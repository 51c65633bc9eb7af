"""GROOD's network-built OOD prototype (mixup, eq. 9) is cached like the features: a second run with the same
settings makes no network pass at all, and ``run.json`` says whether it was computed or reused."""

from __future__ import annotations

import json

import torch

from grood.backbones.base import SplitNetwork
from grood.config import compose_run_config
from grood.pipeline import run_evaluation


def _config(root, cache, checkpoint, *overrides):
    return compose_run_config(["dataset=cifar10_smoke", "method=grood", "device=cpu", "progress=false",
                               "num_workers=0", f"paths.data_root={root}", f"paths.cache_dir={cache}",
                               f"dataset.checkpoint={checkpoint}", *overrides])


def test_a_second_grood_run_makes_no_network_pass(tiny_root, tmp_path, resnet20_checkpoint, monkeypatch):
    cache = tmp_path / "cache"
    first = run_evaluation(_config(tiny_root, cache, resnet20_checkpoint), tmp_path / "first")["grood"]
    record = json.loads((tmp_path / "first" / "run.json").read_text())
    assert record["ood_prototype"]["source"] == "computed" and record["ood_prototype"]["network_pass"]
    assert record["ood_prototype"]["seconds"] > 0

    batches: list[int] = []
    original = SplitNetwork.mid

    def counting_mid(self, h_early: torch.Tensor) -> torch.Tensor:
        batches.append(int(h_early.shape[0]))
        return original(self, h_early)

    monkeypatch.setattr(SplitNetwork, "mid", counting_mid)
    second = run_evaluation(_config(tiny_root, cache, resnet20_checkpoint), tmp_path / "second")["grood"]
    assert batches == [1]  # only the one-input probe of the feature dimension: no pass over any images
    assert second.equals(first)
    record = json.loads((tmp_path / "second" / "run.json").read_text())
    assert record["ood_prototype"]["source"] == "cache" and not record["ood_prototype"]["network_pass"]

    batches.clear()  # another lambda is another prototype: computed again
    run_evaluation(_config(tiny_root, cache, resnet20_checkpoint, "prototype.mixup_lambda=0.3"), tmp_path / "third")
    assert max(batches) > 1
    record = json.loads((tmp_path / "third" / "run.json").read_text())
    assert record["ood_prototype"]["source"] == "computed"

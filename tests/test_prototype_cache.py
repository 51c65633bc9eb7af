"""GROOD's network-built OOD prototype (mixup, eq. 9) is cached like the features: a second run with the same
settings makes no network pass at all, and ``run.json`` says whether it was computed or reused."""

from __future__ import annotations

import json

import pytest
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


def test_the_prototype_cache_is_npy_with_a_checksum_and_never_loads_torch_files(tmp_path, monkeypatch, caplog):
    import logging

    import numpy as np

    from grood.features import FeatureCache

    cache = FeatureCache(tmp_path)
    prototype = torch.linspace(-1.0, 1.0, 64)
    path = cache.save_prototype("k1", prototype, {"strategy": "mixup"})
    assert path.suffix == ".npy" and np.load(path, allow_pickle=False).dtype == np.float32
    assert torch.equal(cache.load_prototype("k1"), prototype)

    data = bytearray(path.read_bytes())  # one value overwritten in place, same size
    data[-4:] = np.float32(5.0).tobytes()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="grood.features"):
        assert cache.load_prototype("k1") is None
    assert f"prototype cache entry {path} does not match its sha256 checksum" in caplog.text

    torch.save({"prototype": prototype}, tmp_path / "prototypes" / "k2.pt")  # the old format
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a torch file was loaded from the cache"))
    with caplog.at_level(logging.WARNING, logger="grood.features"):
        assert cache.load_prototype("k2") is None
    assert "k2.pt is a cache entry of the old torch format: it is never loaded" in caplog.text

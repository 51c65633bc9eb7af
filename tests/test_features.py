"""The one forward pass and its cache: reuse, crash safety, early-layer class sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from grood.features import FeatureCache, SplitOutputs, cache_key, extract_split, forward_pass
from grood.featureset import FeatureSet


class TinySplitNet(nn.Module):
    """A 3-part network with the split interface: early (conv maps) -> mid (pooled) -> head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc_mid = nn.Linear(4, 6)
        self.fc = nn.Linear(6, num_classes)
        self.calls = 0

    def early(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.relu(self.conv(x))

    def mid(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc_mid(h.mean(dim=(2, 3))))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.early(x)))


class ExplodingNet(TinySplitNet):
    def early(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the network must not run when the cache holds the entry")


def _dataset(n: int = 20, num_classes: int = 3) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 8, 8, generator=generator)
    labels = torch.arange(n) % num_classes
    return TensorDataset(images, labels)


def test_forward_pass_matches_network_and_accumulates_early_means() -> None:
    network = TinySplitNet()
    dataset = _dataset()
    loader = torch.utils.data.DataLoader(dataset, batch_size=7)
    outputs = forward_pass(network, loader, num_classes=3, accumulate_early=True, progress=False)
    images, labels = dataset.tensors
    with torch.no_grad():
        expected_logits = network(images)
        early = network.early(images)
    assert torch.allclose(outputs.features.logits, expected_logits, atol=1e-6)
    assert torch.equal(outputs.features.labels, labels)
    expected_prototypes = torch.stack([early[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(outputs.early_prototypes(), expected_prototypes, atol=1e-5)


def test_second_run_with_same_key_does_not_touch_the_network(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    parts = {"checkpoint": "abc", "list": "def", "split": "test"}
    first = extract_split(TinySplitNet(), _dataset(), cache=cache, key_parts=parts, progress=False)
    second = extract_split(ExplodingNet(), _dataset(), cache=cache, key_parts=parts, progress=False)
    assert torch.equal(first.features.features, second.features.features)
    # a different key (e.g. another checkpoint hash) recomputes
    with pytest.raises(AssertionError, match="must not run"):
        extract_split(ExplodingNet(), _dataset(), cache=cache, key_parts={**parts, "checkpoint": "xyz"},
                      progress=False)


def test_a_crash_while_writing_leaves_no_entry_and_the_next_run_recomputes(tmp_path: Path, monkeypatch) -> None:
    cache = FeatureCache(tmp_path)
    parts = {"checkpoint": "abc", "split": "train"}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_split(TinySplitNet(), _dataset(), cache=cache, key_parts=parts, progress=False)
    monkeypatch.undo()
    assert list(tmp_path.glob("*.pt")) == [] and list(tmp_path.glob(".*.tmp")) == []
    network = TinySplitNet()
    outputs = extract_split(network, _dataset(), cache=cache, key_parts=parts, progress=False)
    assert network.calls > 0 and len(outputs.features) == 20
    assert cache.load(cache_key({**parts, "accumulate_early": False})) is not None


def test_a_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    parts = {"split": "test"}
    cache.path(cache_key({**parts, "accumulate_early": False})).write_bytes(b"not a torch file")
    network = TinySplitNet()
    extract_split(network, _dataset(), cache=cache, key_parts=parts, progress=False)
    assert network.calls > 0


def test_early_prototypes_name_an_empty_class() -> None:
    outputs = SplitOutputs(
        FeatureSet(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
        early_sums=torch.ones(3, 4, dtype=torch.float64),
        early_counts=torch.tensor([2, 0, 1]),
    )
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        outputs.early_prototypes()

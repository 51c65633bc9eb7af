"""The one forward pass and its cache: reuse, crash safety, early-layer class sums."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from grood.feature_store import CacheSpaceError
from grood.features import (FeatureCache, ShardJobs, SplitOutputs, cache_key, extract_shards, extract_split,
                            forward_pass)
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

    monkeypatch.setattr(os, "pwrite", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_split(TinySplitNet(), _dataset(), cache=cache, key_parts=parts, progress=False)
    monkeypatch.undo()
    key = cache_key({**parts, "accumulate_early": False})
    assert cache.load(key) is None and list(tmp_path.rglob("*.tmp")) == []
    assert list((cache.path(key) / "shards").glob("*.json")) == []  # no shard claims to be complete
    network = TinySplitNet()
    outputs = extract_split(network, _dataset(), cache=cache, key_parts=parts, progress=False)
    assert network.calls > 0 and len(outputs.features) == 20
    assert cache.load(key) is not None


def test_an_old_torch_entry_is_never_loaded_and_is_recomputed_with_a_note(tmp_path: Path, monkeypatch, caplog) -> None:
    cache = FeatureCache(tmp_path)
    parts = {"split": "test"}
    legacy = tmp_path / f"{cache_key({**parts, 'accumulate_early': False})}.pt"
    torch.save({"logits": torch.zeros(20, 3), "features": torch.zeros(20, 6), "labels": torch.zeros(20)}, legacy)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a torch file was loaded from the cache"))
    network = TinySplitNet()
    with caplog.at_level(logging.WARNING, logger="grood.features"):
        outputs = extract_split(network, _dataset(), cache=cache, key_parts=parts, progress=False)
    assert network.calls > 0 and outputs.features.features.abs().sum() > 0
    assert f"{legacy} is a cache entry of the old torch format: it is never loaded" in caplog.text


def _net() -> "TinySplitNet":
    """The same weights on every call (runs compared bit for bit)."""
    torch.manual_seed(7)
    return TinySplitNet()


def _counting(network: TinySplitNet) -> list[int]:
    rows: list[int] = []
    original = network.early

    def early(x: torch.Tensor) -> torch.Tensor:
        rows.append(int(x.shape[0]))
        return original(x)

    network.early = early  # type: ignore[method-assign]
    return rows


class FailingDataset(torch.utils.data.Dataset):
    """``inner`` (default ``_dataset()``) whose item ``fail_at`` raises once (a crash of the loader mid-extraction)."""

    def __init__(self, fail_at: int, inner: torch.utils.data.Dataset | None = None) -> None:
        self.inner, self.fail_at = _dataset() if inner is None else inner, fail_at

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, item: int):
        if item == self.fail_at:
            self.fail_at = -1
            raise RuntimeError("the loader died")
        return self.inner[item]


SHARDED = {"num_classes": 3, "accumulate_early": True, "batch_size": 4, "shard_batches": 1, "progress": False}


def _assert_same(a: SplitOutputs, b: SplitOutputs) -> None:
    for name in ("logits", "features", "labels"):
        assert torch.equal(getattr(a.features, name), getattr(b.features, name)), name
    assert torch.equal(a.early_sums, b.early_sums) and torch.equal(a.early_counts, b.early_counts)


def test_an_interrupted_extraction_resumes_at_its_last_complete_shard(tmp_path: Path) -> None:
    reference = extract_split(_net(), _dataset(), cache=FeatureCache(tmp_path / "ref"), key_parts={},
                              **SHARDED)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="the loader died"):  # rows 12..15 are shard 3 of 5
        extract_split(_net(), FailingDataset(fail_at=13), cache=cache, key_parts={}, **SHARDED)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    assert entry.complete_shards(entry.layout()) == {0, 1, 2}
    network = _net()
    rows = _counting(network)
    resumed = extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    assert rows == [4, 4]  # shards 3 and 4 only
    _assert_same(resumed, reference)
    assert torch.equal(resumed.early_prototypes(), reference.early_prototypes())


def _mapping_of(pointer: int) -> tuple[str, str]:
    """(permissions, file) of the mapping of this process holding address ``pointer`` (/proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= pointer < high:
            return fields[1], fields[5] if len(fields) > 5 else ""
    return "", ""


def test_the_cache_hands_out_read_only_memory_maps(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    outputs = extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    folder = cache.path(cache_key({"accumulate_early": True}))
    for name in ("logits", "features", "labels"):
        permissions, mapped = _mapping_of(getattr(outputs.features, name).data_ptr())
        assert mapped == str(folder / f"{name}.npy") and permissions.startswith("r-"), (name, permissions, mapped)
    assert outputs.features.features.shape == (20, 6) and outputs.features.logits.dtype == torch.float32


def test_bytes_overwritten_in_place_are_reported_and_that_shard_recomputed(tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path)
    reference = extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    reference_features = reference.features.features.clone()
    entry = cache.entry(cache_key({"accumulate_early": True}))
    path = entry.array_path("features")
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # shard 2 = rows 8..11; 6 float32 per row
        handle.seek(size - (20 - 9) * 6 * 4)
        handle.write(b"\x00\x00\x80\x7f" * 3)
    assert path.stat().st_size == size
    network = _net()
    rows = _counting(network)
    with caplog.at_level(logging.WARNING, logger="grood.features"):
        again = extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    assert f"feature cache entry {entry.folder} is damaged" in caplog.text
    assert "shard 2 (rows 8-11): features.npy does not match its sha256 checksum" in caplog.text
    assert rows == [4]
    assert torch.equal(again.features.features, reference_features)


def test_a_truncated_or_unreadable_entry_is_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    reference = extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    reference_logits = reference.features.logits.clone()
    del reference
    entry = cache.entry(cache_key({"accumulate_early": True}))
    path = entry.array_path("logits")
    path.write_bytes(path.read_bytes()[:-40])  # truncated
    network = _net()
    rows = _counting(network)
    again = extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    assert sum(rows) == 20 + 1 and torch.equal(again.features.logits, reference_logits)  # all rows + the probe
    (entry.folder / "entry.json").write_text("{not json")
    network = _net()
    rows = _counting(network)
    extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    assert sum(rows) == 20 + 1


def test_a_damaged_early_sum_is_found_too(tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path)
    extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    path = entry.own_array_path(4, "early_sums")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="grood.features"):
        assert cache.load(entry.folder.name) is None
    assert "shard 4 (rows 16-19): 00004.early_sums.npy does not match its sha256 checksum" in caplog.text


def test_a_full_disk_stops_before_the_pass_in_one_line(tmp_path: Path, monkeypatch) -> None:
    cache = FeatureCache(tmp_path / "cache")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    network = _net()
    rows = _counting(network)
    with pytest.raises(CacheSpaceError) as raised:
        extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    message = str(raised.value)
    assert "\n" not in message and f"feature cache folder {tmp_path / 'cache'}" in message
    # 20 rows * (3 + 6 float32 + one int64) + 5 shards * K * (int64 class + [4, 8, 8] float64 sums + int64 count),
    # K = min(C = 3, 4 rows of a shard): the dataset has no labels attribute to count a shard's classes
    assert "needs 31.8 KB, 100 B free" in message
    assert rows == [1]  # only the one-image probe of the arrays' shapes
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").rglob("*")) == []


def test_no_space_mid_write_is_one_line_and_a_rerun_resumes(tmp_path: Path, monkeypatch) -> None:
    reference = extract_split(_net(), _dataset(), cache=FeatureCache(tmp_path / "ref"), key_parts={},
                              **SHARDED)
    cache = FeatureCache(tmp_path / "cache")
    calls = []
    pwrite = os.pwrite

    def full_disk(fd, data, offset):
        calls.append(offset)
        if len(calls) == 7:  # shard 2's first array (3 arrays per shard)
            raise OSError(errno.ENOSPC, "No space left on device")
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(CacheSpaceError) as raised:
        extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    monkeypatch.undo()
    message = str(raised.value)
    assert "\n" not in message and f"feature cache folder {tmp_path / 'cache'}" in message and "free" in message
    entry = cache.entry(cache_key({"accumulate_early": True}))
    assert entry.complete_shards(entry.layout()) == {0, 1} and list(tmp_path.rglob("*.tmp")) == []
    network = _net()
    rows = _counting(network)
    _assert_same(extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED), reference)
    assert rows == [4, 4, 4]


def test_shards_shared_between_jobs_equal_one_job(tmp_path: Path) -> None:
    reference = extract_split(_net(), _dataset(), cache=FeatureCache(tmp_path / "ref"), key_parts={},
                              **SHARDED)
    cache = FeatureCache(tmp_path / "cache")
    network = _net()
    first = extract_shards(network, _dataset(), cache=cache, key_parts={}, jobs=ShardJobs(0, 2), **SHARDED)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    assert not first and entry.complete_shards(entry.layout()) == {0, 2, 4}
    assert extract_shards(network, _dataset(), cache=cache, key_parts={}, jobs=ShardJobs(1, 2), **SHARDED)
    assert [entry.read_record(s)["worker"] for s in range(5)] == ["job 0 of 2", "job 1 of 2"] * 2 + ["job 0 of 2"]
    _assert_same(cache.load(entry.folder.name), reference)


def test_early_prototypes_name_an_empty_class() -> None:
    outputs = SplitOutputs(
        FeatureSet(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
        early_sums=torch.ones(3, 4, dtype=torch.float64),
        early_counts=torch.tensor([2, 0, 1]),
    )
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        outputs.early_prototypes()


def test_a_full_disk_stops_a_pipeline_run_in_one_line_before_any_pass(tiny_root, tmp_path, resnet20_checkpoint,
                                                                      monkeypatch):
    """Issue 23 case 8: not a torch writer's "unexpected pos" after the pass, and not one failure per method."""
    from grood import features as features_module
    from grood.config import compose_run_config
    from grood.pipeline import run_evaluation

    config = compose_run_config(["dataset=cifar10_smoke", "method=all", "device=cpu", "progress=false",
                                 "num_workers=0", f"paths.data_root={tiny_root}", f"paths.cache_dir={tmp_path / 'c'}",
                                 f"dataset.checkpoint={resnet20_checkpoint}"])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 5000, 5000))
    passes: list[str] = []
    original = features_module.forward_pass_sparse  # what forward_pass and the cache's shards run
    monkeypatch.setattr(features_module, "forward_pass_sparse",
                        lambda *a, **k: passes.append(k["description"]) or original(*a, **k))
    with pytest.raises(CacheSpaceError) as raised:
        run_evaluation(config, tmp_path / "out")
    message = str(raised.value)
    assert "\n" not in message and f"feature cache folder {tmp_path / 'c'}" in message
    assert "cifar10_smoke/train" in message and "needs 1.4 MB, 5.0 KB free;" in message
    assert passes == ["cifar10_smoke/train (array shapes)"]  # the one-image probe, no pass over the split
    assert not (tmp_path / "out" / "grood" / "metrics.csv").exists()


# -- early-layer class sums: each shard stores the classes among its rows only -------------------------------------

#: 20 rows in runs of 3 per class, 7 classes: the shards of 4 rows hold classes {0, 1}, {1, 2}, {2, 3}, {4, 5},
#: {5, 6} (classes 1, 2 and 5 span two shards)
RUN_LABELS = torch.arange(20) // 3
RUNS = {**SHARDED, "num_classes": 7}


class LabelledDataset(TensorDataset):
    """Images and labels, with the labels also as an attribute ``labels [N]`` (as ImageListDataset has)."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__(_dataset(len(labels)).tensors[0], labels)
        self.labels = labels


def _dense_reference(network: TinySplitNet, dataset: TensorDataset, num_classes: int,
                     shard_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous format's result: per shard a dense ``[C, *S]`` float64 ClassMeanAccumulator over the shard's
    batches (here one batch per shard), summed shard after shard starting from shard 0's array."""
    from grood.method.prototypes import ClassMeanAccumulator

    images, labels = dataset.tensors
    total_sums = total_counts = None
    with torch.no_grad():
        for start in range(0, len(labels), shard_rows):
            maps = network.early(images[start : start + shard_rows])
            accumulator = ClassMeanAccumulator(num_classes, tuple(maps.shape[1:]))
            accumulator.update(maps, labels[start : start + shard_rows])
            if total_sums is None:
                total_sums, total_counts = accumulator.sums.clone(), accumulator.counts.clone()
            else:
                total_sums, total_counts = total_sums + accumulator.sums, total_counts + accumulator.counts
    return total_sums, total_counts


def _assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
    assert torch.equal(a.view(torch.int64), b.view(torch.int64))  # the same bits (+0.0 and -0.0 differ here)


def test_a_shard_stores_the_early_sums_of_its_own_classes_only(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    dataset = TensorDataset(_dataset().tensors[0], RUN_LABELS)
    outputs = extract_split(_net(), dataset, cache=cache, key_parts={}, **RUNS)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    layout = entry.layout()
    images = dataset.tensors[0]
    with torch.no_grad():
        maps = _net().early(images).double()
    for shard in range(5):
        own = entry.own_arrays(layout, shard)
        shard_labels = RUN_LABELS[4 * shard : 4 * shard + 4]
        classes = torch.unique(shard_labels)
        assert own["early_classes"].tolist() == classes.tolist()  # K = 2 distinct classes, not C = 7 rows
        assert own["early_sums"].shape == (len(classes), 4, 8, 8) and own["early_sums"].dtype == "float64"
        assert own["early_counts"].tolist() == [int((shard_labels == c).sum()) for c in classes]
        assert entry.read_record(shard)["own_rows"] == len(classes)
        shard_maps = maps[4 * shard : 4 * shard + 4]
        expected = torch.stack([shard_maps[shard_labels == c].sum(0) for c in classes])
        assert torch.allclose(torch.from_numpy(own["early_sums"]), expected, rtol=1e-12, atol=1e-12)
    sums, counts = _dense_reference(_net(), dataset, 7, 4)
    _assert_bits_equal(outputs.early_sums, sums)
    assert torch.equal(outputs.early_counts, counts) and counts.tolist() == [3] * 6 + [2]


def test_the_early_sums_of_a_resumed_extraction_equal_the_dense_sums(tmp_path: Path) -> None:
    dataset = TensorDataset(_dataset().tensors[0], RUN_LABELS)
    cache = FeatureCache(tmp_path)
    with pytest.raises(RuntimeError, match="the loader died"):  # row 13 is in shard 3 (rows 12..15)
        extract_split(_net(), FailingDataset(fail_at=13, inner=dataset), cache=cache, key_parts={}, **RUNS)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    assert entry.complete_shards(entry.layout()) == {0, 1, 2}
    network = _net()
    rows = _counting(network)
    resumed = extract_split(network, dataset, cache=cache, key_parts={}, **RUNS)
    assert rows == [4, 4]  # shards 3 and 4 only
    sums, counts = _dense_reference(_net(), dataset, 7, 4)
    _assert_bits_equal(resumed.early_sums, sums)
    assert torch.equal(resumed.early_counts, counts)


def test_the_early_sums_of_every_class_in_every_shard_equal_the_dense_sums(tmp_path: Path) -> None:
    """Labels 0, 1, 2, 0, 1, ...: every shard holds all three classes (K = C); the sums are those of the
    previous dense layout, bit for bit."""
    cache = FeatureCache(tmp_path)
    outputs = extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    entry = cache.entry(cache_key({"accumulate_early": True}))
    assert all(entry.own_arrays(entry.layout(), s)["early_sums"].shape[0] == 3 for s in range(5))
    sums, counts = _dense_reference(_net(), _dataset(), 3, 4)
    _assert_bits_equal(outputs.early_sums, sums)
    assert torch.equal(outputs.early_counts, counts)


def test_the_free_space_check_counts_the_classes_of_each_shard(tmp_path: Path, monkeypatch) -> None:
    from grood.feature_store import _size

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(CacheSpaceError) as raised:
        extract_split(_net(), LabelledDataset(RUN_LABELS), cache=FeatureCache(tmp_path), key_parts={}, **RUNS)
    # 20 rows * (3 logits + 6 features float32 + one int64 label)
    # + 5 shards * 2 classes * (int64 class + [4, 8, 8] float64 sums + int64 count): not C = 7 nor 4 rows per shard
    needed = 20 * (3 * 4 + 6 * 4 + 8) + 5 * 2 * (8 + 4 * 8 * 8 * 8 + 8)
    assert f"needs {_size(needed)}, 100 B free" in str(raised.value)


def test_an_entry_of_the_dense_early_layout_is_refused_and_extracted_again(tmp_path: Path, caplog) -> None:
    """An entry written before early sums were stored per present class: never read as if it were the new one."""
    import json

    cache = FeatureCache(tmp_path)
    reference = extract_split(_net(), _dataset(), cache=cache, key_parts={}, **SHARDED)
    reference_sums = reference.early_sums.clone()
    entry = cache.entry(cache_key({"accumulate_early": True}))
    blob = json.loads((entry.folder / "entry.json").read_text())
    del blob["own_arrays"], blob["num_classes"]
    blob["shard_arrays"] = {"early_sums": {"row_shape": [3, 4, 8, 8], "dtype": "float64"},
                            "early_counts": {"row_shape": [3], "dtype": "int64"}}
    (entry.folder / "entry.json").write_text(json.dumps(blob))
    with caplog.at_level(logging.WARNING, logger="grood.feature_store"):
        assert cache.load(entry.folder.name) is None
    assert "in the old dense layout" in caplog.text and "delete the entry folder" in caplog.text
    network = _net()
    rows = _counting(network)
    again = extract_split(network, _dataset(), cache=cache, key_parts={}, **SHARDED)
    assert sum(rows) == 20 + 1  # every row, and the probe
    _assert_bits_equal(again.early_sums, reference_sums)
    assert entry.layout() is not None and "early_classes" in entry.layout().own_arrays


def test_forward_pass_gives_dense_early_sums_with_zeros_for_absent_classes() -> None:
    dataset = TensorDataset(_dataset().tensors[0], RUN_LABELS)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    outputs = forward_pass(_net(), loader, num_classes=9, accumulate_early=True, progress=False)
    sums, counts = _dense_reference(_net(), dataset, 9, 20)
    assert outputs.early_sums.shape == (9, 4, 8, 8) and outputs.early_counts.tolist() == [3] * 6 + [2, 0, 0]
    assert torch.allclose(outputs.early_sums, sums, rtol=1e-12, atol=0) and not outputs.early_sums[7:].any()


def test_a_plain_request_leaves_the_early_sums_of_an_entry_unread(tmp_path: Path, monkeypatch) -> None:
    """The pipeline serves a features-only request from an entry with early sums (``load(early=False)``):
    the dense ``[C, *S]`` float64 sum (GBs at ImageNet size) is not built; a request for them still gets them."""
    import grood.features as features_module

    cache = FeatureCache(tmp_path)
    dataset = TensorDataset(_dataset().tensors[0], RUN_LABELS)
    extracted = extract_split(_net(), dataset, cache=cache, key_parts={}, **RUNS)
    key = cache_key({"accumulate_early": True})
    calls = []
    original = features_module._early_class_sums
    monkeypatch.setattr(features_module, "_early_class_sums", lambda *a: calls.append(1) or original(*a))
    plain = cache.load(key, early=False)
    assert plain.early_sums is None and plain.early_counts is None and calls == []
    assert torch.equal(plain.features.features, extracted.features.features)
    full = cache.load(key)
    assert calls == [1]
    _assert_bits_equal(full.early_sums, extracted.early_sums)

"""GROOD and KNN over read-only memory-mapped features (the feature cache's shards), and float16 storage of
the training gradients with exact re-ranking."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from grood.detectors.distance_based import KNN
from grood.featureset import FeatureSet, LinearHead
from grood.method import GROOD
from grood.method.neighbours.compact import SHORTLIST_PER_NEIGHBOUR, HalfVectors
from grood.method.neighbours.ivf import IVFIndex
from grood.method.neighbours.torch_index import TorchIndex
from grood.method.streaming import RowReader, is_file_mapped


def _mapped(path: Path, array: np.ndarray) -> torch.Tensor:
    """``array`` written to ``path`` and read back as a read-only memory-mapped tensor (as the cache does)."""
    writer = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    writer[:] = array
    writer.flush()
    del writer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "The given NumPy array is not writable"
        return torch.from_numpy(np.load(path, mmap_mode="r"))


def _clustered(count: int, dim: int, classes: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(classes, dim)).astype(np.float32) * 3
    labels = generator.integers(0, classes, size=count)
    features = centres[labels] + spread * generator.normal(size=(count, dim)).astype(np.float32)
    return np.maximum(features, 0).astype(np.float32), labels  # ReLU features, as a network's


@pytest.fixture()
def mapped_data(tmp_path: Path) -> dict:
    train, labels = _clustered(6000, 32, 5, seed=1)
    test, _ = _clustered(700, 32, 5, seed=2)
    ood, _ = _clustered(500, 32, 5, seed=3, spread=3.0)
    return {"train": _mapped(tmp_path / "train.npy", train), "labels": torch.from_numpy(labels),
            "test": _mapped(tmp_path / "test.npy", test), "ood": _mapped(tmp_path / "ood.npy", ood),
            "arrays": (train, test, ood)}


def test_the_inputs_are_read_only_memory_maps(mapped_data: dict) -> None:
    assert is_file_mapped(mapped_data["train"]) and not is_file_mapped(torch.zeros(10, 4))


def test_reading_a_memory_map_in_chunks_keeps_the_resident_set_small(tmp_path: Path) -> None:
    features = _mapped(tmp_path / "big.npy", np.ones((32768, 1024), dtype=np.float32))  # 128 MB

    def resident_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    before = resident_mb()
    total = sum(float(chunk.sum()) for _, chunk in RowReader(features).chunks(2048))
    assert total == 32768 * 1024
    assert resident_mb() - before < 80  # without releasing the pages: + 128 MB


@pytest.mark.parametrize("index, params", [("torch", {"norm_pruning": True}), ("ivf", {"nlist": 20})])
def test_float16_storage_scores_exactly_as_float32_on_memory_mapped_features(mapped_data: dict, index: str,
                                                                              params: dict) -> None:
    data = mapped_data
    scores = {}
    for storage in ("float32", "float16"):
        detector = GROOD(index=index, index_params={**params, "storage": storage}, batch_size=1000)
        detector.fit(data["train"], data["labels"], num_classes=5, ood_prototype="mean")
        scores[storage] = torch.cat([detector.score(data["test"]), detector.score(data["ood"])])
        if storage == "float16":
            assert isinstance(detector.index._storage if index == "torch" else detector.index.vectors, HalfVectors)
    torch.testing.assert_close(scores["float16"], scores["float32"], rtol=0, atol=0)


def test_the_float16_shortlist_holds_the_true_nearest_gradient(mapped_data: dict) -> None:
    """What the equality above rests on: on these features each query's true nearest training gradient is
    among the SHORTLIST_PER_NEIGHBOUR best by the float16 codes (brute force in float64)."""
    data = mapped_data
    detector = GROOD(index="torch", index_params={"storage": "float16"}).fit(
        data["train"], data["labels"], ood_prototype="mean", num_classes=5)
    train_gradients = detector.gradients(data["train"]).double()
    queries = torch.cat([detector.gradients(data["test"]), detector.gradients(data["ood"])]).double()
    decoded = detector.index.vectors.double()  # the codes, decoded (add order)
    assert not torch.equal(decoded, train_gradients)  # the codes are not the gradients
    shortlist = torch.cdist(queries, decoded).topk(SHORTLIST_PER_NEIGHBOUR, dim=1, largest=False).indices
    nearest = torch.cdist(queries, train_gradients).argmin(dim=1)
    assert bool((shortlist == nearest.unsqueeze(1)).any(dim=1).all())
    # the distances to the codes are not the exact ones: the scores' equality above comes from the re-ranking
    assert not torch.equal(torch.cdist(queries, decoded).amin(dim=1), torch.cdist(queries, train_gradients).amin(dim=1))


def test_float16_index_needs_its_exact_source_and_cannot_be_saved(tmp_path: Path) -> None:
    vectors = torch.randn(500, 8)
    index = TorchIndex(8, storage="float16")
    index.add(vectors)
    with pytest.raises(ValueError, match="exact_source"):
        index.search(vectors[:3])
    with pytest.raises(ValueError, match="storage='float32'"):
        index.save(tmp_path / "index.pt")
    with pytest.raises(ValueError, match="build_streamed"):
        IVFIndex(8, storage="float16").add(vectors)
    with pytest.raises(ValueError, match="storage must be one of"):
        TorchIndex(8, storage="bfloat16")


def test_ivf_streamed_build_equals_one_add() -> None:
    vectors = torch.randn(4000, 16) * torch.rand(4000, 1)
    queries = torch.randn(300, 16)
    one = IVFIndex(16, nlist=30)
    one.add(vectors)
    streamed = IVFIndex(16, nlist=30)
    streamed.build_streamed(4000, lambda rows: vectors[rows], chunk_rows=700)
    assert torch.equal(one.offsets, streamed.offsets) and torch.equal(one.ids, streamed.ids)
    for a, b in zip(one.search(queries, 2), streamed.search(queries, 2)):
        assert torch.equal(a, b)


def test_knn_streams_memory_mapped_training_features(mapped_data: dict) -> None:
    data = mapped_data
    head = LinearHead(torch.randn(5, 32), torch.zeros(5))

    def feature_set(features: torch.Tensor) -> FeatureSet:
        return FeatureSet(torch.zeros(features.shape[0], 5), features, torch.zeros(features.shape[0], dtype=torch.long))

    streamed = KNN(k=5, chunk_rows=500).fit(feature_set(data["train"]), head)
    assert streamed.index is None and streamed.train_features is data["train"]  # no copy held
    indexed = KNN(k=5, index="torch").fit(feature_set(torch.from_numpy(data["arrays"][0].copy())), head)
    for features in (data["test"], data["ood"]):
        torch.testing.assert_close(streamed.score(feature_set(features)), indexed.score(feature_set(features)),
                                   rtol=1e-5, atol=1e-5)


def test_scattered_reads_of_a_memory_map_keep_the_resident_set_small(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Random rows fault in the cached pages around each of them too (fault-around, 64 KB): they are read a
    batch at a time and released after each (batches of 64 rows here: 4 MB of pages around them at most)."""
    monkeypatch.setattr("grood.method.streaming.TAKE_BATCH", 64)
    features = _mapped(tmp_path / "big.npy", np.ones((32768, 1024), dtype=np.float32))  # 128 MB
    reader = RowReader(features)
    before = _resident_mb()
    Path("/proc/self/clear_refs").write_text("5")  # resets this process's peak RSS (VmHWM) to its current RSS
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert float(reader.take(torch.randint(0, 32768, (6000,), generator=generator)).sum()) == 6000 * 1024
    assert _resident_mb() - before < 80
    # one batch of rows at a time: the 6,000 rows' 24 MB copy, not the pages around all of them (the whole map)
    assert _resident_mb("VmHWM:") - before < 80


def _resident_mb(field: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


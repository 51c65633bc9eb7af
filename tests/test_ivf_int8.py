"""The IVF index's int8 scan (``scan="int8"``): codes, candidates, exact distances, errors, save/load, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grood.config import ConfigError, compose_run_config
from grood.method import GROOD
from grood.method.kmeans import nearest_cells
from grood.method.neighbours import build_index, load_index
from grood.method.neighbours import ivf as ivf_module
from grood.method.neighbours.ivf import INT8_CANDIDATES_PER_NEIGHBOUR, MAX_INT8_DIM, IVFIndex, int8_codes


def _gradient_like(num_vectors: int, dim: int, seed: int) -> torch.Tensor:
    """``p * unit`` with p log-uniform in [1e-6, 1e-1] and units near a few directions, as GROOD's eq. 5."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(6, dim, generator=generator), dim=1)
    units = directions[torch.randint(0, 6, (num_vectors,), generator=generator)]
    units = torch.nn.functional.normalize(units + 0.2 * torch.randn(num_vectors, dim, generator=generator), dim=1)
    return units * 10 ** (-6 + 5 * torch.rand(num_vectors, 1, generator=generator))


def _true_distances(queries: torch.Tensor, database: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[B, k]`` float64 distances of each query to the database rows ``ids [B, k]``."""
    return torch.linalg.vector_norm(queries.double().unsqueeze(1) - database.double()[ids], dim=2)


def test_int8_codes_bound_each_entry_by_half_its_row_scale() -> None:
    vectors = torch.cat([_gradient_like(300, 24, seed=0), torch.zeros(1, 24)])
    codes, scales = int8_codes(vectors)
    assert codes.dtype == torch.int8 and scales.shape == (301,)
    assert int(codes.abs().max()) == 127 and torch.equal(codes.abs().amax(dim=1)[:300], torch.full((300,), 127, dtype=torch.int8))
    error = (vectors - scales.unsqueeze(1) * codes.float()).abs()
    assert bool((error <= 0.5 * scales.unsqueeze(1) * (1 + 1e-5)).all())
    assert not codes[300].any()  # a zero row: zero codes, no NaN


@pytest.mark.parametrize("k", [1, 3])
def test_int8_scan_of_one_cell_keeps_the_best_by_codes_and_returns_their_nearest(k: int) -> None:
    """nprobe=1: a float64 reference from the codes themselves. Each query's 2k best vectors of its cell by
    ``||x||^2 / 2 - s_q s_x (c_q . c_x)``, then the k nearest of those by true distance."""
    database = _gradient_like(4000, 32, seed=1)
    queries = database[:200] * (1 + 0.05 * torch.randn(200, 32, generator=torch.Generator().manual_seed(2)))
    index = build_index("ivf", 32, nlist=20, nprobe=1, scan="int8")
    index.add(database)
    distances, indices = index.search(queries, k)

    codes, scales = int8_codes(index.vectors)
    query_codes, query_scales = int8_codes(queries)
    cells = nearest_cells(queries, index.centroids, 1, index.projection)[:, 0]
    width, checked = k * INT8_CANDIDATES_PER_NEIGHBOUR, 0
    for row in range(queries.shape[0]):
        first, last = int(index.offsets[cells[row]]), int(index.offsets[cells[row] + 1])
        products = codes[first:last].long() @ query_codes[row].long()  # exact integer sums
        ranking = (index.vectors[first:last].double().square().sum(dim=1) / 2
                   - query_scales[row].double() * scales[first:last].double() * products.double())
        ordered = torch.sort(ranking).values
        if ordered.shape[0] > width and ordered[width] - ordered[width - 1] <= 1e-5 * ordered.abs().max():
            continue  # a near-tie at the candidates' cut: float32 may keep either
        candidates = first + torch.topk(ranking, min(width, last - first), largest=False).indices
        true = torch.linalg.vector_norm(queries[row].double() - index.vectors[candidates].double(), dim=1)
        expected, order = torch.topk(true, k, largest=False)
        torch.testing.assert_close(distances[row].double(), expected, rtol=1e-5, atol=1e-12)
        assert torch.equal(indices[row], index.ids[candidates[order]])
        checked += 1
    assert checked >= 190


def test_int8_scan_returns_true_distances_and_the_recall_of_the_float32_scan() -> None:
    database = _gradient_like(8000, 48, seed=3)
    generator = torch.Generator().manual_seed(4)
    queries = torch.cat([database[:300] * (1 + 0.05 * torch.randn(300, 48, generator=generator)),
                         _gradient_like(100, 48, seed=5) * 3])  # ID-like queries and far ones
    exact = build_index("torch", 48)
    exact.add(database)
    exact_distances, _ = exact.search(queries, 1)
    recall = {}
    for scan in ("float32", "int8"):
        index = build_index("ivf", 48, nlist=40, nprobe=12, scan=scan)
        index.add(database)
        distances, ids = index.search(queries, 1)
        torch.testing.assert_close(distances.double(), _true_distances(queries, database, ids), rtol=1e-5, atol=1e-12)
        recall[scan] = float((distances <= exact_distances * (1 + 1e-5)).float().mean())
    assert recall["float32"] >= 0.95
    assert recall["int8"] >= recall["float32"] - 0.01


def test_int8_scan_of_a_zero_query_finds_the_smallest_norm_among_large_vectors() -> None:
    """A zero query has zero codes and the smallest scale: its ranking must stay finite (no 1 / scale)."""
    database = 1e4 * (1 + torch.rand(2000, 8, generator=torch.Generator().manual_seed(12)))
    index = build_index("ivf", 8, nlist=4, nprobe=4, scan="int8")
    index.add(database)
    distances, ids = index.search(torch.zeros(1, 8), 1)
    smallest = int(torch.linalg.vector_norm(database, dim=1).argmin())
    assert int(ids[0, 0]) == smallest
    torch.testing.assert_close(distances[0, 0], torch.linalg.vector_norm(database[smallest]))


def test_int8_scan_does_not_depend_on_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    database = _gradient_like(5000, 16, seed=6)
    queries = database[:400] * 1.01
    index = build_index("ivf", 16, nlist=40, nprobe=5, scan="int8")
    index.add(database)
    whole = index.search(queries, 2)
    monkeypatch.setattr(ivf_module, "INT8_CHUNK_ELEMENTS", 500)  # several query chunks per cell
    chunked = index.search(queries, 2)
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])
    assert index.compared_fraction < 1.0  # the norm bound skipped probed cells here too


def test_int8_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scan must be one of float32, int8; got 'int4'"):
        IVFIndex(8, scan="int4")
    with pytest.raises(ValueError, match=f"scan='int8' handles dim <= {MAX_INT8_DIM}"):
        IVFIndex(MAX_INT8_DIM + 1, scan="int8")
    with pytest.raises(ValueError, match="scan='int8' runs on the CPU only"):
        IVFIndex(8, scan="int8", device="cuda")
    with pytest.raises(ValueError, match="scan='int8' runs on the CPU only"):
        GROOD(index="ivf", index_params={"scan": "int8"}, device="cuda").check_index(8)
    GROOD(index="ivf", index_params={"scan": "int8"}, device="cpu").check_index(8)  # fine on the CPU
    index = build_index("ivf", 8, nlist=4, scan="int8")
    index.add(_gradient_like(400, 8, seed=7))
    index.save(tmp_path / "index.pt")
    with pytest.raises(ValueError, match="scan='int8' runs on the CPU only"):
        load_index(tmp_path / "index.pt", "ivf", device="cuda")


def test_int8_index_round_trips_and_older_files_load_as_float32(tmp_path: Path) -> None:
    database, queries = _gradient_like(3000, 12, seed=8), _gradient_like(50, 12, seed=9)
    index = build_index("ivf", 12, nlist=20, nprobe=4, scan="int8")
    index.add(database)
    index.save(tmp_path / "index.pt")
    loaded = load_index(tmp_path / "index.pt", "ivf")
    assert loaded.scan == "int8"
    for before, after in zip(index.search(queries, 2), loaded.search(queries, 2)):
        assert torch.equal(before, after)
    state = torch.load(tmp_path / "index.pt", weights_only=True)
    del state["scan"]  # a file written before the int8 scan
    torch.save(state, tmp_path / "old.pt")
    assert load_index(tmp_path / "old.pt", "ivf").scan == "float32"


def test_grood_with_the_int8_scan_scores_as_with_float32() -> None:
    features = torch.randn(3000, 20, generator=torch.Generator().manual_seed(10)) + 4 * torch.eye(20)[
        torch.arange(3000) % 5]
    labels = torch.arange(3000) % 5
    queries = torch.cat([features[:200] + 0.1, 3 * torch.randn(100, 20, generator=torch.Generator().manual_seed(11))])
    scores = {}
    for scan in ("float32", "int8"):
        detector = GROOD(index="ivf", index_params={"nlist": 30, "scan": scan}, device="cpu")
        scores[scan] = detector.fit(features, labels, num_classes=5, ood_prototype="mean").score(queries)
    assert (scores["int8"] == scores["float32"]).float().mean() >= 0.95
    torch.testing.assert_close(scores["int8"], scores["float32"], rtol=0.05, atol=1e-6)


def test_scan_is_a_declared_index_setting() -> None:
    config = compose_run_config(["dataset=cifar10", "method=grood", "index=ivf", "index.params.scan=int8"])
    assert config.index.params.scan == "int8"
    assert compose_run_config(["dataset=cifar10", "method=grood", "index=ivf"]).index.params.scan == "float32"
    with pytest.raises(ConfigError, match=r"index\.params\.scan='int4': must be one of float32, int8"):
        compose_run_config(["dataset=cifar10", "method=grood", "index=ivf", "index.params.scan=int4"])


def test_the_pipeline_rejects_the_int8_scan_on_cuda_before_any_forward_pass() -> None:
    from grood.pipeline import method_problem

    config = compose_run_config(["dataset=cifar10", "method=grood", "index=ivf", "index.params.scan=int8",
                                 "device=cuda"])
    problem = method_problem("grood", {}, 64, config)
    assert problem is not None and "method grood:" in problem and "index=ivf" in problem
    assert "runs on the CPU only" in problem
    cpu = compose_run_config(["dataset=cifar10", "method=grood", "index=ivf", "index.params.scan=int8", "device=cpu"])
    assert method_problem("grood", {}, 64, cpu) is None

"""Nearest-neighbour indexes (eq. 6): exactness, IVF recall, errors, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from grood.method.neighbours import (
    DEFAULT_NPROBE,
    INDEX_CLASSES,
    INDEX_KINDS,
    IVFIndex,
    build_index,
    default_nlist,
    kth_neighbour_distance,
    load_index,
)
from grood.method.synthetic import clustered_vectors


def _brute_force(database: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 reference: distances (not squared) and indices of the k nearest."""
    distances = torch.cdist(queries.double(), database.double(), compute_mode="donot_use_mm_for_euclid_dist")
    values, indices = distances.topk(k, dim=1, largest=False)
    return values, indices


def _assert_matches_brute_force(index_kind: str, database: torch.Tensor, queries: torch.Tensor, k: int) -> None:
    index = build_index(index_kind, database.shape[1])
    index.add(database)
    distances, indices = index.search(queries, k)
    expected_distances, expected_indices = _brute_force(database, queries, k)
    assert distances.shape == indices.shape == (queries.shape[0], k)
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(distances.double(), expected_distances, rtol=1e-4, atol=1e-4)
    # neighbours equal wherever the reference is not a near-tie (float32 rounding may swap near-ties)
    gaps = torch.diff(torch.cat([expected_distances, expected_distances[:, -1:] + 1], dim=1), dim=1)
    clear = gaps > 1e-3
    assert clear.float().mean() > 0.99
    assert torch.equal(indices[clear], expected_indices[clear])


@pytest.mark.parametrize("kind", ["faiss_flat", "torch"])
def test_exact_kinds_equal_brute_force_cdist(kind: str) -> None:
    database, queries = torch.randn(2000, 24), torch.randn(300, 24)
    _assert_matches_brute_force(kind, database, queries, k=5)


def test_torch_index_equals_exact_index() -> None:
    database, queries = torch.randn(1500, 16), torch.randn(200, 16)
    results = {}
    for kind in ("faiss_flat", "torch"):
        index = build_index(kind, 16)
        index.add(database[:700])
        index.add(database[700:])  # several adds keep the global row numbering
        results[kind] = index.search(queries, 3)
    torch.testing.assert_close(results["torch"][0], results["faiss_flat"][0], rtol=1e-4, atol=1e-4)
    assert (results["torch"][1] == results["faiss_flat"][1]).float().mean() > 0.99


@pytest.mark.parametrize("kind", list(INDEX_CLASSES))
def test_distances_are_not_squared(kind: str) -> None:
    database = torch.zeros(50, 2)
    database[:, 0] = torch.arange(50.0) + 100.0  # far away, so that the origin neighbour is the nearest
    database[7] = torch.tensor([3.0, 4.0])
    # faiss_ivf: 50 rows are one loader batch of 200, too few for the author's rule (floor(0.8) = 0 batches)
    params = {"ivf": {"nlist": 1}, "faiss_ivf": {"nlist": 1, "train_batches": 1}}.get(kind, {})
    index = build_index(kind, 2, **params)
    index.add(database)
    distances, indices = index.search(torch.zeros(1, 2), 1)
    assert indices.item() == 7
    assert distances.item() == pytest.approx(5.0, abs=1e-5)
    assert kth_neighbour_distance(index, torch.zeros(1, 2), k=2).item() == pytest.approx(100.0, abs=1e-3)


def test_kth_neighbour_distance_takes_column_k_and_chunks() -> None:
    database, queries = torch.randn(500, 8), torch.randn(130, 8)
    index = build_index("faiss_flat", 8)
    index.add(database)
    distances, _ = index.search(queries, 4)
    for k in (1, 4):
        torch.testing.assert_close(kth_neighbour_distance(index, queries, k=k), distances[:, k - 1])
        torch.testing.assert_close(kth_neighbour_distance(index, queries, k=k, batch_size=17), distances[:, k - 1])
    assert kth_neighbour_distance(index, torch.empty(0, 8)).shape == (0,)


def _recall_at_1(num_vectors: int, dim: int, num_queries: int, **ivf_params) -> float:
    """IVF recall@1 against exact search on clustered GROOD-gradient-like data.

    A query counts as found when IVF returns the exact nearest neighbour or one at the same distance.
    """
    database, _, centres, basis = clustered_vectors(num_vectors, dim, seed=0)
    queries, _, _, _ = clustered_vectors(num_queries, dim, seed=1, centres=centres, basis=basis)
    exact = build_index("faiss_flat", dim)
    exact.add(database)
    exact_distances, exact_indices = exact.search(queries, 1)
    ivf = build_index("ivf", dim, **ivf_params)
    ivf.add(database)
    if "nlist" not in ivf_params:
        assert ivf.nlist == default_nlist(num_vectors)
    ivf_distances, ivf_indices = ivf.search(queries, 1)
    found = (ivf_indices == exact_indices) | (ivf_distances <= exact_distances * (1 + 1e-6))
    return found.float().mean().item()


def test_ivf_recall_default_parameters_small() -> None:
    assert _recall_at_1(8000, 128, 400) >= 0.95


@pytest.mark.slow
def test_ivf_recall_default_parameters_50k_x_512() -> None:
    """CIFAR's training-set size and ResNet-18's feature dimension: 5 to 20 s on 2 shared cores, so slow;
    ``test_ivf_recall_default_parameters_small`` is the fast version (recall@1 here: 0.99)."""
    assert _recall_at_1(50_000, 512, 1000) >= 0.95


def test_ivf_recall_is_not_trivial() -> None:
    """With a single probed cell the same data gives a clearly lower recall: the check above can fail."""
    assert _recall_at_1(8000, 128, 400, nprobe=1) < 0.9


def test_ivf_defaults() -> None:
    assert default_nlist(50_000) == 224 and default_nlist(1_000) == 25 and default_nlist(10) == 1
    assert IVFIndex(8).nprobe == DEFAULT_NPROBE


def test_ivf_with_too_few_training_vectors_is_a_clear_error() -> None:
    index = build_index("ivf", 4, nlist=100)
    with pytest.raises(ValueError, match=r"nlist=100 needs at least 3900 vectors .* got 1000\. Lower nlist to at most 25"):
        index.add(torch.randn(1000, 4))
    assert index.ntotal == 0


def test_ivf_missing_neighbours_is_a_clear_error() -> None:
    # two far-apart groups, one cell each, one probed cell: the k=60 nearest cannot all be found
    database = torch.cat([torch.randn(50, 3), torch.randn(50, 3) + 1000.0])
    index = build_index("ivf", 3, nlist=2, nprobe=1)
    index.add(database)
    with pytest.raises(RuntimeError, match=r"fewer than k=60 neighbours .* raise nprobe"):
        index.search(torch.zeros(1, 3), 60)


@pytest.mark.parametrize("kind", list(INDEX_CLASSES))
def test_search_errors(kind: str) -> None:
    index = build_index(kind, 4, **{"ivf": {"nlist": 2}, "faiss_ivf": {"nlist": 2, "train_batches": 1}}.get(kind, {}))
    with pytest.raises(ValueError, match="cannot search an empty"):
        index.search(torch.randn(2, 4), 1)
    index.add(torch.randn(100, 4))
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.100 .* got 101"):
        index.search(torch.randn(2, 4), 101)
    with pytest.raises(ValueError, match="queries has feature dimension 3 but 4 was expected"):
        index.search(torch.randn(2, 3), 1)
    queries = torch.randn(5, 4)
    queries[[1, 3], 2] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 5 row\(s\)"):
        index.search(queries, 1)
    with pytest.raises(ValueError, match="vectors has feature dimension 5 but 4"):
        index.add(torch.randn(3, 5))


def test_build_index_errors() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'; valid kinds: exact, faiss_flat, ivf, torch"):
        build_index("hnsw", 8)
    with pytest.raises(ValueError, match=r"bad parameter\(s\) \['nlist'\] for index kind 'faiss_flat'"):
        build_index("faiss_flat", 8, nlist=4)
    with pytest.raises(ValueError, match=r"index kind 'exact' takes no parameters \(got \['nlist'\]\)"):
        build_index("exact", 8, nlist=4)


def test_exact_is_the_fastest_exact_search_for_the_device(monkeypatch) -> None:
    """On the CPU: the torch search with norm pruning (it beat FAISS flat at both bench scales); on CUDA
    with faiss-gpu: FAISS flat. Either gives the same neighbours as FAISS flat."""
    from grood.method import neighbours

    assert neighbours.exact_choice("cpu") == ("torch", {"norm_pruning": True})
    index = build_index("exact", 6, device="cpu")
    assert index.kind == "torch" and index.norm_pruning
    import grood.device

    monkeypatch.setattr(grood.device, "resolve_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(neighbours, "_faiss_gpu_available", lambda: True)
    assert neighbours.exact_choice("cuda") == ("faiss_flat", {})
    monkeypatch.setattr(neighbours, "_faiss_gpu_available", lambda: False)
    assert neighbours.exact_choice("cuda") == ("torch", {"norm_pruning": True})
    database, queries = torch.randn(3000, 16), torch.randn(200, 16) * 2
    exact, flat = build_index("exact", 16, device="cpu"), build_index("faiss_flat", 16)
    exact.add(database)
    flat.add(database)
    (d_exact, i_exact), (d_flat, i_flat) = exact.search(queries, 3), flat.search(queries, 3)
    assert torch.equal(i_exact, i_flat)
    torch.testing.assert_close(d_exact, d_flat, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="IVFIndex: nprobe must be an integer >= 1; got 0"):
        build_index("ivf", 8, nprobe=0)


@pytest.mark.parametrize("kind", list(INDEX_CLASSES))
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    database, queries = torch.randn(800, 6), torch.randn(50, 6)
    index = build_index(kind, 6, **({"nlist": 8, "nprobe": 3} if kind == "ivf" else {}))
    index.add(database)
    path = tmp_path / "sub" / f"index.{kind}"
    index.save(path)
    loaded = load_index(path, kind)
    assert type(loaded) is type(index) and loaded.ntotal == 800 and loaded.dim == 6
    if kind == "ivf":
        assert loaded.nlist == 8 and loaded.nprobe == 3
    for original, reloaded in zip(index.search(queries, 3), loaded.search(queries, 3)):
        assert torch.equal(original, reloaded)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no index file"):
        load_index(tmp_path / "missing.faiss", "faiss_flat")
    index = build_index("faiss_flat", 3)
    index.add(torch.randn(10, 3))
    index.save(tmp_path / "flat.faiss")
    with pytest.raises(ValueError, match="flat.faiss is not an index file written by grood's 'ivf' index"):
        load_index(tmp_path / "flat.faiss", "ivf")
    torch_index = build_index("torch", 3)
    torch_index.add(torch.randn(10, 3))
    torch_index.save(tmp_path / "torch.pt")
    with pytest.raises(ValueError, match="torch.pt holds a 'torch' index, not the 'ivf' index"):
        load_index(tmp_path / "torch.pt", "ivf")
    with pytest.raises(ValueError, match="nothing to save"):
        build_index("torch", 3).save(tmp_path / "empty.pt")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", list(INDEX_CLASSES))
def test_cuda_inputs(kind: str) -> None:
    database, queries = torch.randn(2000, 16), torch.randn(100, 16)
    reference = build_index("torch", 16)
    reference.add(database)
    index = build_index(kind, 16, **({"nlist": 4, "nprobe": 4} if kind in ("ivf", "faiss_ivf") else {}))
    index.add(database.cuda())
    distances, indices = index.search(queries.cuda(), 2)
    assert distances.is_cuda and indices.is_cuda
    expected_distances, expected_indices = reference.search(queries, 2)
    torch.testing.assert_close(distances.cpu(), expected_distances, rtol=1e-4, atol=1e-4)
    assert (indices.cpu() == expected_indices).float().mean() > 0.99


def test_ivf_warns_when_one_cell_holds_most_vectors(caplog: pytest.LogCaptureFixture) -> None:
    """Most vectors at (almost) one point, like GROOD gradients of ~0 norm: k-means cannot split them."""
    vectors = torch.randn(4000, 16)
    vectors[:3000] = 1e-9  # 3000 identical, tiny vectors
    index = build_index("ivf", 16, nlist=20)
    with caplog.at_level("WARNING", logger="grood.method.neighbours"):
        index.add(vectors)
    assert index.largest_list_fraction() > 0.7
    assert "holds" in caplog.text and "use the 'exact' or 'torch' index" in caplog.text
    caplog.clear()
    balanced = build_index("ivf", 16, nlist=20)
    with caplog.at_level("WARNING", logger="grood.method.neighbours"):
        balanced.add(torch.randn(4000, 16))
    assert balanced.largest_list_fraction() < 0.1 and caplog.text == ""


def test_ivf_probing_every_cell_equals_exact_search_over_several_adds() -> None:
    """The list-major scan and the merge of per-cell candidates are exact when every cell is probed."""
    database, queries = torch.randn(3000, 12), torch.randn(257, 12)
    index = build_index("ivf", 12, nlist=10, nprobe=10_000)
    index.add(database[:2000])
    index.add(database[2000:])  # assigned to the trained cells, global row numbering kept
    index.max_chunk_elements = 5_000  # several query chunks per cell
    assert index.nprobe >= index.num_cells
    _assert_search_equals_brute_force(index, database, queries, k=7)


def _assert_search_equals_brute_force(index, database: torch.Tensor, queries: torch.Tensor, k: int) -> None:
    distances, indices = index.search(queries, k)
    expected_distances, expected_indices = _brute_force(database, queries, k)
    torch.testing.assert_close(distances.double(), expected_distances, rtol=1e-4, atol=1e-5)
    assert (indices == expected_indices).float().mean() > 0.99


def _gradient_like(num_vectors: int, dim: int, seed: int) -> torch.Tensor:
    """``p * unit`` with p log-uniform in [1e-8, 1e-1] and units near a few directions, as GROOD's eq. 5."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(5, dim, generator=generator), dim=1)
    units = directions[torch.randint(0, 5, (num_vectors,), generator=generator)]
    units = torch.nn.functional.normalize(units + 0.05 * torch.randn(num_vectors, dim, generator=generator), dim=1)
    norms = 10 ** (-8 + 7 * torch.rand(num_vectors, 1, generator=generator))
    return units * norms


def test_ivf_cells_of_gradients_spanning_orders_of_magnitude_are_balanced_and_route_well() -> None:
    from grood.method.kmeans import kmeans, nearest_centroids

    vectors = _gradient_like(6000, 16, seed=0)
    plain = nearest_centroids(vectors, kmeans(vectors, 40))[:, 0]
    assert torch.bincount(plain).max().item() / 6000 > 0.4  # k-means on raw vectors: one cell near the origin
    index = build_index("ivf", 16, nlist=40)
    index.add(vectors)
    assert index.largest_list_fraction() <= 4 / 40  # log-polar cells
    # queries at every scale are routed to the cells of their own scale and direction
    queries = _gradient_like(500, 16, seed=1)
    distances, indices = index.search(queries, 1)
    expected_distances, expected_indices = _brute_force(vectors, queries, 1)
    found = (indices == expected_indices) | (distances.double() <= expected_distances * (1 + 1e-5))
    assert found.float().mean() >= 0.95


def test_balanced_centroids_split_oversized_cells() -> None:
    from grood.method.kmeans import balanced_centroids, nearest_centroids

    generator = torch.Generator().manual_seed(0)
    dense = 1e-3 * torch.randn(3600, 4, generator=generator)  # 90% of the points in a tiny blob
    spread = 100 * torch.randn(400, 4, generator=generator)
    vectors = torch.cat([dense, spread])
    centroids = balanced_centroids(vectors, 10, max_cell_factor=2.0)
    sizes = torch.bincount(nearest_centroids(vectors, centroids)[:, 0], minlength=centroids.shape[0])
    assert centroids.shape[0] > 10
    assert sizes.max().item() <= 2.0 * 4000 / 10
    identical = torch.zeros(500, 4)  # cannot be split: returned as they are, no endless loop
    assert balanced_centroids(identical, 5).shape[0] == 5


def test_kmeans_finds_separated_clusters_and_refills_empty_ones() -> None:
    from grood.method.kmeans import kmeans

    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vectors = torch.cat([centre + 0.1 * torch.randn(200, 2) for centre in centres])
    found = kmeans(vectors, 3, iterations=20, seed=3)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.1
    duplicates = torch.zeros(50, 2)  # 4 clusters of identical points: every cluster but one empties
    assert kmeans(duplicates, 4).shape == (4, 2)
    with pytest.raises(ValueError, match=r"1 <= num_clusters <= number of vectors \(50\); got 51"):
        kmeans(duplicates, 51)


def test_direction_projection_spans_the_directions_subspace() -> None:
    from grood.method.kmeans import direction_projection

    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 3, generator=generator)).Q  # [50, 3]
    vectors = (torch.randn(400, 3, generator=generator) @ basis.T) * 10 ** torch.randn(400, 1, generator=generator)
    projection = direction_projection(vectors, 3)
    assert projection.shape == (50, 3)
    torch.testing.assert_close(projection.T @ projection, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(projection @ projection.T @ basis, basis, atol=1e-4, rtol=0)  # same subspace
    assert torch.equal(direction_projection(vectors, 3), projection)  # seeded: reproducible
    assert direction_projection(vectors, 50) is None


def test_ivf_with_projected_routing_round_trips(tmp_path: Path) -> None:
    database, queries = torch.randn(1200, 10), torch.randn(40, 10)
    index = build_index("ivf", 10, nlist=8, nprobe=100, routing_dim=4)
    index.add(database)
    assert index.projection.shape == (10, 4) and index.centroids.shape[1] == 5
    _assert_search_equals_brute_force(index, database, queries, k=3)  # every cell probed: exact
    index.save(tmp_path / "ivf.pt")
    loaded = load_index(tmp_path / "ivf.pt", "ivf")
    assert loaded.routing_dim == 4 and torch.equal(loaded.projection, index.projection)
    for original, reloaded in zip(index.search(queries, 3), loaded.search(queries, 3)):
        assert torch.equal(original, reloaded)
    with pytest.raises(ValueError, match="IVFIndex: routing_dim must be an integer >= 1; got 0"):
        build_index("ivf", 10, routing_dim=0)


def test_exact_index_warns_when_cuda_vectors_meet_cpu_only_faiss(caplog: pytest.LogCaptureFixture) -> None:
    from grood.method.neighbours import _faiss_gpu_available

    if _faiss_gpu_available():
        pytest.skip("this faiss has GPU support: the index moves to the GPU instead of warning")
    index = build_index("faiss_flat", 4)
    with caplog.at_level("WARNING", logger="grood.method.neighbours"):
        index._move_to_gpu_if_cuda(torch.device("cuda"))  # what add() does with CUDA vectors
    assert "no GPU support" in caplog.text and "index='torch'" in caplog.text
    assert not index.on_gpu
    caplog.clear()
    with caplog.at_level("WARNING", logger="grood.method.neighbours"):
        index._move_to_gpu_if_cuda(torch.device("cpu"))
    assert caplog.text == ""


@pytest.mark.parametrize("kind", ["faiss_flat", "torch"])
def test_batched_adds_after_reserve_equal_one_add(kind: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    database = torch.randn(1000, 24, generator=generator)
    queries = torch.randn(50, 24, generator=generator)
    whole = build_index(kind, 24)
    whole.add(database)
    batched = build_index(kind, 24)
    assert batched.incremental_add
    batched.reserve(600)  # less than all: the adds beyond it must still grow the storage
    for start in range(0, 1000, 128):
        batched.add(database[start : start + 128])
    assert batched.ntotal == 1000
    for got, expected in zip(batched.search(queries, 3), whole.search(queries, 3)):
        assert torch.equal(got, expected)
    batched.save(tmp_path / "index")
    reloaded = load_index(tmp_path / "index", kind)
    assert reloaded.ntotal == 1000
    assert torch.equal(reloaded.search(queries, 3)[1], whole.search(queries, 3)[1])


def test_exact_index_reserve_allocates_the_faiss_storage_once() -> None:
    index = build_index("faiss_flat", 16)
    index.reserve(4096)
    storage = index.index.codes.data()
    for start in range(0, 4096, 512):
        index.add(torch.randn(512, 16))
    assert index.index.codes.data() == storage  # no reallocation (and no copy) during the adds


def test_reserve_errors_and_ivf_needs_one_add() -> None:
    with pytest.raises(ValueError, match="count >= 0"):
        build_index("torch", 4).reserve(-1)
    assert not build_index("ivf", 4).incremental_add


def test_torch_index_saves_only_the_vectors_not_the_spare_capacity(tmp_path: Path) -> None:
    index = build_index("torch", 64)
    index.reserve(100_000)
    index.add(torch.randn(10, 64))
    index.save(tmp_path / "index.pt")
    assert (tmp_path / "index.pt").stat().st_size < 100_000  # 10 x 64 float32 = 2.5 kB, not 25.6 MB


@pytest.mark.parametrize("k", [1, 5])
def test_torch_index_merges_database_blocks_exactly(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many database blocks and query chunks (ragged last ones), with exact ties between duplicated rows."""
    from grood.method.neighbours import torch_index as neighbours  # the "torch" index reads its block sizes there

    monkeypatch.setattr(neighbours, "TORCH_DATABASE_BLOCK", 70)
    generator = torch.Generator().manual_seed(6)
    database = torch.randn(1000, 12, generator=generator)
    database[500:520] = database[100:120]  # duplicates in another block: the earlier row must win a tie
    queries = torch.cat([torch.randn(230, 12, generator=generator), database[100:120]])
    index = build_index("torch", 12, max_chunk_elements=70 * 37)  # 37 queries per chunk
    index.add(database)
    _assert_matches_brute_force_with(index, database, queries, k)
    distances, indices = index.search(database[100:120], 1)
    assert torch.equal(indices[:, 0], torch.arange(100, 120)) and (distances == 0).all()


def _assert_matches_brute_force_with(index, database: torch.Tensor, queries: torch.Tensor, k: int) -> None:
    distances, indices = index.search(queries, k)
    expected_distances, _ = _brute_force(database, queries, k)
    torch.testing.assert_close(distances.double(), expected_distances, rtol=1e-4, atol=1e-4)
    # every returned row is at its returned distance
    direct = (queries.unsqueeze(1) - database[indices]).norm(dim=2)
    torch.testing.assert_close(direct, distances, rtol=1e-5, atol=1e-5)


def _clustered_gradient_like(count: int, dim: int, seed: int) -> torch.Tensor:
    """Rows pointing along 5 directions (plus noise) with norms spanning six orders of magnitude, as GROOD
    gradients (``||g|| = p_ood(h)``, one direction per class)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, dim, generator=torch.Generator().manual_seed(0))  # shared by every call
    picks = torch.randint(0, 5, (count,), generator=generator)
    noisy = centres[picks] + 0.1 * torch.randn(count, dim, generator=generator)
    directions = torch.nn.functional.normalize(noisy, dim=1)
    return directions * torch.pow(10.0, -6.0 * torch.rand(count, 1, generator=generator))


@pytest.mark.parametrize("k", [1, 5])
def test_norm_pruning_is_exact_and_skips_blocks(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from grood.method.neighbours import torch_index as neighbours  # the "torch" index reads its block sizes there

    monkeypatch.setattr(neighbours, "TORCH_DATABASE_BLOCK", 64)
    monkeypatch.setattr(neighbours, "PRUNING_QUERY_BLOCK", 16)
    database = _clustered_gradient_like(3000, 8, seed=7)
    queries = torch.cat([_clustered_gradient_like(300, 8, seed=8), database[:20], 1.5 * database[20:40]])
    pruned = build_index("torch", 8, norm_pruning=True)
    plain = build_index("torch", 8)
    scanned = []
    original = neighbours.TorchIndex._block_search

    def counting(self, chunk, k_, firsts, *args, **kwargs):
        scanned.append(len(list(firsts)) * chunk.shape[0])
        return original(self, chunk, k_, firsts, *args, **kwargs)

    for index in (pruned, plain):
        index.add(database[:1700])
        index.add(database[1700:])
    monkeypatch.setattr(neighbours.TorchIndex, "_block_search", counting)
    distances, indices = pruned.search(queries, k)
    pruned_scans = sum(scanned)
    scanned.clear()
    expected_distances, expected_indices = plain.search(queries, k)
    assert pruned_scans < 0.5 * sum(scanned)  # (query, block) pairs scanned
    assert pruned.compared_fraction < 0.5 and plain.compared_fraction == 1.0
    torch.testing.assert_close(distances, expected_distances)
    assert (indices == expected_indices).float().mean() > 0.99  # rows may differ only on exact ties
    # rows are reported in add order, whatever the norm order of the storage
    direct = (queries.unsqueeze(1) - database[indices]).norm(dim=2)
    torch.testing.assert_close(direct, distances)
    assert torch.equal(indices[300:320, 0], torch.arange(20))


def test_norm_pruning_adds_after_a_search_save_and_load(tmp_path: Path) -> None:
    database = _clustered_gradient_like(2500, 6, seed=9)
    queries = _clustered_gradient_like(200, 6, seed=10)
    index = build_index("torch", 6, norm_pruning=True)
    index.add(database[:1000])
    index.search(queries, 3)  # sorts the first 1000
    index.add(database[1000:])  # appended unsorted: the next search sorts again
    assert torch.equal(index.vectors, database)  # add order
    expected_distances, expected_indices = _brute_force(database, queries, 3)
    distances, indices = index.search(queries, 3)
    torch.testing.assert_close(distances.double(), expected_distances, rtol=1e-4, atol=1e-7)
    assert torch.equal(indices, expected_indices)
    index.save(tmp_path / "index.pt")
    reloaded = load_index(tmp_path / "index.pt", "torch")
    assert reloaded.norm_pruning and torch.equal(reloaded.vectors, database)
    assert torch.equal(reloaded.search(queries, 3)[1], indices)


def test_norm_pruning_on_equal_norms_still_exact() -> None:
    generator = torch.Generator().manual_seed(11)
    database = torch.nn.functional.normalize(torch.randn(5000, 16, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(100, 16, generator=generator), dim=1)
    index = build_index("torch", 16, norm_pruning=True)
    index.add(database)
    expected_distances, expected_indices = _brute_force(database, queries, 2)
    distances, indices = index.search(queries, 2)
    torch.testing.assert_close(distances.double(), expected_distances, rtol=1e-4, atol=1e-5)
    assert torch.equal(indices, expected_indices)


def test_norm_pruning_bad_value() -> None:
    with pytest.raises(ValueError, match="norm_pruning must be true or false"):
        build_index("torch", 4, norm_pruning="yes")


def test_norm_pruning_reaches_a_neighbour_whose_norm_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The query's own norm band holds only vectors at distance ~0.5; its nearest (distance 0.4) has norm
    0.6, four blocks away: the search must widen its window to the reach of what it found first."""
    from grood.method.neighbours import torch_index as neighbours  # the "torch" index reads its block sizes there

    monkeypatch.setattr(neighbours, "TORCH_DATABASE_BLOCK", 64)
    generator = torch.Generator().manual_seed(12)
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    angle = 0.5
    band_norms = 0.95 + 0.1 * torch.rand(300, 1, generator=generator)
    band = band_norms * (math.cos(angle) * e1 + math.sin(angle) * e2)  # distance to e1 >= ~0.48
    low = (0.55 + 0.15 * torch.rand(300, 1, generator=generator)) * -e1  # norms 0.55-0.7, pointing away
    nearest = 0.6 * e1
    database = torch.cat([band, low, nearest.unsqueeze(0)])
    index = build_index("torch", 4, norm_pruning=True)
    index.add(database)
    distances, indices = index.search(e1.unsqueeze(0), 1)
    assert int(indices[0, 0]) == 600 and abs(float(distances[0, 0]) - 0.4) < 1e-6


@pytest.mark.parametrize("k", [1, 3])
def test_ivf_norm_bound_skips_cells_but_returns_the_nearest_of_the_probed_cells(k: int) -> None:
    """The IVF search skips probed cells whose norms lie out of a query's reach; what it returns is still the
    exact k nearest among *all* its probed cells (brute force over those cells' vectors, float64)."""
    from grood.method.kmeans import nearest_cells

    vectors = _gradient_like(8300, 16, seed=3)
    database, near = vectors[300:], vectors[:300]  # ID-like queries (neighbours at their own scale), and far ones
    generator = torch.Generator().manual_seed(4)
    queries = torch.cat([near * (1 + 0.05 * torch.randn(300, 16, generator=generator)),
                         30.0 * _gradient_like(30, 16, seed=5)])
    index = build_index("ivf", 16, nlist=50, nprobe=8)
    index.add(database)
    index.max_chunk_elements = 4_000  # several query chunks per cell
    distances, indices = index.search(queries, k)
    assert index.compared_fraction < 0.8  # the bound skipped (query, probed cell) pairs
    probes = nearest_cells(queries, index.centroids, index.nprobe, index.projection)
    sizes = index.list_sizes()
    for row in range(queries.shape[0]):
        cells = probes[row].tolist()
        members = torch.cat([index.ids[int(index.offsets[c]) : int(index.offsets[c + 1])] for c in cells if sizes[c]])
        expected = torch.cdist(queries[row : row + 1].double(), database[members].double(),
                               compute_mode="donot_use_mm_for_euclid_dist")[0]
        values, order = expected.topk(k, largest=False)
        torch.testing.assert_close(distances[row].double(), values, rtol=1e-4, atol=1e-12)
        gaps = torch.diff(torch.cat([values, values[-1:] * 2 + 1]))
        clear = gaps > 1e-4 * values.clamp(min=1e-30)
        assert torch.equal(indices[row][clear], members[order][clear])

"""Nearest-neighbour search in gradient space (paper eq. 6 and appendix A.4).

Three index kinds behind one small interface (:class:`NeighbourIndex`: ``add``, ``search``,
``ntotal``, ``dim``, ``save``, ``load``), made by :func:`build_index`:

- ``"exact"`` (default): FAISS ``IndexFlatL2``, exact search.
- ``"ivf"``: an inverted-file index (appendix A.4) in torch: the vectors are split into k-means cells
  and a query scans only the ``nprobe`` cells nearest to it, the cells regrouped so that each is
  compared with all the queries that probe it in one matrix product, and cells balanced for vectors
  whose norms span orders of magnitude (see :class:`IVFIndex`). Defaults: ``nlist = round(sqrt(N))``
  (at most ``N // 39``), ``nprobe`` :data:`DEFAULT_NPROBE`. Runs on the vectors' device, CUDA included.
- ``"torch"``: exact search in pure torch (blocks of queries against blocks of vectors), no FAISS
  needed; runs on the vectors' device, CUDA included. ``norm_pruning=True`` skips, still exactly, the
  vectors whose norm alone puts them out of reach (see :class:`TorchIndex`).

Distances are Euclidean and **not squared** everywhere: FAISS's ``METRIC_L2`` returns squared
distances, which are clamped at 0 and square-rooted here.

faiss is imported through :func:`grood.method.faiss_loader.import_faiss`, which puts the OpenBLAS
bundled in faiss-cpu wheels on the CPU's AVX2/AVX-512 kernels (5x faster exact search where its own
detection fails). FAISS runs on the GPU when the vectors added first are CUDA tensors and the installed faiss has GPU
support (``faiss.StandardGpuResources`` and ``faiss.get_num_gpus() > 0``); on the CPU otherwise.
Inputs may live on any device; they are converted to contiguous float32 numpy for FAISS (no copy
when they already are CPU float32 contiguous tensors).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from grood.io import atomic_file
from grood.method._checks import check_finite, check_matrix
from grood.method.faiss_loader import import_faiss
from grood.method.kmeans import balanced_centroids, direction_projection, nearest_cells, routing_coordinates
from grood.progress import phase, track

log = logging.getLogger(__name__)

#: The IVF index's k-means needs at least this many training vectors per cell (FAISS's rule; fewer: a clear error).
MIN_TRAIN_POINTS_PER_LIST = 39
#: k-means trains on at most this many vectors per cell (a random subset beyond that; FAISS's own cap is 256).
MAX_TRAIN_POINTS_PER_LIST = 64
DEFAULT_NPROBE = 12
DEFAULT_KMEANS_ITERATIONS = 10
#: The "torch" index compares each block of queries with this many indexed vectors at a time.
TORCH_DATABASE_BLOCK = 4096
#: Queries per block of the "torch" index with ``norm_pruning`` (sorted by norm; smaller: tighter windows).
PRUNING_QUERY_BLOCK = 256
#: Dimensions of the projected gradient directions that the IVF index routes by (see :class:`IVFIndex`).
DEFAULT_ROUTING_DIM = 128


def _faiss() -> Any:
    """Import faiss lazily (so that the "torch" index works where faiss is not installed), on this CPU's
    fast BLAS kernels (:mod:`grood.method.faiss_loader`)."""
    return import_faiss()


def _faiss_gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_faiss(vectors: torch.Tensor) -> np.ndarray:
    """``[N, D]`` tensor on any device -> C-contiguous float32 numpy (no copy if it already is)."""
    return np.ascontiguousarray(vectors.detach().to(device="cpu", dtype=torch.float32).numpy())


def _direct_distances(
    queries: torch.Tensor, vectors: torch.Tensor, rows: torch.Tensor, max_chunk_elements: int
) -> torch.Tensor:
    """``[B, k]`` Euclidean distances of ``queries [B, D]`` to ``vectors[rows]`` (``rows [B, k]``),
    computed from the differences (no cancellation), a chunk of queries at a time so that the
    ``[chunk, k, D]`` differences hold at most ``max_chunk_elements`` entries."""
    per_query = max(1, rows.shape[1] * vectors.shape[1])
    chunk = max(1, max_chunk_elements // per_query)
    parts = [
        torch.linalg.vector_norm(queries[start : start + chunk].unsqueeze(1) - vectors[rows[start : start + chunk]], dim=2)
        for start in range(0, queries.shape[0], chunk)
    ]
    return torch.cat(parts)  # search() never passes 0 queries


def _squared_row_norms(vectors: torch.Tensor) -> torch.Tensor:
    """``[N]`` squared Euclidean norms of the rows of ``vectors [N, D]`` (no ``[N, D]`` temporary)."""
    return torch.linalg.vector_norm(vectors, dim=1).square_()


class NeighbourIndex:
    """A set of ``dim``-dimensional vectors searched by Euclidean distance.

    Subclasses implement ``_add``, ``_search`` (returning *non-squared* distances), ``ntotal``,
    ``save`` and ``load``; this class checks the inputs.
    """

    kind: ClassVar[str] = ""
    #: Whether vectors may be added in several batches with the same result as one add of them all.
    #: False for "ivf", which trains its cells on the first add.
    incremental_add: ClassVar[bool] = True

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"index dimension must be >= 1; got {dim}")
        self.dim = int(dim)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        raise NotImplementedError

    def add(self, vectors: torch.Tensor) -> None:
        """Append ``vectors [M, dim]`` (finite floats, any device)."""
        check_matrix("vectors", vectors, dim=self.dim)
        check_finite("vectors", vectors)
        if vectors.shape[0] == 0:
            raise ValueError("add() got 0 vectors; give at least one")
        self._add(vectors)

    def reserve(self, count: int) -> None:
        """Make room for ``count`` more vectors, so that adding them in batches allocates (and copies)
        the storage once. A hint: indexes that cannot reserve ignore it."""
        if isinstance(count, bool) or int(count) < 0:
            raise ValueError(f"reserve() needs a count >= 0; got {count}")

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest indexed vectors of each query, nearest first.

        Args:
            queries: ``[N, dim]`` finite floats, any device.
            k: ``1 <= k <= ntotal``.
        Returns:
            ``distances [N, k]`` (float32, Euclidean, not squared) and ``indices [N, k]`` (int64, rows in
            the order they were added), on the device of ``queries``.
        """
        check_matrix("queries", queries, dim=self.dim)
        check_finite("queries", queries)
        if self.ntotal == 0:
            raise ValueError(f"cannot search an empty {self.kind!r} index: add() vectors first")
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= self.ntotal:
            raise ValueError(f"k must be an integer in 1..{self.ntotal} (the number of indexed vectors); got {k}")
        if queries.shape[0] == 0:
            empty = torch.empty((0, int(k)), device=queries.device)
            return empty, empty.long()
        distances, indices = self._search(queries, int(k))
        return distances.to(queries.device), indices.to(queries.device)

    def _add(self, vectors: torch.Tensor) -> None:
        raise NotImplementedError

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to the file ``path`` atomically."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "NeighbourIndex":
        """Read an index written by :meth:`save`; ``device``: where to keep it (None: CPU; a CUDA device
        puts a FAISS index on the GPU when faiss has GPU support, and the "torch" index's vectors there)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, ntotal={self.ntotal})"


class _FaissIndex(NeighbourIndex):
    """FAISS plumbing shared by "exact" and "ivf": GPU copy, squared-distance conversion, file I/O."""

    faiss_type: ClassVar[str] = ""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index: Any = None  # created by the subclass (or at the first add for IVF)
        self.on_gpu = False
        self._gpu_resources: Any = None

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _move_to_gpu_if_cuda(self, device: torch.device) -> None:
        if device.type != "cuda" or self.on_gpu:
            return
        if not _faiss_gpu_available():
            log.warning(
                "the %r index got CUDA vectors but the installed faiss has no GPU support, so FAISS searches on "
                "the CPU (vectors are copied there); install faiss-gpu (environment.yml) or use index='torch', "
                "which searches on the GPU", self.kind,
            )
            return
        faiss = _faiss()
        self._gpu_resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self._gpu_resources, device.index or 0, self.index)
        self.on_gpu = True

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        squared, indices = self.index.search(_to_faiss(queries), k)
        missing = indices < 0
        if missing.any():
            rows = int(missing.any(axis=1).sum())
            raise RuntimeError(
                f"the {self.kind!r} index found fewer than k={k} neighbours for {rows} of {len(indices)} queries "
                f"(the cells it probed hold too few vectors); raise nprobe or use the 'exact' index"
            )
        distances = torch.from_numpy(squared).clamp_(min=0.0).sqrt_()
        return distances, torch.from_numpy(indices)

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.index is None:
            raise ValueError(f"nothing to save: the {self.kind!r} index is empty; add() vectors first")
        faiss = _faiss()
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        with atomic_file(path) as tmp:
            faiss.write_index(cpu_index, str(tmp))

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Any:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no index file at {path}")
        faiss = _faiss()
        index = faiss.read_index(str(path))  # returned as its concrete class (IndexFlatL2, IndexIVFFlat)
        if type(index).__name__ != cls.faiss_type:
            raise ValueError(f"{path} holds a FAISS {type(index).__name__}, not the {cls.faiss_type} of kind {cls.kind!r}")
        return index


class ExactIndex(_FaissIndex):
    """``"exact"``: FAISS ``IndexFlatL2`` (brute force, exact)."""

    kind = "exact"
    faiss_type = "IndexFlatL2"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index = _faiss().IndexFlatL2(self.dim)

    def _add(self, vectors: torch.Tensor) -> None:
        self._move_to_gpu_if_cuda(vectors.device)
        self.index.add(_to_faiss(vectors))

    def reserve(self, count: int) -> None:
        """Grow the CPU index's code storage to ``ntotal + count`` vectors now (one allocation), then
        give the size back: the capacity stays, so the adds that follow copy without reallocating.
        A GPU index (created at the first CUDA add) ignores it."""
        super().reserve(count)
        codes = getattr(self.index, "codes", None)
        if self.on_gpu or codes is None or not hasattr(codes, "resize"):
            return
        used = int(codes.size())
        codes.resize(used + int(count) * self.dim * 4)  # float32 codes: 4 bytes per dimension
        codes.resize(used)  # std::vector keeps its capacity when it shrinks

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "ExactIndex":
        faiss_index = cls._read(path)
        index = cls(faiss_index.d)
        index.index = faiss_index
        if device is not None:
            index._move_to_gpu_if_cuda(torch.device(device))
        return index


def default_nlist(num_vectors: int) -> int:
    """The IVF default: ``round(sqrt(N))`` cells, at most ``N // 39`` (so k-means has enough points)."""
    return max(1, min(round(math.sqrt(num_vectors)), num_vectors // MIN_TRAIN_POINTS_PER_LIST))


class IVFIndex(NeighbourIndex):
    """``"ivf"``: an inverted-file index (appendix A.4), approximate search, in torch (CPU or CUDA).

    As FAISS's ``IndexIVFFlat``: the vectors are split into k-means cells (inverted lists) and a query
    is compared only with the vectors of the ``nprobe`` cells whose centroids are nearest to it. Two
    differences, both measured in ``scripts/bench_method.py``:

    - **List-major scan.** A batch of queries is regrouped by cell, and each probed cell is compared
      with all the queries that probe it in one matrix product. FAISS scans cell by cell for each query,
      which re-reads the cells from memory for every query: at CIFAR scale (50,000 x 512 gradients,
      60,000 queries, nprobe 12 of 224 cells) its search took 13.7 s against 16.6 s for exact search on
      2 cores, although it computes 18x fewer distances.
    - **Log-polar cells.** GROOD gradients' norms span orders of magnitude, and k-means on the raw
      vectors puts most of them in one cell near the origin (69% of 200,000 gradients in one of 447 cells
      at ImageNet-like scale), which every ID query then scans. Here the cells are k-means cells of the
      vectors' log-polar coordinates ``(ln ||g||, g / ||g||)`` (:func:`grood.method.kmeans.routing_coordinates`),
      queries are routed to the cells nearest them in those coordinates, and distances are then computed
      in the original space. The directions are projected onto their top ``routing_dim`` (128) principal
      dimensions (:func:`grood.method.kmeans.direction_projection`), which makes routing up to
      ``dim / 128`` times cheaper; recall@1 at ImageNet-like scale (nprobe 12; ``python
      scripts/bench_method.py --scales imagenet --routing-dim R``): 0.974 with R = 32, 0.988 with 128,
      0.989 with all 2048 (whose fit took 21.4 s against 12.2 s with 128). Cells still larger than 4x the average are split
      by their own k-means (:func:`grood.method.kmeans.balanced_centroids`), so the index holds
      ``num_cells >= nlist`` cells. At CIFAR scale, IVF's recall@1 for OOD queries rose from 0.74 (raw
      cells) to 0.996.

    The cells are trained on the vectors of the **first** :meth:`add` (k-means on at most
    ``64 * nlist`` of them, a fixed-seed random subset, ``niter`` iterations); later adds are assigned
    to the existing cells.

    Args:
        nlist: number of k-means cells before balancing; None (default) picks :func:`default_nlist`
            of the first add, ``round(sqrt(N))``.
        nprobe: cells scanned per query (default :data:`DEFAULT_NPROBE`). Larger: slower, higher recall.
        niter: k-means iterations (default 10, FAISS's default for IVF).
        routing_dim: the gradient directions are routed in their top ``routing_dim`` principal
            dimensions (default :data:`DEFAULT_ROUTING_DIM`; all when ``>= dim``).
        device: where the centroids and lists live (default: the device of the first add).

    Raises ``ValueError`` at the first add when it holds fewer than ``39 * nlist`` vectors.
    """

    kind = "ivf"
    incremental_add = False  # the cells are trained on the first add

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        niter: int = DEFAULT_KMEANS_ITERATIONS,
        routing_dim: int = DEFAULT_ROUTING_DIM,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(dim)
        if nlist is not None and (isinstance(nlist, bool) or int(nlist) < 1):
            raise ValueError(f"nlist must be >= 1 (or None for the default); got {nlist}")
        if nprobe is None or int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1; got {nprobe}")
        if int(niter) < 1:
            raise ValueError(f"niter must be >= 1; got {niter}")
        if isinstance(routing_dim, bool) or int(routing_dim) < 1:
            raise ValueError(f"routing_dim must be >= 1; got {routing_dim}")
        self.routing_dim = int(routing_dim)
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.niter = int(niter)
        self.device = None if device is None else torch.device(device)
        self.max_chunk_elements = 2**26
        self.projection: torch.Tensor | None = None  # [dim, routing_dim] (None: directions unprojected)
        self.centroids: torch.Tensor | None = None  # [num_cells, 1 + routing_dim], in routing coordinates
        self.vectors = torch.empty((0, self.dim))  # [ntotal, dim], grouped by cell
        self.ids = torch.empty(0, dtype=torch.long)  # [ntotal]: row of each vector in the order added
        self.offsets = torch.zeros(1, dtype=torch.long)  # [num_cells + 1]: cell c is rows offsets[c]:offsets[c+1]
        self._squared_norms = torch.empty(0)

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_cells(self) -> int:
        """Number of cells after balancing (0 before the first add)."""
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    def list_sizes(self) -> torch.Tensor:
        """``[num_cells]`` number of vectors in each cell."""
        return torch.diff(self.offsets)

    def largest_list_fraction(self) -> float:
        """Fraction of the indexed vectors held by the largest cell (``1/num_cells`` when balanced)."""
        return float(self.list_sizes().max()) / max(1, self.ntotal)

    def _add(self, vectors: torch.Tensor) -> None:
        if self.device is None:
            self.device = vectors.device
        vectors = vectors.detach().to(device=self.device, dtype=torch.float32)
        first = self.centroids is None
        if first:
            self._train(vectors)
        new_cells = nearest_cells(vectors, self.centroids, 1, self.projection)[:, 0]
        new_ids = torch.arange(self.ntotal, self.ntotal + vectors.shape[0], device=self.device)
        if first:  # nothing indexed yet: no concatenation (at ImageNet scale, a 1.6 GB copy saved)
            cells, all_vectors, all_ids = new_cells, vectors, new_ids
        else:
            cells = torch.cat([self._cells_of_indexed(), new_cells])
            all_vectors = torch.cat([self.vectors.to(self.device), vectors])
            all_ids = torch.cat([self.ids.to(self.device), new_ids])
        order = torch.sort(cells, stable=True).indices
        self.vectors, self.ids = all_vectors[order], all_ids[order]
        counts = torch.bincount(cells, minlength=self.num_cells)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), torch.cumsum(counts, 0)])
        self._squared_norms = _squared_row_norms(self.vectors)
        if first:
            self._warn_if_imbalanced()

    def _warn_if_imbalanced(self) -> None:
        # balancing splits every oversized cell it can; what is left are many identical vectors
        fraction = self.largest_list_fraction()
        if self.num_cells > 1 and fraction > 0.1:
            log.warning(
                "IVF index: the largest of its %d cells holds %.0f%% of the %d vectors (balanced: %.1f%%), "
                "most likely identical vectors that no k-means can split; searches that probe it scan most of "
                "the data and are not faster than exact search: use the 'exact' or 'torch' index for these vectors",
                self.num_cells, 100 * fraction, self.ntotal, 100 / self.num_cells,
            )

    def _cells_of_indexed(self) -> torch.Tensor:
        sizes = self.list_sizes().to(self.device)
        return torch.repeat_interleave(torch.arange(sizes.shape[0], device=self.device), sizes)

    def _train(self, vectors: torch.Tensor) -> None:
        count = vectors.shape[0]
        nlist = default_nlist(count) if self.nlist is None else self.nlist
        needed = MIN_TRAIN_POINTS_PER_LIST * nlist
        if count < needed:
            raise ValueError(
                f"the 'ivf' index with nlist={nlist} needs at least {needed} vectors ({MIN_TRAIN_POINTS_PER_LIST} "
                f"per cell) in its first add() to train its cells; got {count}. Lower nlist to at most "
                f"{max(1, count // MIN_TRAIN_POINTS_PER_LIST)}, leave nlist=None for the default, or use the "
                "'exact' index"
            )
        sample_size = min(count, MAX_TRAIN_POINTS_PER_LIST * nlist)
        sample = torch.randperm(count, generator=torch.Generator().manual_seed(1234))[:sample_size]
        sample_vectors = vectors[sample.to(vectors.device)]
        self.projection = direction_projection(sample_vectors, self.routing_dim)
        coordinates = routing_coordinates(sample_vectors, self.projection)
        with phase(f"IVF k-means ({nlist} cells)", coordinates.shape[0]):
            self.centroids = balanced_centroids(coordinates, nlist, iterations=self.niter)
        self.nlist = nlist
        self.offsets = torch.zeros(self.num_cells + 1, dtype=torch.long, device=self.device)

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.detach().to(device=self.device, dtype=torch.float32)
        nprobe = min(self.nprobe, self.num_cells)
        probes = nearest_cells(queries, self.centroids, nprobe, self.projection)  # [B, nprobe]
        # candidates[b, s * k + j]: j-th best ranking value (and its row) of query b in its s-th probed cell
        best_values = torch.full((queries.shape[0], nprobe * k), math.inf, device=self.device)
        best_rows = torch.zeros((queries.shape[0], nprobe * k), dtype=torch.long, device=self.device)
        flat_cells = probes.flatten()
        pair_order = torch.sort(flat_cells, stable=True).indices  # (query, slot) pairs grouped by cell
        pair_counts = torch.bincount(flat_cells, minlength=self.num_cells).tolist()
        offsets = self.offsets.tolist()
        position = 0
        for cell, pairs in enumerate(pair_counts):
            if pairs == 0:
                continue
            pair_ids = pair_order[position : position + pairs]
            position += pairs
            first, last = offsets[cell], offsets[cell + 1]
            if last == first:
                continue
            found = min(k, last - first)
            chunk = max(1, self.max_chunk_elements // (last - first))
            for start in range(0, pairs, chunk):
                query_rows, slots = pair_ids[start : start + chunk] // nprobe, pair_ids[start : start + chunk] % nprobe
                # rank by ||x||^2 - 2 q.x (= ||q - x||^2 - ||q||^2): one matrix product per cell (and chunk)
                ranking = torch.addmm(
                    self._squared_norms[first:last], queries[query_rows], self.vectors[first:last].T, alpha=-2.0
                )
                values, columns = torch.topk(ranking, found, dim=1, largest=False, sorted=True)
                target = (slots * k).unsqueeze(1) + torch.arange(found, device=self.device)
                best_values[query_rows.unsqueeze(1), target] = values
                best_rows[query_rows.unsqueeze(1), target] = columns + first
        values, picked = torch.topk(best_values, k, dim=1, largest=False, sorted=True)
        missing = torch.isinf(values).any(dim=1)
        if missing.any():
            raise RuntimeError(
                f"the 'ivf' index found fewer than k={k} neighbours for {int(missing.sum())} of {queries.shape[0]} "
                f"queries (the cells it probed hold too few vectors); raise nprobe or use the 'exact' index"
            )
        rows = best_rows.gather(1, picked)
        distances = _direct_distances(queries, self.vectors, rows, self.max_chunk_elements)
        distances, order = torch.sort(distances, dim=1)
        return distances, self.ids[rows.gather(1, order)]

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.ntotal == 0:
            raise ValueError("nothing to save: the 'ivf' index is empty; add() vectors first")
        state = {
            "kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "niter": self.niter,
            "routing_dim": self.routing_dim, "centroids": self.centroids.cpu(),
            "projection": None if self.projection is None else self.projection.cpu(), "vectors": self.vectors.cpu(), "ids": self.ids.cpu(),
            "offsets": self.offsets.cpu(),
        }
        with atomic_file(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "IVFIndex":
        state = _load_torch_index_file(path, cls.kind)
        index = cls(
            state["vectors"].shape[1], nlist=state["nlist"], nprobe=state["nprobe"], niter=state["niter"],
            routing_dim=state["routing_dim"],
        )
        index.device = torch.device("cpu") if device is None else torch.device(device)
        index.centroids = state["centroids"].to(index.device)
        index.projection = None if state["projection"] is None else state["projection"].to(index.device)
        index.vectors = state["vectors"].to(index.device)
        index.ids = state["ids"].to(index.device)
        index.offsets = state["offsets"].to(index.device)
        index._squared_norms = _squared_row_norms(index.vectors)
        return index


def _load_torch_index_file(path: str | os.PathLike[str], kind: str) -> dict:
    """The dict that an index of ``kind`` saved with ``torch.save`` to ``path``; clear errors otherwise."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no index file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(
            f"{path} is not an index file written by grood's {kind!r} index ({error.__class__.__name__}); "
            "refit the detector to rebuild it"
        ) from error
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} holds a {found!r} index, not the {kind!r} index asked for")
    return state


class TorchIndex(NeighbourIndex):
    """``"torch"``: exact search in pure torch, without FAISS.

    Vectors are kept (float32) on ``device`` (default: the device of the first add). Like FAISS's BLAS
    path, a block of queries is compared with :data:`TORCH_DATABASE_BLOCK` indexed vectors at a time
    (one matrix product into one reused buffer of at most ``max_chunk_elements`` entries), and the best
    ``k`` so far are kept. Neighbours are ranked by ``||x||^2 - 2 q.x``; the distances returned for them
    are then computed directly from ``q - x``, so they carry no cancellation error.

    ``norm_pruning=True`` makes the search skip what cannot hold a neighbour, still exactly: by the
    triangle inequality ``||q - x|| >= | ||q|| - ||x|| |``, so a vector whose norm differs from the
    query's by more than the ``k``-th best distance found so far cannot be among the ``k`` nearest. The
    vectors are stored sorted by norm (at the first search after adds; a transient copy of them is
    made then), queries are processed in blocks of :data:`PRUNING_QUERY_BLOCK` of similar norm, and each
    block scans the blocks of vectors outward from its own norms until both sides lie beyond every one
    of its queries' reach: the largest true distance (computed from the differences) of the ``k`` rows
    found so far, plus a margin for float32 rounding. GROOD gradients' norms are ``p_ood(h)``
    and span orders of magnitude, so this scans a fraction of them (``scripts/bench_method.py``,
    ``grood-pruned``); for vectors of equal norms it scans everything, a little slower than without.
    """

    kind = "torch"

    def __init__(
        self,
        dim: int,
        device: str | torch.device | None = None,
        max_chunk_elements: int = 2**26,
        norm_pruning: bool = False,
    ) -> None:
        super().__init__(dim)
        if int(max_chunk_elements) < 1:
            raise ValueError(f"max_chunk_elements must be >= 1; got {max_chunk_elements}")
        if not isinstance(norm_pruning, bool):
            raise ValueError(f"norm_pruning must be true or false; got {norm_pruning!r}")
        self.device = None if device is None else torch.device(device)
        self.max_chunk_elements = int(max_chunk_elements)
        self.norm_pruning = norm_pruning
        self._storage: torch.Tensor | None = None  # [capacity, dim]; rows :ntotal hold the vectors
        self._count = 0
        self._squared_norms: torch.Tensor | None = None  # [ntotal] of the stored rows
        # norm_pruning: rows :_sorted_count of the storage are sorted by norm, and _ids [_sorted_count]
        # holds the add-order row of each; later rows are in add order
        self._ids: torch.Tensor | None = None
        self._sorted_count = 0
        #: (query, indexed vector) pairs compared, and pairs searched, by all searches so far.
        self.pairs_compared = 0
        self.pairs_searched = 0

    @property
    def ntotal(self) -> int:
        return self._count

    @property
    def compared_fraction(self) -> float | None:
        """Fraction of the (query, indexed vector) pairs that the searches so far compared: 1.0 without
        ``norm_pruning``, less with it; None before the first search."""
        return self.pairs_compared / self.pairs_searched if self.pairs_searched else None

    def _row_ids(self) -> torch.Tensor | None:
        """``[ntotal]`` the add-order row of each stored row; None while the storage is in add order."""
        if self._ids is None:
            return None
        tail = torch.arange(self._sorted_count, self._count, device=self._ids.device)
        return torch.cat([self._ids, tail])

    @property
    def vectors(self) -> torch.Tensor:
        """``[ntotal, dim]`` float32, the indexed vectors in the order added (a view of the storage; a
        copy once ``norm_pruning`` has sorted it)."""
        if self._storage is None:
            return torch.empty((0, self.dim))
        stored = self._storage[: self._count]
        ids = self._row_ids()
        return stored if ids is None else stored[torch.argsort(ids)]

    def _grow(self, capacity: int, device: torch.device) -> None:
        """Storage for at least ``capacity`` vectors (the ones already added are copied over)."""
        if self._storage is not None and self._storage.shape[0] >= capacity:
            return
        if self.device is None:
            self.device = device
        storage = torch.empty((capacity, self.dim), dtype=torch.float32, device=self.device)
        if self._count:
            storage[: self._count] = self._storage[: self._count]
        self._storage = storage

    def reserve(self, count: int) -> None:
        super().reserve(count)
        self._grow(self._count + int(count), torch.device("cpu") if self.device is None else self.device)

    def _add(self, vectors: torch.Tensor) -> None:
        needed = self._count + vectors.shape[0]
        if self._storage is None or self._storage.shape[0] < needed:
            # amortised growth, as a vector: batches without reserve() copy O(ntotal) in all
            capacity = needed if self._storage is None else max(needed, 2 * self._storage.shape[0])
            self._grow(capacity, vectors.device)
        self._storage[self._count : needed] = vectors.detach().to(device=self.device, dtype=torch.float32)
        self._count = needed
        self._squared_norms = None

    def _sort_by_norm(self) -> None:
        """Reorder the stored rows by increasing norm (norm_pruning; after each series of adds)."""
        stored = self._storage[: self._count]
        ids = self._row_ids()
        if ids is None:
            ids = torch.arange(self._count, device=stored.device)
        norms = torch.linalg.vector_norm(stored, dim=1)
        order = torch.argsort(norms, stable=True)
        stored.copy_(stored[order])
        self._ids = ids[order]
        self._squared_norms = norms[order].square_()
        self._sorted_count = self._count

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm_pruning and self._sorted_count != self._count:
            self._sort_by_norm()
        database = self._storage[: self._count]
        if self._squared_norms is None:
            self._squared_norms = _squared_row_norms(database)
        database_rows = min(self._count, max(k, TORCH_DATABASE_BLOCK))
        query_rows = max(1, self.max_chunk_elements // database_rows)
        if self.norm_pruning:
            query_rows = min(query_rows, PRUNING_QUERY_BLOCK)
        query_rows = min(queries.shape[0], query_rows)
        queries = queries.to(device=database.device, dtype=torch.float32)
        # one buffer for every [query block, database block] ranking matrix (no fresh allocation per block)
        buffer = torch.empty(query_rows * database_rows, device=database.device)
        if self.norm_pruning:
            query_order = torch.argsort(torch.linalg.vector_norm(queries, dim=1))
        else:
            query_order = torch.arange(queries.shape[0], device=queries.device)
        distances = torch.empty((queries.shape[0], k), device=database.device)
        indices = torch.empty((queries.shape[0], k), dtype=torch.long, device=database.device)
        row_ids = self._row_ids()
        block_norms = self._block_norm_ranges(database_rows) if self.norm_pruning else None
        for start in range(0, queries.shape[0], query_rows):
            members = query_order[start : start + query_rows]
            chunk = queries[members]
            if self.norm_pruning:
                rows = self._pruned_block_search(chunk, k, database_rows, buffer, block_norms)
            else:
                rows = self._block_search(chunk, k, range(0, self._count, database_rows), database_rows, buffer)[1]
            # distances of the k found neighbours computed directly from the differences (no cancellation)
            values, order = torch.sort(_direct_distances(chunk, database, rows, self.max_chunk_elements), dim=1)
            rows = rows.gather(1, order)
            distances[members] = values
            indices[members] = rows if row_ids is None else row_ids[rows]
        self.pairs_searched += queries.shape[0] * self._count
        return distances, indices

    def _block_search(
        self,
        chunk: torch.Tensor,
        k: int,
        firsts: "range | list[int]",
        database_rows: int,
        buffer: torch.Tensor,
        best: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best ``k`` ranking values ``[B, k]`` and stored rows ``[B, k]`` of ``chunk [B, D]`` over the
        database blocks starting at ``firsts`` (merged with ``best`` so far when given)."""
        if best is None:
            best_values = torch.full((chunk.shape[0], k), math.inf, device=chunk.device)
            best_rows = torch.zeros((chunk.shape[0], k), dtype=torch.long, device=chunk.device)
        else:
            best_values, best_rows = best
        for first in firsts:
            block = self._storage[first : min(first + database_rows, self._count)]
            self.pairs_compared += chunk.shape[0] * block.shape[0]
            ranking = buffer[: chunk.shape[0] * block.shape[0]].view(chunk.shape[0], block.shape[0])
            # rank by ||x||^2 - 2 q.x (= ||q - x||^2 - ||q||^2): one GEMM, no pass of sqrt
            torch.addmm(self._squared_norms[first : first + block.shape[0]], chunk, block.T, alpha=-2.0, out=ranking)
            if k == 1:
                values, rows = ranking.min(dim=1, keepdim=True)
                better = values < best_values  # strict: the earlier row keeps a tie
                best_values = torch.where(better, values, best_values)
                best_rows = torch.where(better, rows + first, best_rows)
            else:
                values, rows = torch.topk(ranking, min(k, block.shape[0]), dim=1, largest=False, sorted=True)
                candidates = torch.cat([best_values, values], dim=1)
                best_values, positions = torch.topk(candidates, k, dim=1, largest=False, sorted=True)
                best_rows = torch.cat([best_rows, rows + first], dim=1).gather(1, positions)
        return best_values, best_rows

    def _block_norm_ranges(self, database_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the norm-sorted storage: ``norms [ntotal]`` (increasing), and the smallest and largest norm
        of each block of ``database_rows`` rows (``[num_blocks]`` each)."""
        norms = self._squared_norms.sqrt()
        starts = torch.arange(0, self._count, database_rows, device=norms.device)
        ends = torch.clamp(starts + database_rows, max=self._count) - 1
        return norms, norms[starts], norms[ends]

    def _pruned_block_search(
        self,
        chunk: torch.Tensor,
        k: int,
        database_rows: int,
        buffer: torch.Tensor,
        block_norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Stored rows ``[B, k]`` of the ``k`` nearest of ``chunk [B, D]`` (queries of similar norm), scanning
        the norm-sorted blocks outward from the chunk's median norm while any may hold a neighbour."""
        norms, block_min, block_max = block_norms
        num_blocks = block_min.shape[0]
        chunk_norms = torch.linalg.vector_norm(chunk, dim=1)
        # float32 rounding of the norms and of the direct distances: relative error below dim * 2^-24 each
        margin = 2.0 * self.dim * 2.0**-24
        centre = min(int(torch.searchsorted(norms, chunk_norms.median())) // database_rows, num_blocks - 1)
        best = self._block_search(chunk, k, [centre * database_rows], database_rows, buffer)
        left, right = centre - 1, centre + 1
        while left >= 0 or right < num_blocks:
            # reach: an upper bound on each query's k-th nearest distance, from the true distances of the
            # k rows found so far (computed from the differences: the ranking values carry cancellation)
            values, rows = best
            direct = _direct_distances(chunk, self._storage, rows, self.max_chunk_elements).amax(dim=1)
            found = torch.where(torch.isfinite(values).all(dim=1), direct, math.inf)
            reach = found + margin * (chunk_norms + found)
            go_left = left >= 0 and bool(block_max[left] >= (chunk_norms - reach).min())
            go_right = right < num_blocks and bool(block_min[right] <= (chunk_norms + reach).max())
            if not (go_left or go_right):
                break  # every block further out is farther in norm than every query's reach
            firsts = ([left * database_rows] if go_left else []) + ([right * database_rows] if go_right else [])
            best = self._block_search(chunk, k, firsts, database_rows, buffer, best)
            left = left - 1 if go_left else -1
            right = right + 1 if go_right else num_blocks
        return best[1]

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.ntotal == 0:
            raise ValueError("nothing to save: the 'torch' index is empty; add() vectors first")
        with atomic_file(path) as tmp:
            vectors = self.vectors.cpu()
            if vectors.untyped_storage().nbytes() > vectors.numel() * vectors.element_size():
                vectors = vectors.clone()  # torch.save writes a view's whole storage: drop the spare capacity
            state = {"kind": self.kind, "vectors": vectors, "max_chunk_elements": self.max_chunk_elements,
                     "norm_pruning": self.norm_pruning}
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "TorchIndex":
        blob = _load_torch_index_file(path, cls.kind)
        index = cls(blob["vectors"].shape[1], device=device, max_chunk_elements=blob["max_chunk_elements"],
                    norm_pruning=bool(blob.get("norm_pruning", False)))
        index._add(blob["vectors"])
        return index


INDEX_KINDS: dict[str, type[NeighbourIndex]] = {"exact": ExactIndex, "ivf": IVFIndex, "torch": TorchIndex}


def build_index(kind: str, dim: int, **params: Any) -> NeighbourIndex:
    """A new empty index: ``kind`` in ``"exact"`` (default elsewhere), ``"ivf"``, ``"torch"``.

    ``params`` go to the index's constructor (``nlist``, ``nprobe``, ``niter``, ``routing_dim`` for "ivf";
    ``device``, ``max_chunk_elements``, ``norm_pruning`` for "torch"; none for "exact").
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(INDEX_KINDS)}")
    try:
        return INDEX_KINDS[kind](dim, **params)
    except TypeError as error:
        raise ValueError(f"bad parameter(s) {sorted(params)} for index kind {kind!r}: {error}") from error


def load_index(
    path: str | os.PathLike[str], kind: str, device: str | torch.device | None = None
) -> NeighbourIndex:
    """Read the index of ``kind`` that :meth:`NeighbourIndex.save` wrote to ``path`` (onto ``device``,
    see :meth:`NeighbourIndex.load`)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(INDEX_KINDS)}")
    return INDEX_KINDS[kind].load(path, device=device)


def kth_neighbour_distance(
    index: NeighbourIndex,
    queries: torch.Tensor,
    k: int = 1,
    batch_size: int = 16384,
    progress: bool = False,
) -> torch.Tensor:
    """Eq. 6: ``S = min_x ||q - ∇H(h(x))||_2``, the distance of each query to its nearest indexed vector.

    With ``k > 1``, the distance to the ``k``-th nearest (paper Fig. 5 / appendix A.5).

    Args:
        queries: ``[N, D]``, searched ``batch_size`` rows at a time (tqdm bar when ``progress``).
    Returns:
        ``[N]`` float32 distances (not squared) on the device of ``queries``; larger = more OOD.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    check_matrix("queries", queries, dim=index.dim)
    if queries.shape[0] == 0:
        index.search(queries, k)  # still validates k against the index
        return torch.empty(0, device=queries.device)
    starts = range(0, queries.shape[0], int(batch_size))
    parts = [
        index.search(queries[start : start + batch_size], k)[0][:, k - 1]
        for start in track(starts, f"{index.kind} neighbour search ({queries.shape[0]:,} queries)", progress)
    ]
    return torch.cat(parts)

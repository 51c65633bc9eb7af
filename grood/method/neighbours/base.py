"""What the nearest-neighbour indexes share: the :class:`NeighbourIndex` interface, lazy faiss, helpers."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from grood.method._checks import check_finite, check_matrix
from grood.method.faiss_loader import import_faiss

log = logging.getLogger(__name__)


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


#: The differences of :func:`_direct_distances` are computed a chunk at a time of at most this many entries
#: (16 MB): larger chunks are fresh memory pages on every chunk, which made it 2.8x slower at ImageNet-like
#: scale (130,000 queries x 2 candidates x 2048 dimensions: 1.82 s with 2^26 entries, 0.66 s with 2^20).
DIRECT_CHUNK_ELEMENTS = 2**22


def _direct_distances(
    queries: torch.Tensor, vectors: torch.Tensor, rows: torch.Tensor, max_chunk_elements: int
) -> torch.Tensor:
    """``[B, k]`` Euclidean distances of ``queries [B, D]`` to ``vectors[rows]`` (``rows [B, k]``),
    computed from the differences (no cancellation), a chunk of queries at a time so that the
    ``[chunk, k, D]`` differences hold at most ``min(max_chunk_elements, DIRECT_CHUNK_ELEMENTS)`` entries."""
    per_query = max(1, rows.shape[1] * vectors.shape[1])
    chunk = max(1, min(max_chunk_elements, DIRECT_CHUNK_ELEMENTS) // per_query)
    parts = [
        torch.linalg.vector_norm(queries[start : start + chunk].unsqueeze(1) - vectors[rows[start : start + chunk]], dim=2)
        for start in range(0, queries.shape[0], chunk)
    ]
    return torch.cat(parts)  # search() never passes 0 queries


def _norm_reach(
    queries: torch.Tensor,
    query_norms: torch.Tensor,
    vectors: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    max_chunk_elements: int,
) -> torch.Tensor:
    """``[B]`` how far in norm a neighbour of each query may lie, for the norm bound
    ``||q - x|| >= | ||q|| - ||x|| |``: an upper bound on each query's ``k``-th nearest distance, from the
    ``k`` best ``rows [B, k]`` found so far (their ranking ``values [B, k]``, ``inf`` where not found).

    The distances are the true ones of those rows, computed from the differences (the ranking values
    carry cancellation), widened by a margin for float32 rounding of the norms and distances (relative
    error below ``dim * 2^-24`` each); ``inf`` where fewer than ``k`` rows were found.
    """
    direct = _direct_distances(queries, vectors, rows, max_chunk_elements).amax(dim=1)
    found = torch.where(torch.isfinite(values).all(dim=1), direct, math.inf)
    return _reach_of_distance(query_norms, found, queries.shape[1])


def _reach_of_distance(query_norms: torch.Tensor, distances: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B]``: the norm bound's reach for queries whose ``k``-th nearest neighbour lies at most
    ``distances [B]`` away (true distances, ``inf`` where unknown), widened by the float32 rounding margin
    of :func:`_norm_reach` (relative ``2 * dim * 2^-24`` of the norms and distances)."""
    margin = 2.0 * dim * 2.0**-24
    return distances + margin * (query_norms + distances)


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

    def add_training(self, vectors: torch.Tensor, rows: torch.Tensor, total_rows: int) -> None:
        """Add ``vectors [M, dim]`` taken from the training rows ``rows [M]`` (ascending, in
        ``0 .. total_rows-1``; fewer than ``total_rows`` when a fit keeps only some rows). Indexes whose
        training depends on the rows' positions ("faiss_ivf": the first loader batches) use them; the
        others just :meth:`add` the vectors."""
        self.add(vectors)

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


class _ScanBuffers:
    """Storage reused by one IVF scan from cell to cell: one flat buffer per name (the gathered queries, the
    products, the ranking matrix), grown when a larger one is needed (to twice the size asked, at most
    ``max_chunk_elements`` entries unless more are asked)."""

    def __init__(self, device: torch.device, max_chunk_elements: int) -> None:
        self._device = device
        self._max_chunk_elements = max_chunk_elements
        self._storage: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A ``shape`` tensor of ``dtype`` in the buffer ``name`` (its values: whatever was there)."""
        count = shape[0] * shape[1]
        buffer = self._storage.get(name)
        if buffer is None or buffer.numel() < count or buffer.dtype != dtype:
            buffer = torch.empty(max(count, min(self._max_chunk_elements, 2 * count)), dtype=dtype, device=self._device)
            self._storage[name] = buffer
        return buffer[:count].view(shape)

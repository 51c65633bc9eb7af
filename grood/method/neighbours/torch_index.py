"""``"torch"``: exact search in pure torch (no FAISS), optional norm pruning; CPU or CUDA."""

from __future__ import annotations

import math
import os

import torch

from grood.io import atomic_file
from grood.method.neighbours.compact import (
    SHORTLIST_PER_NEIGHBOUR,
    ExactSource,
    HalfVectors,
    Storage,
    exact_rerank,
)
from grood.method._checks import check_finite
from grood.valid_values import Count, checked_arguments
from grood.method.neighbours.base import (
    NeighbourIndex,
    _direct_distances,
    _norm_reach,
    _load_torch_index_file,
)

#: The "torch" index compares each block of queries with this many indexed vectors at a time.
TORCH_DATABASE_BLOCK = 4096
#: Queries per block of the "torch" index with ``norm_pruning`` (sorted by norm; smaller: tighter windows).
PRUNING_QUERY_BLOCK = 256


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

    ``storage="float16"`` keeps the vectors as float16 codes (half the memory,
    :class:`~grood.method.neighbours.compact.HalfVectors`): the search ranks by them, keeps each query's
    ``SHORTLIST_PER_NEIGHBOUR * k`` best, and returns the true float32 distances of the ``k`` nearest of
    those, computed from the exact vectors that :attr:`exact_source` gives (it must be set before searching;
    GROOD sets it to recompute the training gradients from the features). Build such an index with
    :meth:`build_streamed`, which writes the vectors in norm order directly (no sorting copy).
    """

    kind = "torch"

    @checked_arguments
    def __init__(
        self,
        dim: int,
        device: str | torch.device | None = None,
        max_chunk_elements: Count = 2**26,
        norm_pruning: bool = False,
        storage: Storage = "float32",
    ) -> None:
        super().__init__(dim)
        self.storage = storage
        #: storage="float16": the exact vectors of indexed rows, for the re-ranking (see the class docstring).
        self.exact_source: ExactSource | None = None
        if not isinstance(norm_pruning, bool):
            raise ValueError(f"norm_pruning must be true or false; got {norm_pruning!r}")
        self.device = None if device is None else torch.device(device)
        self.max_chunk_elements = int(max_chunk_elements)
        self.norm_pruning = norm_pruning
        self._storage: torch.Tensor | HalfVectors | None = None  # [capacity, dim]; rows :ntotal hold the vectors
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
        copy once ``norm_pruning`` has sorted it; decoded, a copy, with ``storage="float16"``)."""
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
        if self.storage == "float16":
            storage = HalfVectors(capacity, self.dim, self.device)
            if self._count:
                storage.codes[: self._count] = self._storage.codes[: self._count]
                storage.scales[: self._count] = self._storage.scales[: self._count]
        else:
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
        vectors = vectors.detach().to(device=self.device, dtype=torch.float32)
        if self.storage == "float16":
            self._storage.write(slice(self._count, needed), vectors)
        else:
            self._storage[self._count : needed] = vectors
        self._count = needed
        self._squared_norms = None

    def _sort_by_norm(self) -> None:
        """Reorder the stored rows by increasing norm (norm_pruning; after each series of adds)."""
        stored = self._storage[: self._count]
        ids = self._row_ids()
        if ids is None:
            ids = torch.arange(self._count, device=stored.device)
        norms = self._stored_norms()
        order = torch.argsort(norms, stable=True)
        if self.storage == "float16":
            self._storage = self._storage.take(order)  # a transient second copy (build_streamed makes none)
        else:
            stored.copy_(stored[order])
        self._ids = ids[order]
        self._squared_norms = norms[order].square_()
        self._sorted_count = self._count

    def _stored_norms(self) -> torch.Tensor:
        """``[ntotal]`` norms of the stored rows (decoded ones with float16 storage), a block at a time."""
        if self.storage == "float32":
            return torch.linalg.vector_norm(self._storage[: self._count], dim=1)
        return torch.cat([torch.linalg.vector_norm(self._storage[start : min(start + TORCH_DATABASE_BLOCK, self._count)], dim=1)
                          for start in range(0, self._count, TORCH_DATABASE_BLOCK)])

    def build_streamed(self, count: int, vectors_of: "callable", chunk_rows: int = 8192) -> None:
        """Fill an empty index with ``count`` vectors, ``vectors_of(rows: slice) -> [len, dim]`` float32 giving
        those of the rows ``rows`` (called twice per chunk: once for the norms, once to store them). With
        ``norm_pruning`` the vectors are written in norm order directly, so no sorted copy of them is made."""
        if self._count:
            raise ValueError("build_streamed() fills an empty index; this one holds vectors already")
        chunks = [slice(start, min(start + chunk_rows, count)) for start in range(0, count, chunk_rows)]
        if not self.norm_pruning:
            self.reserve(count)
            for rows in chunks:
                self.add(vectors_of(rows))
            return
        scratch = TorchIndex(self.dim, device=self.device, storage=self.storage)
        norms = torch.empty(count)
        for rows in chunks:  # the norms of the stored (decoded) vectors: the order of the sorted storage
            scratch._count = 0
            scratch.add(vectors_of(rows))
            norms[rows] = scratch._stored_norms().cpu()
        order = torch.argsort(norms, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(count)
        self._grow(count, torch.device("cpu") if self.device is None else self.device)
        for rows in chunks:
            vectors = vectors_of(rows).to(device=self.device, dtype=torch.float32)
            check_finite("vectors", vectors)
            targets = position[rows].to(self.device)
            if self.storage == "float16":
                self._storage.write(targets, vectors)
            else:
                self._storage[targets] = vectors
        self._count = self._sorted_count = count
        self._ids = order.to(self.device)
        self._squared_norms = norms[order].to(self.device).square_()

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm_pruning and self._sorted_count != self._count:
            self._sort_by_norm()
        if self.storage == "float16" and self.exact_source is None:
            raise ValueError("this 'torch' index stores float16 codes and re-ranks its candidates by their exact "
                             "vectors: set its exact_source before searching (GROOD.fit does)")
        wanted = k
        if self.storage == "float16":  # rank by the codes, then the shortlist's true distances decide
            k = min(self._count, SHORTLIST_PER_NEIGHBOUR * k)
        database = self._storage[: self._count] if self.storage == "float32" else self._storage
        if self._squared_norms is None:
            self._squared_norms = self._stored_norms().square_()
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
        distances = torch.empty((queries.shape[0], wanted), device=database.device)
        indices = torch.empty((queries.shape[0], wanted), dtype=torch.long, device=database.device)
        row_ids = self._row_ids()
        block_norms = self._block_norm_ranges(database_rows) if self.norm_pruning else None
        for start in range(0, queries.shape[0], query_rows):
            members = query_order[start : start + query_rows]
            chunk = queries[members]
            if self.norm_pruning:
                rows = self._pruned_block_search(chunk, k, database_rows, buffer, block_norms)
            else:
                rows = self._block_search(chunk, k, range(0, self._count, database_rows), database_rows, buffer)[1]
            if self.storage == "float16":
                ids = rows if row_ids is None else row_ids[rows]
                distances[members], indices[members] = exact_rerank(
                    chunk, ids, torch.ones_like(ids, dtype=torch.bool), self.exact_source, wanted,
                    self.max_chunk_elements)
                continue
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
            if self.storage == "float16":
                rows = slice(first, min(first + database_rows, self._count))
                block = self._decoded_block(rows)
            else:
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

    def _decoded_block(self, rows: slice) -> torch.Tensor:
        """float16 storage: the stored rows ``rows`` decoded into one reused float32 buffer."""
        size = rows.stop - rows.start
        if getattr(self, "_block_buffer", None) is None or self._block_buffer.shape[0] < size:
            self._block_buffer = torch.empty((max(size, TORCH_DATABASE_BLOCK), self.dim), device=self.device)
        return self._storage.decode_into(rows, self._block_buffer[:size])

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
        centre = min(int(torch.searchsorted(norms, chunk_norms.median())) // database_rows, num_blocks - 1)
        best = self._block_search(chunk, k, [centre * database_rows], database_rows, buffer)
        left, right = centre - 1, centre + 1
        while left >= 0 or right < num_blocks:
            reach = _norm_reach(chunk, chunk_norms, self._storage, *best, self.max_chunk_elements)
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
        if self.storage == "float16":
            raise ValueError("a 'torch' index with storage='float16' re-ranks from its exact_source (the training "
                             "features), which a saved file cannot hold: save one with storage='float32'")
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

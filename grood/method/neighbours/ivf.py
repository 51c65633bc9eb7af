"""``"ivf"``: an inverted-file index (appendix A.4) in torch, balanced log-polar k-means cells."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Annotated

import torch

from grood.method._checks import check_finite
from grood.progress import phase
from grood.valid_values import Count, Valid, checked_arguments
from grood.io import atomic_file
from grood.method.neighbours.compact import (
    SHORTLIST_PER_NEIGHBOUR,
    ExactSource,
    HalfVectors,
    Storage,
    exact_rerank,
)
from grood.method.kmeans import balanced_centroids, direction_projection, nearest_cells, routing_coordinates
from grood.method.neighbours.base import (
    NeighbourIndex,
    _ScanBuffers,
    _direct_distances,
    _norm_reach,
    _load_torch_index_file,
    _reach_of_distance,
    _squared_row_norms,
    log,
)

#: The IVF index's k-means needs at least this many training vectors per cell (FAISS's rule; fewer: a clear error).
MIN_TRAIN_POINTS_PER_LIST = 39
#: k-means trains on at most this many vectors per cell (a random subset beyond that; FAISS's own cap is 256).
MAX_TRAIN_POINTS_PER_LIST = 64
#: Cells scanned per query by default. 12 gave recall@1 0.976 (OOD 0.970) on a real CIFAR-10 ResNet-56 root
#: (49k 64-d training gradients, 221 cells: 5.4% of them probed); on the smoke root's real ResNet-20
#: features (5,000 training gradients, 71 cells) recall falls from 0.99 at 12 probes to 0.96 at 8 and 0.87 at
#: 4 (OOD tin): recall follows the fraction of cells probed. 24 probes: 1.000 on every smoke split.
DEFAULT_NPROBE = 24
DEFAULT_KMEANS_ITERATIONS = 10
#: Dimensions of the projected gradient directions that the IVF index routes by (see :class:`IVFIndex`).
DEFAULT_ROUTING_DIM = 128
#: How a probed cell is compared with its queries (``scan``): float32 products, or int8 codes (see :class:`IVFIndex`).
SCANS = ("float32", "int8")
#: The annotation of the ``scan`` parameter.
Scan = Annotated[str, Valid(choices=SCANS)]
#: ``scan="int8"``: candidates kept per query and per neighbour asked, whose true distances then decide.
INT8_CANDIDATES_PER_NEIGHBOUR = 2
#: ``scan="int8"``: the largest dimension whose int8 products (each at most 127^2) sum without overflowing int32.
MAX_INT8_DIM = (2**31 - 1) // (127 * 127)
#: ``scan="int8"``: a cell's queries are compared with it this many (query, vector) pairs at a time, so that its
#: int32 products and float32 ranking (8 bytes a pair) stay in the CPU's cache between their passes.
INT8_CHUNK_ELEMENTS = 2**19


def int8_codes(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise symmetric int8 quantisation of ``vectors [N, D]``: ``codes [N, D]`` (int8 in -127..127) and
    ``scales [N]`` (float32) with ``vectors ~ scales[:, None] * codes``; ``scale = max |v_i| / 127`` (a zero
    row gets zero codes). Each entry is off by at most half its row's scale."""
    codes = torch.empty(vectors.shape, dtype=torch.int8, device=vectors.device)
    scales = torch.empty(vectors.shape[0], device=vectors.device)
    rows = max(1, 2**20 // max(1, vectors.shape[1]))  # a block at a time: float temporaries of 4 MB at most
    for start in range(0, vectors.shape[0], rows):
        block = vectors[start : start + rows]
        block_scales = torch.amax(block.abs(), dim=1).clamp_(min=1e-30).div_(127.0)
        scales[start : start + rows] = block_scales
        codes[start : start + rows] = (block / block_scales.unsqueeze(1)).round_()
    return codes, scales


def default_nlist(num_vectors: int) -> int:
    """The IVF default: ``round(sqrt(N))`` cells, at most ``N // 39`` (so k-means has enough points)."""
    return max(1, min(round(math.sqrt(num_vectors)), num_vectors // MIN_TRAIN_POINTS_PER_LIST))


class IVFIndex(NeighbourIndex):
    """``"ivf"``: an inverted-file index (appendix A.4), approximate search, in torch (CPU or CUDA).

    As FAISS's ``IndexIVFFlat``: the vectors are split into k-means cells (inverted lists) and a query
    is compared only with the vectors of the ``nprobe`` cells whose centroids are nearest to it. Three
    differences, measured in ``scripts/bench_method.py``:

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

    - **Norm bound across probes.** Each query first scans its nearest cell; its other probed cells are
      then skipped where every norm in the cell differs from the query's by more than the ``k``-th
      distance found (``||q - x|| >= | ||q|| - ||x|| |``), which changes no result. At CIFAR scale
      (``scripts/bench_method.py``) it leaves about 78% of the probed pairs to compare.
    - **int8 scan** (``scan="int8"``, CPU only). The probed cells are ranked by int8 codes of the vectors and
      queries (:func:`int8_codes`, one scale per row) in int8 matrix products with exact int32 sums
      (``torch._int_mm``: on CPUs with int8 matrix instructions, such as AMX or AVX-512 VNNI, several times
      the float32 rate); each query keeps its ``2 * k`` best candidates by codes
      (:data:`INT8_CANDIDATES_PER_NEIGHBOUR`), and their true float32 distances choose the ``k`` returned,
      so every distance returned is exact. The codes take a quarter of the vectors' memory again.
      The same norm bound applies, from the true distances of the ``k`` best by codes of each query's first cell.
      At ImageNet-like scale (``scripts/bench_method.py``, 200,000 x 2048, 130,000 queries, 2 cores with
      AMX; the README's table) the score took 10.6 s against 24.0 s with float32, recall@1 0.983 against
      0.984; at CIFAR scale (dimension 512) the products are a small part of the scan: 1.27 s against 1.40 s.

    - **float16 storage** (``storage="float16"``): the vectors are kept as float16 codes
      (:class:`~grood.method.neighbours.compact.HalfVectors`, half the memory), the probed cells are ranked by
      them, and each query's ``SHORTLIST_PER_NEIGHBOUR * k`` best candidates are re-ranked by their true
      float32 distances from the exact vectors of :attr:`exact_source`. Filled by :meth:`build_streamed` (a
      chunk of vectors at a time: no ``[N, dim]`` float32 matrix); float32 scan only.

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
        scan: ``"float32"`` (default): each probed cell is ranked by float32 products; ``"int8"``: by int8
            codes, with the candidates' true distances deciding (see above; CPU only, ``dim`` at most
            :data:`MAX_INT8_DIM`).
        device: where the centroids and lists live (default: the device of the first add).

    Raises ``ValueError`` at the first add when it holds fewer than ``39 * nlist`` vectors, or when
    ``scan="int8"`` and the vectors are not on the CPU.
    """

    kind = "ivf"
    incremental_add = False  # the cells are trained on the first add

    @checked_arguments
    def __init__(
        self,
        dim: int,
        nlist: Count | None = None,
        nprobe: Count = DEFAULT_NPROBE,
        niter: Count = DEFAULT_KMEANS_ITERATIONS,
        routing_dim: Count = DEFAULT_ROUTING_DIM,
        scan: Scan = "float32",
        device: str | torch.device | None = None,
        storage: Storage = "float32",
    ) -> None:
        super().__init__(dim)
        self.storage = storage
        if storage == "float16" and scan != "float32":
            raise ValueError("the 'ivf' index's storage='float16' works with scan='float32' only; got scan="
                             f"{scan!r}")
        #: storage="float16": the exact vectors of indexed rows, for the re-ranking (see the class docstring).
        self.exact_source: ExactSource | None = None
        if scan == "int8" and self.dim > MAX_INT8_DIM:
            raise ValueError(f"scan='int8' handles dim <= {MAX_INT8_DIM} (int32 sums of int8 products); got dim="
                             f"{self.dim}: use scan='float32'")
        self.scan = scan
        self.routing_dim = int(routing_dim)
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.niter = int(niter)
        self.device = None if device is None else torch.device(device)
        self._check_scan_device(self.device)
        self.max_chunk_elements = 2**26
        self.projection: torch.Tensor | None = None  # [dim, routing_dim] (None: directions unprojected)
        self.centroids: torch.Tensor | None = None  # [num_cells, 1 + routing_dim], in routing coordinates
        self.vectors = torch.empty((0, self.dim))  # [ntotal, dim], grouped by cell
        self.ids = torch.empty(0, dtype=torch.long)  # [ntotal]: row of each vector in the order added
        self.offsets = torch.zeros(1, dtype=torch.long)  # [num_cells + 1]: cell c is rows offsets[c]:offsets[c+1]
        self._squared_norms = torch.empty(0)
        self._codes: tuple[torch.Tensor, torch.Tensor] | None = None  # scan="int8": codes [ntotal, dim], scales [ntotal]
        self._cell_norms: tuple[torch.Tensor, torch.Tensor] | None = None  # smallest, largest norm of each cell
        #: (query, indexed vector) pairs in the probed cells, and those compared, by all searches so far.
        self.pairs_probed = 0
        self.pairs_compared = 0

    @property
    def compared_fraction(self) -> float | None:
        """Fraction of the (query, vector) pairs of the probed cells that the searches so far compared (the
        others were skipped by the norm bound); None before the first search."""
        return self.pairs_compared / self.pairs_probed if self.pairs_probed else None

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    def _check_scan_device(self, device: torch.device | None) -> None:
        if self.scan == "int8" and device is not None and device.type != "cpu":
            raise ValueError(f"the 'ivf' index's scan='int8' runs on the CPU only (torch._int_mm); its vectors are on "
                             f"{device}: use scan='float32' there, or device='cpu'")

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
        if self.storage == "float16":
            raise ValueError("an 'ivf' index with storage='float16' is filled by build_streamed(), not add()")
        if self.device is None:
            self._check_scan_device(vectors.device)
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
        self._codes = int8_codes(self.vectors) if self.scan == "int8" else None
        self._cell_norms = None
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
        nlist, sample = self._training_sample(count)
        self._train_on_sample(vectors[sample.to(vectors.device)], nlist)

    def _training_sample(self, count: int) -> tuple[int, torch.Tensor]:
        """``(nlist, rows)``: the cell count for ``count`` vectors and the rows k-means trains on (a fixed-seed
        random subset of at most ``64 * nlist``)."""
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
        return nlist, torch.randperm(count, generator=torch.Generator().manual_seed(1234))[:sample_size]

    def _train_on_sample(self, sample_vectors: torch.Tensor, nlist: int) -> None:
        self.projection = direction_projection(sample_vectors, self.routing_dim)
        coordinates = routing_coordinates(sample_vectors, self.projection)
        with phase(f"IVF k-means ({nlist} cells)", coordinates.shape[0]):
            self.centroids = balanced_centroids(coordinates, nlist, iterations=self.niter)
        self.nlist = nlist
        self.offsets = torch.zeros(self.num_cells + 1, dtype=torch.long, device=self.device)

    def build_streamed(self, count: int, vectors_of: "callable", chunk_rows: int = 8192) -> None:
        """Fill an empty index with ``count`` vectors without holding them all in float32:
        ``vectors_of(rows) -> [len, dim]`` float32 gives the vectors of ``rows`` (a slice, or ``[M]`` indices
        for the k-means sample). Three passes: the sample (cells trained as on a first :meth:`add` of them all),
        the cell of every vector, and the vectors written into their cells' place (float16 codes with
        ``storage="float16"``)."""
        if self.ntotal:
            raise ValueError("build_streamed() fills an empty index; this one holds vectors already")
        chunks = [slice(start, min(start + chunk_rows, count)) for start in range(0, count, chunk_rows)]
        nlist, sample = self._training_sample(count)
        sample_vectors = vectors_of(sample).to(dtype=torch.float32)
        if self.device is None:
            self.device = sample_vectors.device
        self._train_on_sample(sample_vectors.to(self.device), nlist)
        del sample_vectors
        cells = torch.empty(count, dtype=torch.long, device=self.device)
        for rows in chunks:
            cells[rows] = nearest_cells(vectors_of(rows).to(self.device), self.centroids, 1, self.projection)[:, 0]
        order = torch.sort(cells, stable=True).indices
        position = torch.empty_like(order)
        position[order] = torch.arange(count, device=self.device)
        counts = torch.bincount(cells, minlength=self.num_cells)
        del cells
        if self.storage == "float16":
            storage = HalfVectors(count, self.dim, self.device)
        else:
            storage = torch.empty((count, self.dim), device=self.device)
        squared_norms = torch.empty(count, device=self.device)
        for rows in chunks:
            vectors = vectors_of(rows).to(device=self.device, dtype=torch.float32)
            check_finite("vectors", vectors)
            targets = position[rows]
            if self.storage == "float16":
                storage.write(targets, vectors)
                vectors = storage[targets]  # the norms of what is stored: the scan ranks by those
            else:
                storage[targets] = vectors
            squared_norms[targets] = _squared_row_norms(vectors)
        self.vectors, self.ids = storage, order
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), torch.cumsum(counts, 0)])
        self._squared_norms = squared_norms
        self._codes = None
        self._cell_norms = None
        self._warn_if_imbalanced()

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest of each query among the vectors of its ``nprobe`` cells, in two rounds: first the
        nearest cell of every query, then its other probed cells, except those that the norm bound rules out
        (:func:`~grood.method.neighbours.base._norm_reach`): a vector ``x`` with ``| ||q|| - ||x|| | >`` the
        ``k``-th distance found so far cannot be nearer (triangle inequality), so a cell whose norms all lie
        outside ``||q|| +- reach`` is skipped.
        With ``scan="float32"`` the result is that of scanning every probed cell (ties aside); with
        ``scan="int8"`` that of the candidates the codes chose. ``compared_fraction`` says how many pairs
        were compared."""
        queries = queries.detach().to(device=self.device, dtype=torch.float32)
        nprobe = min(self.nprobe, self.num_cells)
        probes = nearest_cells(queries, self.centroids, nprobe, self.projection)  # [B, nprobe]
        self.pairs_probed += int(self.list_sizes().to(self.device)[probes].sum())
        search = self._search_by_codes if self.scan == "int8" else self._search_by_products
        if self.storage == "float16":
            if self.exact_source is None:
                raise ValueError("this 'ivf' index stores float16 codes and re-ranks its candidates by their exact "
                                 "vectors: set its exact_source before searching (GROOD.fit does)")
            rows, distances = search(queries, probes, min(self.ntotal, SHORTLIST_PER_NEIGHBOUR * k))
            found = torch.isfinite(distances)
            distances, ids = exact_rerank(queries, self.ids[rows], found, self.exact_source, k, self.max_chunk_elements)
            missing = torch.isinf(distances).any(dim=1)
            if missing.any():
                raise RuntimeError(
                    f"the 'ivf' index found fewer than k={k} neighbours for {int(missing.sum())} of "
                    f"{queries.shape[0]} queries (the cells it probed hold too few vectors); raise nprobe or use "
                    "the 'exact' index")
            return distances, ids
        rows, distances = search(queries, probes, k)  # [B, k] each; distance inf: fewer than k found
        missing = torch.isinf(distances).any(dim=1)
        if missing.any():
            raise RuntimeError(
                f"the 'ivf' index found fewer than k={k} neighbours for {int(missing.sum())} of {queries.shape[0]} "
                f"queries (the cells it probed hold too few vectors); raise nprobe or use the 'exact' index"
            )
        distances, order = torch.sort(distances, dim=1)
        return distances, self.ids[rows.gather(1, order)]

    def _search_by_products(
        self, queries: torch.Tensor, probes: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``scan="float32"``: rows ``[B, k]`` of the ``k`` nearest vectors of each query in its probed cells,
        and their true distances ``[B, k]`` (``inf`` where not found)."""
        scan = self._scan_nearest if k == 1 else self._scan_k_nearest
        best = scan(queries, probes, *self._first_probes(probes), k, None)
        if probes.shape[1] > 1:
            query_norms = torch.linalg.vector_norm(queries, dim=1)
            reach = _norm_reach(queries, query_norms, self.vectors, *self._k_best(*best, k), self.max_chunk_elements)
            best = scan(queries, probes, *self._later_probes_in_reach(probes, query_norms, reach), k, best)
        values, rows = self._k_best(*best, k)
        distances = _direct_distances(queries, self.vectors, rows, self.max_chunk_elements)
        return rows, torch.where(torch.isinf(values), math.inf, distances)

    def _search_by_codes(self, queries: torch.Tensor, probes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``scan="int8"``: each query's ``2 k`` best candidates by int8 codes over its probed cells, of which
        the ``k`` nearest by true distance: rows ``[B, k]`` and distances ``[B, k]`` (``inf`` where not found).
        The norm bound's reach comes from the true distances of the first cell's ``k`` best by codes."""
        codes, scales = int8_codes(queries)
        width = k * INT8_CANDIDATES_PER_NEIGHBOUR
        # [B, nprobe * 2k] each: columns s * 2k .. (s + 1) * 2k - 1 hold the best of the s-th probed cell
        values = torch.full((queries.shape[0], probes.shape[1] * width), math.inf, device=self.device)
        rows = torch.zeros(values.shape, dtype=torch.long, device=self.device)
        self._scan_codes(codes, scales, probes, *self._first_probes(probes), values, rows)
        if probes.shape[1] > 1:
            query_norms = torch.linalg.vector_norm(queries, dim=1)
            # the first cell's k best by codes are k true vectors: the farthest of them bounds the k-th distance
            first = self._candidate_distances(queries, *self._k_best(values[:, :width], rows[:, :width], k))
            reach = _reach_of_distance(query_norms, first.amax(dim=1), self.dim)
            self._scan_codes(codes, scales, probes, *self._later_probes_in_reach(probes, query_norms, reach), values, rows)
        values, rows = self._k_best(values, rows, width)  # the 2k best by codes over all probed cells
        distances, picked = torch.topk(self._candidate_distances(queries, values, rows), k, dim=1, largest=False)
        return rows.gather(1, picked), distances

    def _candidate_distances(self, queries: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` true distances of the candidates ``rows [B, M]`` (``inf`` where ``values`` is: no candidate)."""
        distances = _direct_distances(queries, self.vectors, rows, self.max_chunk_elements)
        return torch.where(torch.isinf(values), math.inf, distances)

    @staticmethod
    def _first_probes(probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, probe slot) pairs of each query's nearest cell: ``(arange(B), zeros(B))``."""
        return torch.arange(probes.shape[0], device=probes.device), torch.zeros_like(probes[:, 0])

    def _later_probes_in_reach(
        self, probes: torch.Tensor, query_norms: torch.Tensor, reach: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, probe slot) pairs of the probed cells after the first that hold a norm within
        ``query_norms +- reach`` (``[B]`` each): ``(query_rows, slots)``."""
        low, high = (query_norms - reach).unsqueeze(1), (query_norms + reach).unsqueeze(1)  # [B, 1] each
        smallest, largest = self._norm_ranges()
        later = probes[:, 1:]
        keep = (smallest[later] <= high) & (largest[later] >= low)  # [B, nprobe - 1]: a norm within reach
        query_rows, slots = keep.nonzero(as_tuple=True)
        return query_rows, slots + 1

    @staticmethod
    def _k_best(values: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` smallest ranking values ``[B, k]`` (and their rows) of the candidates ``[B, M]``."""
        if values.shape[1] == k:
            return values, rows
        values, picked = torch.topk(values, k, dim=1, largest=False, sorted=True)
        return values, rows.gather(1, picked)

    def _norm_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[num_cells]`` smallest and largest norm of each cell's vectors (``inf`` / ``-inf`` when empty)."""
        if self._cell_norms is None:
            norms = self._squared_norms.sqrt()
            cells = self._cells_of_indexed()
            smallest = torch.full((self.num_cells,), math.inf, device=self.device)
            largest = torch.full((self.num_cells,), -math.inf, device=self.device)
            smallest.scatter_reduce_(0, cells, norms, reduce="amin")
            largest.scatter_reduce_(0, cells, norms, reduce="amax")
            self._cell_norms = (smallest, largest)
        return self._cell_norms

    def _probing_pairs(
        self, probes: torch.Tensor, query_rows: torch.Tensor, slots: torch.Tensor, chunk_elements: int | None = None
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """The (query, probed cell) pairs ``(query_rows[i], probes[query_rows[i], slots[i]])`` in list-major
        order: for each cell, ``(cell_rows, query_rows, slots)``: the cell's rows of :attr:`vectors`, the
        queries that probe it (each once: a query's probes are distinct cells) and which of their probes it
        is, a chunk of queries at a time so that one ranking matrix holds at most ``chunk_elements``
        entries (default :attr:`max_chunk_elements`)."""
        chunk_elements = self.max_chunk_elements if chunk_elements is None else chunk_elements
        cells = probes[query_rows, slots]
        pair_order = torch.sort(cells, stable=True).indices  # pairs grouped by cell
        pair_counts = torch.bincount(cells, minlength=self.num_cells).tolist()
        query_rows, slots = query_rows[pair_order], slots[pair_order]
        offsets = self.offsets.tolist()
        position = 0
        for cell, pairs in enumerate(pair_counts):
            begin, position = position, position + pairs
            first, last = offsets[cell], offsets[cell + 1]
            if pairs == 0 or last == first:
                continue
            self.pairs_compared += pairs * (last - first)
            chunk = max(1, chunk_elements // (last - first))
            for start in range(begin, position, chunk):
                end = min(start + chunk, position)
                yield slice(first, last), query_rows[start:end], slots[start:end]

    def _cell_ranking(
        self, cell_rows: slice, queries: torch.Tensor, query_rows: torch.Tensor, buffers: "_ScanBuffers"
    ) -> torch.Tensor:
        """``[P, size]``: ``||x||^2 - 2 q.x`` (``= ||q - x||^2 - ||q||^2``) of the ``P`` queries ``queries[query_rows]``
        against every vector of one cell (its rows ``cell_rows``), in one matrix product. The gathered
        queries and the ranking matrix live in ``buffers``, reused from cell to cell: fresh tensors of
        this size would be fresh memory pages each time, which the OS must fault in and zero."""
        count, size = query_rows.shape[0], cell_rows.stop - cell_rows.start
        chosen = torch.index_select(queries, 0, query_rows, out=buffers.take("queries", (count, self.dim)))
        ranking = buffers.take("ranking", (count, size))
        if isinstance(self.vectors, HalfVectors):
            cell = self.vectors.decode_into(cell_rows, buffers.take("cell", (size, self.dim)))
        else:
            cell = self.vectors[cell_rows]
        return torch.addmm(self._squared_norms[cell_rows], chosen, cell.T, alpha=-2.0, out=ranking)

    def _scan_nearest(
        self, queries: torch.Tensor, probes: torch.Tensor, query_rows: torch.Tensor, slots: torch.Tensor, k: int,
        best: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k = 1: each query's best ranking value ``[B, 1]`` and row ``[B, 1]`` over the given (query, probe)
        pairs, merged into ``best`` (a running minimum: the cell scanned first keeps a tie)."""
        if best is None:
            best = (torch.full((queries.shape[0], 1), math.inf, device=self.device),
                    torch.zeros((queries.shape[0], 1), dtype=torch.long, device=self.device))
        best_values, best_rows = best[0][:, 0], best[1][:, 0]  # views: updated in place
        buffers = _ScanBuffers(self.device, self.max_chunk_elements)
        for cell_rows, rows, _ in self._probing_pairs(probes, query_rows, slots):
            values, columns = self._cell_ranking(cell_rows, queries, rows, buffers).min(dim=1)
            current = best_values[rows]
            better = values < current
            best_values[rows] = torch.where(better, values, current)
            best_rows[rows] = torch.where(better, columns + cell_rows.start, best_rows[rows])
        return best

    def _scan_k_nearest(
        self, queries: torch.Tensor, probes: torch.Tensor, query_rows: torch.Tensor, slots: torch.Tensor, k: int,
        best: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best ranking values and rows of each query in each of its probed cells given by the
        (query, probe) pairs, written into ``best``: ``[B, nprobe * k]`` each, column ``s * k + j`` holding
        the ``j``-th best of its ``s``-th probed cell (``inf`` where not scanned)."""
        if best is None:
            width = probes.shape[1] * k
            best = (torch.full((queries.shape[0], width), math.inf, device=self.device),
                    torch.zeros((queries.shape[0], width), dtype=torch.long, device=self.device))
        best_values, best_rows = best
        buffers = _ScanBuffers(self.device, self.max_chunk_elements)
        for cell_rows, rows, cell_slots in self._probing_pairs(probes, query_rows, slots):
            ranking = self._cell_ranking(cell_rows, queries, rows, buffers)
            found = min(k, ranking.shape[1])
            values, columns = torch.topk(ranking, found, dim=1, largest=False, sorted=True)
            target = (cell_slots * k).unsqueeze(1) + torch.arange(found, device=self.device)
            best_values[rows.unsqueeze(1), target] = values
            best_rows[rows.unsqueeze(1), target] = columns + cell_rows.start
        return best

    def _scan_codes(
        self, codes: torch.Tensor, scales: torch.Tensor, probes: torch.Tensor, query_rows: torch.Tensor,
        slots: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
    ) -> None:
        """``scan="int8"``: the ``M`` best vectors of each probed cell given by the (query, probe) pairs, ranked
        by the queries' int8 ``codes [B, D]`` and ``scales [B]`` against the cell's codes, written into
        ``values`` and ``rows`` (``[B, nprobe * M]``; columns ``s * M + j``: the ``j``-th of the ``s``-th
        probed cell, ``inf`` where not scanned).

        A query ``q ~ s_q c_q`` and a vector ``x ~ s_x c_x`` are ranked by ``||x||^2 / 2 - s_q s_x (c_q . c_x)``,
        which is ``(||x||^2 - 2 q.x) / 2`` up to the codes' rounding, so it orders one query's vectors as their
        distances do (``||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x``); ``c_q . c_x`` is an exact int32 sum.
        """
        vector_codes, vector_scales = self._codes
        negative_scales, half_norms = -vector_scales, self._squared_norms * 0.5
        query_scales = scales.unsqueeze(1)  # [B, 1]
        width = values.shape[1] // probes.shape[1]
        buffers = _ScanBuffers(self.device, INT8_CHUNK_ELEMENTS)
        for cell_rows, chunk_rows, chunk_slots in self._probing_pairs(probes, query_rows, slots, INT8_CHUNK_ELEMENTS):
            count, size = chunk_rows.shape[0], cell_rows.stop - cell_rows.start
            chosen = torch.index_select(codes, 0, chunk_rows, out=buffers.take("codes", (count, self.dim), torch.int8))
            products = torch._int_mm(chosen, vector_codes[cell_rows].T, out=buffers.take("products", (count, size), torch.int32))
            ranking = buffers.take("ranking", (count, size)).copy_(products).mul_(negative_scales[cell_rows])
            torch.addcmul(half_norms[cell_rows], ranking, query_scales[chunk_rows], out=ranking)
            found = min(width, size)
            cell_values, columns = torch.topk(ranking, found, dim=1, largest=False, sorted=False)
            target = (chunk_slots * width).unsqueeze(1) + torch.arange(found, device=self.device)
            values[chunk_rows.unsqueeze(1), target] = cell_values
            rows[chunk_rows.unsqueeze(1), target] = columns + cell_rows.start

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.ntotal == 0:
            raise ValueError("nothing to save: the 'ivf' index is empty; add() vectors first")
        if self.storage == "float16":
            raise ValueError("an 'ivf' index with storage='float16' re-ranks from its exact_source (the training "
                             "features), which a saved file cannot hold: save one with storage='float32'")
        state = {
            "kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "niter": self.niter,
            "routing_dim": self.routing_dim, "scan": self.scan, "centroids": self.centroids.cpu(),
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
            routing_dim=state["routing_dim"], scan=state.get("scan", "float32"),  # files before scan: float32
        )
        index.device = torch.device("cpu") if device is None else torch.device(device)
        index._check_scan_device(index.device)
        index.centroids = state["centroids"].to(index.device)
        index.projection = None if state["projection"] is None else state["projection"].to(index.device)
        index.vectors = state["vectors"].to(index.device)
        index.ids = state["ids"].to(index.device)
        index.offsets = state["offsets"].to(index.device)
        index._squared_norms = _squared_row_norms(index.vectors)
        index._codes = int8_codes(index.vectors) if index.scan == "int8" else None
        return index

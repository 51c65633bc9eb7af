"""Nearest-neighbour search in gradient space (paper eq. 6 and appendix A.4).

Three index kinds behind one small interface (``add``, ``search``, ``save``/``load``):

- ``exact`` (default): FAISS ``IndexFlatL2``, exact search.
- ``ivf``: FAISS ``IndexIVFFlat`` (appendix A.4): vectors are bucketed into ``nlist`` k-means cells and a
  query visits the ``nprobe`` nearest cells. Defaults: ``nlist = 100``, ``nprobe = 10`` (a tenth of the
  data is searched; recall@1 >= 0.95 on GROOD-like clustered gradients, see the tests and
  ``scripts/bench_method.py``).
- ``torch``: exact search in chunks with ``torch.cdist``; no FAISS needed, runs wherever torch runs.

Distances are Euclidean, **not squared**, everywhere (FAISS's squared L2 is converted here).
FAISS runs on the GPU when the vectors are CUDA tensors and the installed faiss has GPU support.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from grood.io import atomic_write

try:  # faiss is a dependency, but the torch index must work without it
    import faiss
except ImportError:  # pragma: no cover - exercised only where faiss is absent
    faiss = None

#: k-means needs this many training vectors per IVF cell (FAISS's own lower bound for good centroids).
MIN_POINTS_PER_CELL = 39
DEFAULT_NLIST = 100
DEFAULT_NPROBE = 10


def _as_float32_numpy(vectors: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.detach().to("cpu", torch.float32).numpy())


def _faiss_gpu_available() -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _require_faiss(kind: str) -> None:
    if faiss is None:
        raise ImportError(f"index kind {kind!r} needs faiss: pip install faiss-cpu (or faiss-gpu), or use kind='torch'")


class NeighbourIndex:
    """Common interface. ``search`` returns ``(distances [N, k], indices [N, k])``, nearest first."""

    kind: ClassVar[str] = ""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"index dimension must be >= 1; got {dim}")
        self.dim = dim

    @property
    def ntotal(self) -> int:
        raise NotImplementedError

    def add(self, vectors: torch.Tensor) -> None:
        raise NotImplementedError

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest stored vectors of each query ``[N, D]``: distances (not squared) and indices."""
        self._check_vectors(queries, "queries")
        if self.ntotal == 0:
            raise ValueError("the index is empty: add() training vectors before searching")
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} must lie in 1..{self.ntotal} (the number of indexed vectors)")
        return self._search(queries, k)

    def _check_vectors(self, vectors: torch.Tensor, what: str) -> None:
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{what} must be [N, {self.dim}]; got shape {tuple(vectors.shape)}")

    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeighbourIndex":
        raise NotImplementedError


class _FaissIndex(NeighbourIndex):
    """Shared FAISS plumbing: numpy conversion, optional GPU copy, sqrt of squared L2, file I/O."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        _require_faiss(self.kind)
        self.index = None
        self._on_gpu = False

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _maybe_to_gpu(self, vectors: torch.Tensor) -> None:
        if vectors.is_cuda and not self._on_gpu and _faiss_gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, vectors.device.index or 0, self.index)
            self._on_gpu = True

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        squared, indices = self.index.search(_as_float32_numpy(queries), k)
        distances = torch.from_numpy(np.sqrt(np.maximum(squared, 0.0)))
        return distances, torch.from_numpy(indices)

    def _cpu_index(self):
        return faiss.index_gpu_to_cpu(self.index) if self._on_gpu else self.index

    def save(self, path: str | os.PathLike) -> None:
        """Write the FAISS index file atomically."""
        with atomic_write(path, "wb") as handle:
            handle.write(faiss.serialize_index(self._cpu_index()).tobytes())


class ExactIndex(_FaissIndex):
    """FAISS ``IndexFlatL2``: exact nearest neighbours."""

    kind = "exact"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index = faiss.IndexFlatL2(dim)

    def add(self, vectors: torch.Tensor) -> None:
        self._check_vectors(vectors, "vectors")
        self._maybe_to_gpu(vectors)
        self.index.add(_as_float32_numpy(vectors))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExactIndex":
        loaded = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        index = cls(loaded.d)
        index.index = loaded
        return index


class IVFIndex(_FaissIndex):
    """FAISS ``IndexIVFFlat`` (appendix A.4): approximate search over ``nprobe`` of ``nlist`` cells.

    The cells are trained (k-means) on the vectors of the first :meth:`add`, which must hold at least
    ``39 · nlist`` vectors.
    """

    kind = "ivf"

    def __init__(self, dim: int, nlist: int | None = None, nprobe: int | None = None) -> None:
        super().__init__(dim)
        self.nlist = DEFAULT_NLIST if nlist is None else int(nlist)
        self.nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        if self.nlist < 1 or not 1 <= self.nprobe <= self.nlist:
            raise ValueError(f"IVF needs nlist >= 1 and 1 <= nprobe <= nlist; got nlist={self.nlist}, "
                             f"nprobe={self.nprobe}")

    def add(self, vectors: torch.Tensor) -> None:
        self._check_vectors(vectors, "vectors")
        if self.index is None:
            needed = MIN_POINTS_PER_CELL * self.nlist
            if vectors.shape[0] < needed:
                raise ValueError(
                    f"the IVF index with nlist={self.nlist} needs at least {needed} training vectors "
                    f"({MIN_POINTS_PER_CELL} per cell); got {vectors.shape[0]}. Lower nlist to at most "
                    f"{max(1, vectors.shape[0] // MIN_POINTS_PER_CELL)} or use the exact index"
                )
            quantizer = faiss.IndexFlatL2(self.dim)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist)
            self._quantizer = quantizer  # keep it alive alongside the index
            self._maybe_to_gpu(vectors)
            self.index.train(_as_float32_numpy(vectors))
        self.index.nprobe = self.nprobe
        self.index.add(_as_float32_numpy(vectors))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IVFIndex":
        loaded = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        index = cls(loaded.d, nlist=loaded.nlist, nprobe=loaded.nprobe)
        index.index = loaded
        return index


class TorchIndex(NeighbourIndex):
    """Exact search with ``torch.cdist`` in query chunks; keeps vectors on their device."""

    kind = "torch"

    def __init__(self, dim: int, chunk_size: int = 4096) -> None:
        super().__init__(dim)
        self.chunk_size = chunk_size
        self.vectors: torch.Tensor | None = None

    @property
    def ntotal(self) -> int:
        return 0 if self.vectors is None else self.vectors.shape[0]

    def add(self, vectors: torch.Tensor) -> None:
        self._check_vectors(vectors, "vectors")
        vectors = vectors.detach().float()
        self.vectors = vectors if self.vectors is None else torch.cat([self.vectors, vectors.to(self.vectors.device)])

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        distances, indices = [], []
        for start in range(0, queries.shape[0], self.chunk_size):
            chunk = queries[start : start + self.chunk_size].to(self.vectors.device, torch.float32)
            values, positions = torch.cdist(chunk, self.vectors).topk(k, dim=1, largest=False)
            distances.append(values.cpu())
            indices.append(positions.cpu())
        return torch.cat(distances), torch.cat(indices)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_write(path, "wb") as handle:
            torch.save({"vectors": self.vectors.cpu(), "chunk_size": self.chunk_size}, handle)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TorchIndex":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        index = cls(blob["vectors"].shape[1], chunk_size=blob["chunk_size"])
        index.vectors = blob["vectors"]
        return index


INDEX_KINDS: dict[str, type[NeighbourIndex]] = {"exact": ExactIndex, "ivf": IVFIndex, "torch": TorchIndex}


def build_index(kind: str, dim: int, **params) -> NeighbourIndex:
    """A new empty index of ``kind`` ("exact", "ivf" or "torch"); ``params`` go to its constructor."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {sorted(INDEX_KINDS)}")
    try:
        return INDEX_KINDS[kind](dim, **{name: value for name, value in params.items()})
    except TypeError as error:
        raise ValueError(f"bad parameters {sorted(params)} for index kind {kind!r}: {error}") from error


def save_index(index: NeighbourIndex, directory: str | os.PathLike) -> None:
    """Write ``index.bin`` and ``index.json`` (its kind) into ``directory``."""
    directory = Path(directory)
    index.save(directory / "index.bin")
    with atomic_write(directory / "index.json") as handle:
        json.dump({"kind": index.kind, "dim": index.dim}, handle)


def load_index(directory: str | os.PathLike) -> NeighbourIndex:
    """Read an index written by :func:`save_index`."""
    directory = Path(directory)
    meta = json.loads((directory / "index.json").read_text())
    return INDEX_KINDS[meta["kind"]].load(directory / "index.bin")


def kth_neighbour_distance(
    index: NeighbourIndex,
    queries: torch.Tensor,
    k: int = 1,
    batch_size: int = 65536,
    progress: bool = False,
) -> torch.Tensor:
    """Eq. 6: ``S(x) = ||∇H(h(x)) - nearest training gradient||`` (the ``k``-th nearest for Fig. 5).

    Args:
        queries: ``[N, D]`` gradients of the samples to score.
    Returns:
        ``[N]`` distances (not squared); larger = more OOD.
    """
    chunks = range(0, queries.shape[0], batch_size)
    distances = [
        index.search(queries[start : start + batch_size], k)[0][:, k - 1]
        for start in tqdm(chunks, desc="nearest-neighbour search", disable=not progress, leave=False)
    ]
    if not distances:
        return torch.empty(0)
    return torch.cat(distances)

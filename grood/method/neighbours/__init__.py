"""Nearest-neighbour search in gradient space (paper eq. 6 and appendix A.4): one module per index kind.

Four index kinds behind one small interface (:class:`NeighbourIndex`: ``add``, ``search``,
``ntotal``, ``dim``, ``save``, ``load``), made by :func:`build_index`, and ``"exact"`` (the default), which
builds the fastest exact one for the device (:func:`exact_choice`):

- ``"faiss_flat"``: FAISS ``IndexFlatL2``, exact search.
- ``"ivf"``: an inverted-file index (appendix A.4) in torch: the vectors are split into k-means cells
  and a query scans only the ``nprobe`` cells nearest to it, the cells regrouped so that each is
  compared with all the queries that probe it in one matrix product, and cells balanced for vectors
  whose norms span orders of magnitude (see :class:`IVFIndex`). Defaults: ``nlist = round(sqrt(N))``
  (at most ``N // 39``), ``nprobe`` :data:`DEFAULT_NPROBE`. Runs on the vectors' device, CUDA included.
- ``"faiss_ivf"``: FAISS's own ``IndexIVFFlat`` with the cell rule of the paper author's OpenOOD port
  (``nlist = int(4 sqrt(T))``, ``T = min(600, floor(0.8 * batches))`` training batches of 200 rows,
  ``nprobe`` 4); see :mod:`~grood.method.neighbours.faiss_ivf`.
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

Modules: :mod:`~grood.method.neighbours.base` (the interface), :mod:`~grood.method.neighbours.exact`,
:mod:`~grood.method.neighbours.ivf`, :mod:`~grood.method.neighbours.torch_index`,
:mod:`~grood.method.neighbours.faiss_ivf`; this package holds the
registry (:data:`INDEX_KINDS`, :func:`build_index`, :func:`load_index`) and eq. 6
(:func:`kth_neighbour_distance`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from grood.method._checks import check_matrix
from grood.progress import track
from grood.method.neighbours.base import NeighbourIndex, _faiss_gpu_available  # noqa: F401 - tests import it here
from grood.method.neighbours.exact import ExactIndex
from grood.method.neighbours.faiss_ivf import FaissIVFIndex
from grood.method.neighbours.ivf import (
    DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_NPROBE,
    DEFAULT_ROUTING_DIM,
    MAX_TRAIN_POINTS_PER_LIST,
    MIN_TRAIN_POINTS_PER_LIST,
    IVFIndex,
    default_nlist,
)
from grood.method.neighbours.torch_index import PRUNING_QUERY_BLOCK, TORCH_DATABASE_BLOCK, TorchIndex

__all__ = [
    "DEFAULT_KMEANS_ITERATIONS", "DEFAULT_NPROBE", "DEFAULT_ROUTING_DIM", "FaissIVFIndex", "INDEX_KINDS", "MAX_TRAIN_POINTS_PER_LIST",
    "MIN_TRAIN_POINTS_PER_LIST", "PRUNING_QUERY_BLOCK", "TORCH_DATABASE_BLOCK", "ExactIndex", "IVFIndex",
    "INDEX_CLASSES", "NeighbourIndex", "TorchIndex", "build_index", "default_nlist", "exact_choice",
    "kth_neighbour_distance", "load_index",
]


#: The index classes by kind.
INDEX_CLASSES: dict[str, type[NeighbourIndex]] = {"faiss_flat": ExactIndex, "ivf": IVFIndex, "torch": TorchIndex,
                                                   "faiss_ivf": FaissIVFIndex}
#: Every kind a caller may ask for: ``"exact"`` (the fastest exact search here, :func:`exact_choice`) and
#: each index class's kind.
INDEX_KINDS: tuple[str, ...] = ("exact", *INDEX_CLASSES)


def exact_choice(device: str | torch.device | None = None) -> tuple[str, dict[str, Any]]:
    """``(kind, params)`` of the fastest exact search for ``device`` (what ``kind="exact"`` builds):

    - CUDA with a faiss that has GPU support: FAISS ``IndexFlatL2`` on the GPU (``"faiss_flat"``);
    - otherwise: the torch search with exact norm pruning (``"torch"``, ``norm_pruning=True``). On a CPU it
      was faster than FAISS flat at both scales of ``scripts/bench_method.py`` (see docs/performance.md), it
      gives FAISS's neighbours (distances equal to float32 rounding), and it needs no faiss.
    """
    from grood.device import resolve_device

    if resolve_device(device).type == "cuda":
        try:
            if _faiss_gpu_available():
                return "faiss_flat", {}
        except ImportError:
            pass  # no faiss at all: the torch search, as on the CPU
    return "torch", {"norm_pruning": True}


def build_index(kind: str, dim: int, device: str | torch.device | None = None, **params: Any) -> NeighbourIndex:
    """A new empty index of ``kind`` (one of :data:`INDEX_KINDS`); ``"exact"`` builds :func:`exact_choice`
    for ``device`` (the device of the vectors it will hold; the "ivf" and "torch" indexes keep their vectors
    there). The built index's ``kind`` says which.

    ``params`` go to the index's constructor (``nlist``, ``nprobe``, ``niter``, ``routing_dim``, ``scan`` for "ivf";
    ``max_chunk_elements``, ``norm_pruning`` for "torch"; ``nprobe``, ``nlist``, ``train_batches``,
    ``loader_batch_size`` for "faiss_ivf"; none for "exact" and "faiss_flat").
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(INDEX_KINDS)}")
    if kind == "exact":
        if params:
            raise ValueError(f"index kind 'exact' takes no parameters (got {sorted(params)}); it picks the fastest "
                             "exact search itself: name 'faiss_flat' or 'torch' to set one")
        kind, params = exact_choice(device)
    if kind in ("ivf", "torch") and device is not None:  # the indexes in torch hold their vectors there
        params = {"device": device, **params}
    try:
        return INDEX_CLASSES[kind](dim, **params)
    except TypeError as error:
        raise ValueError(f"bad parameter(s) {sorted(params)} for index kind {kind!r}: {error}") from error


def load_index(
    path: str | os.PathLike[str], kind: str, device: str | torch.device | None = None
) -> NeighbourIndex:
    """Read the index of ``kind`` (a built index's ``kind``, see :data:`INDEX_CLASSES`) that
    :meth:`NeighbourIndex.save` wrote to ``path`` (onto ``device``, see :meth:`NeighbourIndex.load`)."""
    if kind not in INDEX_CLASSES:
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(INDEX_CLASSES)}")
    return INDEX_CLASSES[kind].load(path, device=device)


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

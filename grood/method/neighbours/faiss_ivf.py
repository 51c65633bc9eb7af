"""``"faiss_ivf"``: FAISS's own ``IndexIVFFlat`` with the cell rule of the paper author's OpenOOD port.

The author's port (OpenOOD ``openood/postprocessors/grood.py``, commit 539b805, ``index_grads``, lines
648-694) indexes the training gradients batch by batch as OpenOOD's loader yields them
(``Evaluator(batch_size=200)``, no shuffling), and

- trains the IVF cells on the gradients of the first ``T = min(600, floor(0.8 * batches))`` loader
  batches (line 659; ``batches`` = the training loader's batch count, ``sampling_ratio`` 1.0, line 599),
- uses ``nlist = int(4 * sqrt(T))`` cells (line 662), an ``IndexFlatL2`` quantizer (line 653), and
- scans ``nprobe = 4`` cells per query (line 694).

Here "batches" are counted in training **rows** (before any ``fit_on="correct"`` filtering, as the port
counts loader batches of all images): ``batches = ceil(total_rows / loader_batch_size)`` with
``loader_batch_size`` 200, OpenOOD's ``Evaluator`` default; the cells are trained on the vectors of rows
``0 .. T * loader_batch_size - 1`` (:meth:`FaissIVFIndex.add_training` receives each vector's row).
On the CIFAR-10 smoke benchmark (5,000 training images): 25 batches, ``T = 20``, ``nlist = 17``.

Not copied: the port drops the gradients of batch ``T`` (line 679 computes them, lines 682-685 train on
and add only the batches before it; the ``else`` at line 688 that keeps a batch is skipped for it); here
every vector is added.
"""

from __future__ import annotations

import math
import os

import torch

from grood.method._checks import check_finite, check_matrix
from grood.method.neighbours.base import NeighbourIndex, _faiss, _to_faiss, log
from grood.method.neighbours.exact import _FaissIndex
from grood.valid_values import Count, checked_arguments

#: OpenOOD v1.5's ``Evaluator`` default batch size: the loader batches the author's rule counts.
AUTHOR_LOADER_BATCH_SIZE = 200
#: The port's ``index.nprobe = 4``.
AUTHOR_NPROBE = 4
#: The port's cap on the training batches: ``min(600, int(0.8 * batches))``.
AUTHOR_MAX_TRAIN_BATCHES = 600


def author_train_batches(batches: int) -> int:
    """The port's rule: ``min(600, floor(0.8 * batches))`` loader batches train the cells."""
    return min(AUTHOR_MAX_TRAIN_BATCHES, int(0.8 * int(batches)))


def author_nlist(train_batches: int) -> int:
    """The port's rule: ``int(4 * sqrt(T))`` cells for ``T`` training batches."""
    return int(4 * math.sqrt(int(train_batches)))


class FaissIVFIndex(_FaissIndex):
    """``"faiss_ivf"``: FAISS ``IndexIVFFlat`` (L2), cells from the author's rule (see the module docstring).

    Args:
        nprobe: cells scanned per query (default 4, the port's).
        nlist: number of cells; None (default) = ``int(4 * sqrt(T))``.
        train_batches: ``T``, the loader batches whose vectors train the cells; None (default) =
            ``min(600, floor(0.8 * batches))``.
        loader_batch_size: the training rows per loader batch (default 200, OpenOOD's ``Evaluator``).

    The cells are trained at the first add; later adds go into the trained cells. ``add(vectors)``
    takes ``vectors`` as training rows ``0 .. M-1`` of ``M``; :meth:`add_training` is given each vector's
    row among all training rows (what GROOD's ``fit`` does, so that ``fit_on="correct"`` counts batches
    as the port does).
    """

    kind = "faiss_ivf"
    faiss_type = "IndexIVFFlat"
    incremental_add = False  # the cells are trained on the first add

    @checked_arguments
    def __init__(
        self,
        dim: int,
        nprobe: Count = AUTHOR_NPROBE,
        nlist: Count | None = None,
        train_batches: Count | None = None,
        loader_batch_size: Count = AUTHOR_LOADER_BATCH_SIZE,
    ) -> None:
        super().__init__(dim)
        self.nprobe = int(nprobe)
        self.nlist = nlist
        self.train_batches = train_batches
        self.loader_batch_size = int(loader_batch_size)
        self.index = None  # created at the first add, once nlist is known

    def plan(self, total_rows: int) -> tuple[int, int]:
        """``(T, nlist)`` for ``total_rows`` training rows: the training batches and the cells."""
        batches = math.ceil(int(total_rows) / self.loader_batch_size)
        train_batches = author_train_batches(batches) if self.train_batches is None else self.train_batches
        if train_batches < 1 or train_batches > batches:
            raise ValueError(
                f"faiss_ivf: {total_rows} training rows make {batches} loader batch(es) of {self.loader_batch_size}, "
                f"so the cells would train on {train_batches} batch(es) (the author's rule: min(600, floor(0.8 * "
                f"batches)); train_batches must lie in 1..{batches}): lower index.params.loader_batch_size, set "
                "index.params.train_batches, or use the 'exact' index"
            )
        nlist = author_nlist(train_batches) if self.nlist is None else self.nlist
        return train_batches, max(1, nlist)

    def add_training(self, vectors: torch.Tensor, rows: torch.Tensor, total_rows: int) -> None:
        """Add ``vectors [M, dim]``, the ``rows [M]`` (ascending, in ``0 .. total_rows-1``) of the training
        set they come from; the first add trains the cells on the vectors of the first ``T`` batches."""
        if self.index is not None:
            self.add(vectors)
            return
        check_matrix("vectors", vectors, dim=self.dim)
        check_finite("vectors", vectors)
        rows = torch.as_tensor(rows).to("cpu")
        if rows.dim() != 1 or rows.shape[0] != vectors.shape[0]:
            raise ValueError(f"faiss_ivf: rows must be [M] with M = {vectors.shape[0]} (one per vector); "
                             f"got shape {tuple(rows.shape)}")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= int(total_rows)):
            raise ValueError(f"faiss_ivf: rows must lie in 0..{int(total_rows) - 1}")
        train_batches, nlist = self.plan(total_rows)
        training = rows < train_batches * self.loader_batch_size
        count = int(training.sum())
        if count < nlist:
            raise ValueError(
                f"faiss_ivf: the first {train_batches} loader batch(es) give {count} vector(s) to train {nlist} "
                "cells; FAISS needs at least one per cell: set index.params.nlist lower, or use the 'exact' index"
            )
        faiss = _faiss()
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, nlist, faiss.METRIC_L2)
        index.train(_to_faiss(vectors[training.to(vectors.device)]))
        index.nprobe = min(self.nprobe, nlist)
        self.index, self.nlist, self.train_batches = index, nlist, train_batches
        log.info("faiss_ivf: %d training rows = %d loader batches of %d; cells trained on the vectors of the first %d "
                 "(%d vectors), nlist %d, nprobe %d", total_rows, math.ceil(int(total_rows) / self.loader_batch_size),
                 self.loader_batch_size, train_batches, count, nlist, index.nprobe)
        self.add(vectors)

    def _add(self, vectors: torch.Tensor) -> None:
        if self.index is None:  # a plain add(): the vectors are training rows 0 .. M-1
            self.add_training(vectors, torch.arange(vectors.shape[0]), vectors.shape[0])
            return
        self._move_to_gpu_if_cuda(vectors.device)
        self.index.add(_to_faiss(vectors))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "FaissIVFIndex":
        faiss_index = cls._read(path)
        index = cls(faiss_index.d, nprobe=int(faiss_index.nprobe), nlist=int(faiss_index.nlist))
        index.index = faiss_index
        if device is not None:
            index._move_to_gpu_if_cuda(torch.device(device))
        return index


__all__ = ["AUTHOR_LOADER_BATCH_SIZE", "AUTHOR_NPROBE", "FaissIVFIndex", "NeighbourIndex", "author_nlist",
           "author_train_batches"]

"""What every baseline detector shares: input checks, the device, row chunks, and two small formulas.

Shapes: ``N`` samples, ``C`` classes, ``D`` feature dimension. Scores: ``[N]``, higher = more ID.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from grood.detectors.base import Detector
from grood.device import resolve_device
from grood.featureset import FeatureSet, LinearHead
from grood.method._checks import check_finite
from grood.valid_values import Count, checked_arguments

#: Rows per chunk when scoring; bounds the memory of every ``[chunk, C]`` / ``[chunk, D]`` temporary.
DEFAULT_CHUNK_ROWS = 8192


class BaselineDetector(Detector):
    """A :class:`~grood.detectors.base.Detector` with the checks and chunking every baseline uses.

    Class attributes a subclass may set:

    - ``fit_split``: the ID split :meth:`fit` must receive: ``"train"`` (default) or ``"val"`` (ReAct,
      whose OpenOOD ``setup`` reads the ID *validation* loader). The caller passes that split as the
      ``train`` argument of :meth:`fit`.
    - ``sweep``: OpenOOD's ``postprocessor_sweep`` for methods with ``APS_mode: True`` (automatic
      parameter search on ID/OOD validation data), keyed by this class's parameter names; empty when
      OpenOOD runs the method without a search. Defaults are OpenOOD's ``postprocessor_args``.
    - ``uses_labels``: :meth:`fit` reads the class labels (so they must be in ``0..C-1``).

    Args common to all: ``chunk_rows`` (rows per chunk when scoring) and ``device`` (where the maths
    runs; None = CUDA if available, else CPU). :meth:`score` always returns a CPU tensor ``[N]``.
    """

    @checked_arguments
    def __init__(self, chunk_rows: Count = DEFAULT_CHUNK_ROWS, device: str | torch.device | None = None) -> None:
        self.chunk_rows = int(chunk_rows)
        self.device = resolve_device(device)

    # -- checks -----------------------------------------------------------------------------------
    def _check_fit_inputs(self, train: FeatureSet, head: LinearHead) -> None:
        """``train`` and ``head`` agree in ``C`` and ``D``, hold finite values, and (if used) valid labels."""
        name = type(self).__name__
        if not isinstance(train, FeatureSet):
            raise TypeError(f"{name}.fit: train must be a FeatureSet; got {type(train).__name__}")
        if not isinstance(head, LinearHead):
            raise TypeError(f"{name}.fit: head must be a LinearHead; got {type(head).__name__}")
        if head.weight.dim() != 2 or head.bias.shape != (head.weight.shape[0],):
            raise ValueError(
                f"{name}.fit: head must have weight [C, D] and bias [C]; got {tuple(head.weight.shape)} and "
                f"{tuple(head.bias.shape)}"
            )
        num_classes, dim = head.weight.shape
        if len(train) == 0:
            raise ValueError(f"{name}.fit: the {self.fit_split} FeatureSet is empty")
        self._check_data(train, num_classes, dim, f"{name}.fit ({self.fit_split} split)")
        check_finite(f"{name}.fit: head.weight", head.weight)
        check_finite(f"{name}.fit: head.bias", head.bias)
        if self.uses_labels:
            bad = (train.labels < 0) | (train.labels >= num_classes)
            if bool(bad.any()):
                values = torch.unique(train.labels[bad])[:5].tolist()
                raise ValueError(
                    f"{name}.fit: {int(bad.sum())} {self.fit_split} label(s) outside 0..{num_classes - 1} "
                    f"(e.g. {values}); fit on ID samples only (OOD samples carry -1)"
                )

    def _check_data(self, data: FeatureSet, num_classes: int, dim: int, where: str) -> None:
        if data.num_classes != num_classes:
            raise ValueError(f"{where}: logits have {data.num_classes} classes but the head has {num_classes}")
        if data.dim != dim:
            raise ValueError(f"{where}: features have dimension {data.dim} but the head expects {dim}")
        check_finite(f"{where}: features", data.features)
        check_finite(f"{where}: logits", data.logits)

    def _start_fit(self, train: FeatureSet, head: LinearHead) -> None:
        """Check the fit inputs and remember the head's shape (``C``, ``D``) for :meth:`_start_score`."""
        self._check_fit_inputs(train, head)
        self.num_classes, self.feature_dim = head.weight.shape
        self._fitted = False

    def _start_score(self, data: FeatureSet) -> None:
        """Raise :class:`NotFittedError` before :meth:`fit`; check ``data`` against the fitted head."""
        self._check_fitted()
        if not isinstance(data, FeatureSet):
            raise TypeError(f"{type(self).__name__}.score: data must be a FeatureSet; got {type(data).__name__}")
        self._check_data(data, self.num_classes, self.feature_dim, f"{type(self).__name__}.score")

    # -- chunks -----------------------------------------------------------------------------------
    def _chunks(self, data: FeatureSet) -> Iterator[FeatureSet]:
        """``data`` in consecutive row chunks of at most ``chunk_rows``, moved to ``device``."""
        for start in range(0, len(data), self.chunk_rows):
            yield data.subset(slice(start, start + self.chunk_rows)).to(self.device)

    def _score_in_chunks(self, data: FeatureSet, score_chunk: Any) -> torch.Tensor:
        """Concatenate ``score_chunk(chunk) -> [B]`` over :meth:`_chunks`, on the CPU."""
        parts = [score_chunk(chunk).detach().cpu() for chunk in self._chunks(data)]
        if not parts:
            return torch.empty(0)
        return torch.cat(parts)


def head_to(head: LinearHead, device: torch.device, dtype: torch.dtype = torch.float32) -> LinearHead:
    """A copy of ``head`` on ``device`` in ``dtype``."""
    return LinearHead(head.weight.detach().to(device, dtype), head.bias.detach().to(device, dtype))


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)``: ``[N, C] -> [N]``, higher = more ID (EBO)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def chunked_rows(x: torch.Tensor, chunk_rows: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Row chunks of ``x [N, ...]`` of at most ``chunk_rows`` rows, on ``device``."""
    for start in range(0, x.shape[0], chunk_rows):
        yield x[start : start + chunk_rows].to(device)


def feature_mean(features: torch.Tensor, chunk_rows: int, device: torch.device) -> torch.Tensor:
    """``[D]`` float64 mean of ``features [N, D]``, summed in row chunks on ``device``."""
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=device)
    for rows in chunked_rows(features, chunk_rows, device):
        total += rows.to(torch.float64).sum(dim=0)
    return total / features.shape[0]


def class_means(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk_rows: int, device: torch.device, what: str
) -> torch.Tensor:
    """``[C, D]`` float64 mean feature of each class ``0..C-1`` (by ``labels [N]``), summed in row chunks.

    Raises when a class has no sample.
    """
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.long, device=device)
    for start in range(0, features.shape[0], chunk_rows):
        rows = features[start : start + chunk_rows].to(device, torch.float64)
        rows_labels = labels[start : start + chunk_rows].to(device)
        sums.index_add_(0, rows_labels, rows)
        counts += torch.bincount(rows_labels, minlength=num_classes)
    empty = (counts == 0).nonzero()[:, 0]
    if empty.numel() > 0:
        raise ValueError(
            f"{what}: class(es) {empty[:10].tolist()} have no sample; every class 0..{num_classes - 1} needs one"
        )
    return sums / counts[:, None].to(torch.float64)


def scatter_matrix(
    features: torch.Tensor,
    means: torch.Tensor,
    labels: torch.Tensor | None,
    chunk_rows: int,
    device: torch.device,
) -> torch.Tensor:
    """``[D, D]`` float64 scatter ``sum_i (x_i - m_i)(x_i - m_i)^T``, accumulated in row chunks.

    Args:
        features: ``[N, D]``.
        means: ``[C, D]`` class means with ``labels [N]`` (``m_i = means[labels[i]]``), or ``[D]`` one
            mean for every row with ``labels=None``.
    """
    dim = features.shape[1]
    means = means.to(device, torch.float64)
    total = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for start in range(0, features.shape[0], chunk_rows):
        rows = features[start : start + chunk_rows].to(device, torch.float64)
        centre = means if labels is None else means[labels[start : start + chunk_rows].to(device)]
        centred = rows - centre
        total += centred.T @ centred
    return total

"""Class and OOD prototypes (paper section 5): eq. 7, eq. 8 and the section-5.2 proximity filter.

Shapes: ``N`` samples, ``C`` classes, ``D`` feature dimension (``*S`` for any feature shape, e.g.
``[c, h, w]`` early feature maps). Class indices are ``0..C-1`` (the paper's ``1..C``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grood.method._checks import check_finite, check_labels, check_matrix


#: Rows converted to the accumulator's dtype at once, at most (bounds the float64 temporary).
_ROW_BLOCK = 1024
#: Elements converted to the accumulator's dtype at once, at most (an early-layer map has ~800k per row).
_BLOCK_ELEMENTS = 2**24


def _block_rows(feature_shape: Sequence[int]) -> int:
    """Rows per float64 block: at most ``_ROW_BLOCK`` and ``_BLOCK_ELEMENTS`` elements (one row at least)."""
    row = 1
    for size in feature_shape:
        row *= int(size)
    return max(1, min(_ROW_BLOCK, _BLOCK_ELEMENTS // max(1, row)))


def _check_batch(features: torch.Tensor, labels: torch.Tensor, feature_shape: tuple[int, ...],
                 num_classes: int) -> None:
    """A batch ``features [B, *S]``, ``labels [B]`` for an accumulator of ``feature_shape`` and ``num_classes``."""
    if tuple(features.shape[1:]) != feature_shape:
        raise ValueError(
            f"features have per-sample shape {tuple(features.shape[1:])} but the accumulator was built "
            f"for {feature_shape}"
        )
    check_labels("labels", labels, features.shape[0], num_classes)
    check_finite("features", features)


def _add_rows(sums: torch.Tensor, rows: torch.Tensor, features: torch.Tensor) -> None:
    """``sums[rows[i]] += features[i]`` in ``sums``' dtype, in row order, a bounded block of rows at a time."""
    step = _block_rows(features.shape[1:])
    for start in range(0, features.shape[0], step):
        block = features[start : start + step].to(device=sums.device, dtype=sums.dtype)
        sums.index_add_(0, rows[start : start + step], block)


def _class_count_and_shape(num_classes: int, feature_shape: int | Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """``(C, S)`` of a per-class accumulator, checked: ``C >= 1``; ``S`` a tuple of ints."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    shape = (int(feature_shape),) if isinstance(feature_shape, int) else tuple(int(s) for s in feature_shape)
    return int(num_classes), shape


class ClassMeanAccumulator:
    """Streaming per-class feature means (eq. 7), fed batch by batch.

    ``p_y = (1/|X_y|) sum_{x in X_y} f(x)``. Sums are kept in ``dtype`` (float64 by default) so that
    the mean over a large training set does not depend on the batch order or size.

    Attributes:
        sums: ``[C, *S]`` running per-class sums, ``dtype``.
        counts: ``[C]`` int64, samples seen per class.
    """

    def __init__(
        self,
        num_classes: int,
        feature_shape: int | Sequence[int],
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.num_classes, self.feature_shape = _class_count_and_shape(num_classes, feature_shape)
        shape = self.feature_shape
        self.sums = torch.zeros((self.num_classes, *shape), dtype=dtype, device=device)
        self.counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``features [B, *S]``, ``labels [B]`` integer classes in ``0..C-1``."""
        _check_batch(features, labels, self.feature_shape, self.num_classes)
        labels = labels.to(device=self.sums.device, dtype=torch.long)
        _add_rows(self.sums, labels, features)  # no float64 copy of the whole batch
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def means(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[C, *S]`` class means (eq. 7), in ``dtype`` (default: the sums' dtype).

        Raises:
            ValueError: when a class has no sample (its mean is undefined), naming the class indices.
        """
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            shown = empty[:20]
            more = f" and {len(empty) - 20} more" if len(empty) > 20 else ""
            raise ValueError(
                f"class(es) {shown}{more} of {self.num_classes} have no sample, so their prototype (eq. 7) is "
                "undefined; check the labels or num_classes"
            )
        counts = self.counts.to(self.sums.dtype).reshape(-1, *([1] * len(self.feature_shape)))
        means = self.sums / counts
        return means if dtype is None else means.to(dtype)


class PresentClassSums:
    """Per-class sums like :class:`ClassMeanAccumulator`'s, kept for the classes seen so far only.

    For one shard of a split's rows (a few classes when the image list is sorted by class) it holds ``[K, *S]``
    instead of ``[C, *S]``: at ImageNet size, ``C = 1000`` early-layer maps of ``[256, 56, 56]`` in float64 are
    6.4 GB. Each class's row receives the same additions in the same order as in a
    :class:`ClassMeanAccumulator` fed the same batches, so :meth:`dense` has the same bits.

    Attributes:
        classes: ``[K]`` int64, the classes seen, in the order first seen (ascending within a batch).
        sums: ``[K, *S]`` their sums, ``dtype``.
        counts: ``[K]`` int64, their samples.
    """

    def __init__(
        self,
        num_classes: int,
        feature_shape: int | Sequence[int],
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.num_classes, self.feature_shape = _class_count_and_shape(num_classes, feature_shape)
        shape = self.feature_shape
        self._slot = torch.full((self.num_classes,), -1, dtype=torch.long, device=device)  # class -> row, -1: none
        self._classes = torch.zeros(0, dtype=torch.long, device=device)
        self._sums = torch.zeros((0, *shape), dtype=dtype, device=device)  # rows past K: room to grow, zero
        self._counts = torch.zeros(0, dtype=torch.long, device=device)

    @property
    def classes(self) -> torch.Tensor:
        return self._classes

    @property
    def sums(self) -> torch.Tensor:
        return self._sums[: self._classes.shape[0]]

    @property
    def counts(self) -> torch.Tensor:
        return self._counts[: self._classes.shape[0]]

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``features [B, *S]``, ``labels [B]`` integer classes in ``0..C-1``."""
        _check_batch(features, labels, self.feature_shape, self.num_classes)
        labels = labels.to(device=self._slot.device, dtype=torch.long)
        seen = torch.unique(labels)
        new = seen[self._slot[seen] < 0]
        if new.numel():
            known = self._classes.shape[0]
            self._grow(known + new.numel())
            self._slot[new] = torch.arange(known, known + new.numel(), device=self._slot.device)
            self._classes = torch.cat([self._classes, new])
        rows = self._slot[labels]
        _add_rows(self._sums, rows, features)
        self._counts.index_add_(0, rows, torch.ones_like(rows))

    def _grow(self, needed: int) -> None:
        """Room for ``needed`` rows: at least doubled each time (few copies), never more than ``C``."""
        capacity = self._sums.shape[0]
        if needed <= capacity:
            return
        capacity = min(self.num_classes, max(needed, 2 * capacity))
        sums = torch.zeros((capacity, *self.feature_shape), dtype=self._sums.dtype, device=self._sums.device)
        sums[: self._sums.shape[0]] = self._sums
        counts = torch.zeros(capacity, dtype=torch.long, device=self._counts.device)
        counts[: self._counts.shape[0]] = self._counts
        self._sums, self._counts = sums, counts

    def dense(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``([C, *S] sums, [C] counts)`` on ``device`` (default: the accumulator's), zero for unseen classes."""
        device = self._sums.device if device is None else torch.device(device)
        sums = torch.zeros((self.num_classes, *self.feature_shape), dtype=self._sums.dtype, device=device)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        classes = self._classes.to(device)
        sums.index_copy_(0, classes, self.sums.to(device))
        counts.index_copy_(0, classes, self.counts.to(device))
        return sums, counts


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7: ``[N, D]`` features, ``[N]`` labels -> ``[C, D]`` class prototypes (features' dtype).

    Accumulated in float64, a chunk of rows at a time (a memory-mapped ``features`` is streamed, see
    :mod:`grood.method.streaming`). Raises ``ValueError`` for a class without samples or labels out of range.
    """
    from grood.method.streaming import RowReader

    check_matrix("features", features)
    check_labels("labels", labels, features.shape[0], num_classes)
    accumulator = ClassMeanAccumulator(num_classes, features.shape[1], device=features.device)
    reader = RowReader(features, features.device, dtype=features.dtype)
    for rows, chunk in reader.chunks():
        accumulator.update(chunk, labels[rows])
    return accumulator.means(dtype=features.dtype)


def ood_prototype(features: torch.Tensor) -> torch.Tensor:
    """Eq. 8: the mean of ``[M, D]`` OOD (candidate) features -> ``[D]`` (features' dtype, float64 sum)."""
    check_matrix("OOD features", features)
    if features.shape[0] == 0:
        raise ValueError("cannot build an OOD prototype (eq. 8) from 0 feature rows; give at least one")
    check_finite("OOD features", features)
    return features.to(torch.float64).mean(dim=0).to(features.dtype)


def mean_of_class_prototypes(class_prototypes: torch.Tensor) -> torch.Tensor:
    """Appendix A.2 "Mean of Prototypes": ``[C, D] -> [D]``, the mean of the class prototypes."""
    check_matrix("class_prototypes", class_prototypes)
    if class_prototypes.shape[0] == 0:
        raise ValueError("class_prototypes is empty ([0, D]); need at least one class")
    return class_prototypes.to(torch.float64).mean(dim=0).to(class_prototypes.dtype)


def nearest_prototype_distance(features: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """``d_i = min_j ||f_i - p_j||_2``: ``[M, D]``, ``[C, D]`` -> ``[M]`` (Euclidean, not squared).

    Computed exactly (explicit differences, no ``|a|^2 + |b|^2 - 2ab`` expansion), class by class.
    """
    check_matrix("features", features)
    check_matrix("class_prototypes", class_prototypes, dim=features.shape[1])
    if class_prototypes.shape[0] == 0:
        raise ValueError("class_prototypes is empty ([0, D]); need at least one class")
    protos = class_prototypes.to(device=features.device, dtype=features.dtype)
    best = torch.full((features.shape[0],), float("inf"), dtype=features.dtype, device=features.device)
    for prototype in protos:
        best = torch.minimum(best, torch.linalg.vector_norm(features - prototype, dim=1))
    return best


def proximity_filter(
    candidates: torch.Tensor,
    class_prototypes: torch.Tensor,
    quantile: float,
    min_keep: int = 1,
) -> torch.Tensor:
    """Section 5.2 proximity-based filtering of OOD candidates: ``[M, D] -> [M', D]``.

    ``d_i = min_j ||f(o_i) - p_j||`` and ``tau = quantile(d, q)`` (linear interpolation). Candidates with
    ``d_i < tau`` (too close to the ID classes) are dropped; those with ``d_i >= tau`` are kept, in
    their original order. If fewer than ``min_keep`` remain, the ``min_keep`` candidates farthest from
    their nearest class prototype are kept instead (all of them when ``M < min_keep``).
    """
    if not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    if int(min_keep) < 0:
        raise ValueError(f"min_keep must be >= 0; got {min_keep}")
    check_matrix("candidates", candidates)
    if candidates.shape[0] == 0:
        raise ValueError("proximity_filter got 0 candidate rows; give at least one OOD candidate")
    check_finite("candidates", candidates)
    distances = nearest_prototype_distance(candidates, class_prototypes).to(torch.float64)
    tau = torch.quantile(distances, float(quantile))
    keep = distances >= tau
    if int(keep.sum()) < int(min_keep):
        farthest = torch.topk(distances, min(int(min_keep), distances.shape[0])).indices
        keep = torch.zeros_like(keep)
        keep[farthest] = True
    return candidates[keep]


#: Relative tolerance under which an OOD prototype counts as equal to a class prototype (float32 rounding
#: of features of norm ~1-100 is ~1e-7 relative; 1e-5 leaves room for a mean over many rows).
PROTOTYPE_SEPARATION_RTOL = 1e-5


def check_ood_prototype_separated(ood_prototype: torch.Tensor, class_prototypes: torch.Tensor,
                                  rtol: float = PROTOTYPE_SEPARATION_RTOL) -> None:
    """Raise ValueError naming the class whose prototype ``class_prototypes [C, D]`` equals the OOD prototype
    ``[D]`` within ``rtol`` times the largest prototype norm: eq. 3 then gives that class and the OOD class
    the same logit, and eq. 5's gradients stop separating ID from OOD."""
    protos = class_prototypes.to(torch.float64)
    p_ood = ood_prototype.to(device=protos.device, dtype=torch.float64)
    distances = (protos - p_ood).norm(dim=1)
    scale = max(float(protos.norm(dim=1).max()), float(p_ood.norm()), 1e-12)
    nearest = int(distances.argmin())
    if float(distances[nearest]) <= rtol * scale:
        raise ValueError(
            f"the OOD prototype coincides with the prototype of class {nearest} (distance "
            f"{float(distances[nearest]):.3g}, tolerance {rtol * scale:.3g} = {rtol:g} x the largest prototype "
            "norm): GROOD cannot tell that class from OOD. Build the OOD prototype from OOD-like data (another "
            "prototype strategy, e.g. mixup) or check the images it was made from"
        )

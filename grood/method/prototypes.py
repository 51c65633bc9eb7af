"""Class and OOD prototypes (paper section 5): eq. 7, eq. 8 and the section-5.2 proximity filter.

Shapes: ``N`` samples, ``C`` classes, ``D`` feature dimension (``*S`` for any feature shape, e.g.
``[c, h, w]`` early feature maps). Class indices are ``0..C-1`` (the paper's ``1..C``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grood.method._checks import check_finite, check_labels, check_matrix


#: Rows converted to the accumulator's dtype at once (bounds the float64 temporary).
_ROW_BLOCK = 1024


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
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        shape = (int(feature_shape),) if isinstance(feature_shape, int) else tuple(int(s) for s in feature_shape)
        self.num_classes = int(num_classes)
        self.feature_shape: tuple[int, ...] = shape
        self.sums = torch.zeros((self.num_classes, *shape), dtype=dtype, device=device)
        self.counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``features [B, *S]``, ``labels [B]`` integer classes in ``0..C-1``."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"features have per-sample shape {tuple(features.shape[1:])} but the accumulator was built "
                f"for {self.feature_shape}"
            )
        check_labels("labels", labels, features.shape[0], self.num_classes)
        check_finite("features", features)
        labels = labels.to(device=self.sums.device, dtype=torch.long)
        # converted to the sums' dtype a block of rows at a time: no float64 copy of the whole batch
        for start in range(0, features.shape[0], _ROW_BLOCK):
            block = features[start : start + _ROW_BLOCK].to(device=self.sums.device, dtype=self.sums.dtype)
            self.sums.index_add_(0, labels[start : start + _ROW_BLOCK], block)
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

"""Class prototypes (paper eq. 7), the OOD prototype (eq. 8) and the proximity filter (section 5.2)."""

from __future__ import annotations

from typing import Sequence

import torch


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"label {bad} is outside the valid range 0..{num_classes - 1}")


class ClassMeanAccumulator:
    """Streaming per-class means (eq. 7): sums and counts, so features never need to be all in memory.

    Works for penultimate features (``feature_shape = (D,)``) and for early feature maps
    (``feature_shape = (c, h, w)``). Sums are kept in float64.
    """

    def __init__(
        self,
        num_classes: int,
        feature_shape: Sequence[int] | int,
        device: str | torch.device | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        shape = (feature_shape,) if isinstance(feature_shape, int) else tuple(feature_shape)
        self.num_classes = num_classes
        self.feature_shape = shape
        self.sums = torch.zeros((num_classes, *shape), dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``features [B, *S]``, ``labels [B]`` in ``0..C-1``."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"features of shape {tuple(features.shape[1:])} per sample; the accumulator expects "
                f"{self.feature_shape}"
            )
        if labels.shape != features.shape[:1]:
            raise ValueError(f"{features.shape[0]} feature rows but labels of shape {tuple(labels.shape)}")
        labels = labels.to(self.sums.device).long()
        _check_labels(labels, self.num_classes)
        flat = features.to(self.sums.device, torch.float64).reshape(features.shape[0], -1)
        self.sums.view(self.num_classes, -1).index_add_(0, labels, flat)
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def means(self) -> torch.Tensor:
        """``[C, *S]`` float32 class means; a class without samples is an error naming it."""
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"no training sample for class(es) {empty}: their prototype (eq. 7) is undefined; "
                "check the training list's labels"
            )
        shape = (-1,) + (1,) * len(self.feature_shape)
        return (self.sums / self.counts.to(torch.float64).view(shape)).float()


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7: ``p_y = mean of f(x) over training samples of class y``.

    Args:
        features: ``[N, D]`` (or ``[N, *S]``) features of the training samples.
        labels: ``[N]`` true labels in ``0..C-1``.
    Returns:
        ``[C, D]`` (or ``[C, *S]``) float32 prototypes.
    """
    accumulator = ClassMeanAccumulator(num_classes, tuple(features.shape[1:]), device=features.device)
    accumulator.update(features, labels)
    return accumulator.means()


def ood_prototype(features: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``p_ood = mean of f_pen(x) over X_ood``. ``[M, D] -> [D]``."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"the OOD prototype needs a non-empty [M, D] feature set; got shape {tuple(features.shape)}")
    return features.double().mean(dim=0).float()


def nearest_prototype_distance(features: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """``d_i = min_j ||f(o_i) - p_j||_2`` (section 5.2). ``[M, D], [C, D] -> [M]``."""
    return torch.cdist(features.float(), class_prototypes.float().to(features.device)).min(dim=1).values


def proximity_filter(
    candidates: torch.Tensor,
    class_prototypes: torch.Tensor,
    quantile: float,
    min_keep: int = 1,
) -> torch.Tensor:
    """Section 5.2's proximity filter: drop candidates closer to the ID prototypes than the ``q``-quantile.

    A candidate is kept when its distance to its nearest class prototype is at least the ``quantile``
    of all those distances; at least ``min_keep`` candidates (the farthest) are always kept, or all when
    there are fewer.

    Args:
        candidates: ``[M, D]`` candidate OOD features.
        class_prototypes: ``[C, D]``.
    Returns:
        ``[M', D]`` the kept candidates, in their original order.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"the proximity filter's quantile must lie in [0, 1]; got {quantile}")
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1; got {min_keep}")
    distances = nearest_prototype_distance(candidates, class_prototypes)
    threshold = torch.quantile(distances.double(), quantile)
    keep = distances.double() >= threshold
    if int(keep.sum()) < min(min_keep, candidates.shape[0]):
        farthest = distances.argsort(descending=True)[:min_keep]
        keep = torch.zeros_like(keep)
        keep[farthest] = True
    return candidates[keep]


def mean_of_class_prototypes(class_prototypes: torch.Tensor) -> torch.Tensor:
    """Appendix A.2 "Mean of Prototypes": ``[C, D] -> [D]``."""
    return class_prototypes.double().mean(dim=0).float()

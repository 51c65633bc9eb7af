"""fDBD: fast decision-boundary distance (Liu & Qin, ICML 2024); own code.

Matched: OpenOOD ``fdbd_postprocessor.py`` (``fdbd.yml``: ``distance_as_normalizer: True``) and the
fDBD paper (eq. 5). For predicted class ``k = argmax logits``, the distance of ``x`` to the decision
boundary between ``k`` and ``c`` is ``|z_k - z_c| / ||w_k - w_c||``; the score sums it over ``c != k``
and divides by ``||x - mean_train||`` (or by ``||x||`` with ``distance_as_normalizer=False``, OpenOOD's
APS alternative):

    ``score(x) = sum_{c != k} |z_k - z_c| / ||w_k - w_c|| / ||x - mu_train||``   (higher = more ID).

The paper averages over the ``C - 1`` classes; OpenOOD sums, a constant factor, so the ranking is the
same; OpenOOD's sum is kept. Own code because pytorch-ood's ``fDBD`` (marked ``ai_coded``) builds a
``[C, C, D]`` tensor for the weight differences (8 GB for ImageNet's 1000 x 1000 x 2048) and has no
``distance_as_normalizer=False``; otherwise it computes the same (cross-checked in the tests).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector, feature_mean
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, checked_arguments


def weight_difference_norms(weight: torch.Tensor) -> torch.Tensor:
    """``[C, C]`` float64 ``||w_p - w_c||``, with 1 on the diagonal (OpenOOD's ``denominator_matrix``)."""
    w = weight.to(torch.float64)
    squared_norms = (w * w).sum(dim=1)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * w @ w.T).clamp_min(0.0)
    norms = squared.sqrt()
    norms.fill_diagonal_(1.0)
    return norms


def boundary_distance_sum(logits: torch.Tensor, denominators: torch.Tensor) -> torch.Tensor:
    """``[N]`` ``sum_c |z_k - z_c| / ||w_k - w_c||`` for ``k = argmax z`` (the ``c = k`` term is 0)."""
    z = logits.to(torch.float64)
    max_logit, predicted = z.max(dim=1)
    return ((max_logit[:, None] - z).abs() / denominators[predicted]).sum(dim=1)


class FDBD(BaselineDetector):
    """fDBD: summed distances to the decision boundaries, normalised by the feature's distance to the
    training mean (higher = more ID). Fit on the ID training split (its mean feature).

    Args:
        distance_as_normalizer: divide by ``||x - mean_train||`` (True, OpenOOD's default) or by ``||x||``.
    """

    name: ClassVar[str] = "fdbd"
    reference: ClassVar[str] = "Liu & Qin, Fast Decision Boundary based Out-of-Distribution Detector, ICML 2024"
    sweep: ClassVar[dict[str, list]] = {"distance_as_normalizer": [True, False]}

    @checked_arguments
    def __init__(
        self,
        distance_as_normalizer: bool = True,
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        if not isinstance(distance_as_normalizer, bool):
            raise ValueError(f"FDBD: distance_as_normalizer must be True or False; got {distance_as_normalizer!r}")
        self.distance_as_normalizer = distance_as_normalizer

    def fit(self, train: FeatureSet, head: LinearHead) -> "FDBD":
        self._start_fit(train, head)
        self.train_mean = feature_mean(train.features, self.chunk_rows, self.device)
        self.denominators = weight_difference_norms(head.weight.detach().to(self.device))
        self._fitted = True
        return self

    def _score_chunk(self, chunk: FeatureSet) -> torch.Tensor:
        x = chunk.features.to(torch.float64)
        centre = self.train_mean if self.distance_as_normalizer else torch.zeros_like(self.train_mean)
        return boundary_distance_sum(chunk.logits, self.denominators) / (x - centre).norm(dim=1)

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, self._score_chunk)

"""NCI: neural-collapse-inspired detector (Liu & Qin, CVPR 2025), through pytorch-ood.

Matched: OpenOOD ``nci_postprocessor.py`` (``nci.yml``: alpha 0.0001) and the NCI paper: with
``mu`` = mean training feature and ``k = argmax`` of the head's logits,

    ``score(x) = w_k . (x - mu) / ||x - mu|| + alpha * ||x||_1``   (higher = more ID),

``w_k`` the (unnormalised) fc weight row of the predicted class. pytorch-ood's ``NCI`` computes exactly
minus this (for ``alpha > 0``; for ``alpha = 0`` the penalty term vanishes in both), so it is driven
through :mod:`grood.detectors.pytorch_ood_adapter`. It predicts ``k`` from ``head(features)``, while
OpenOOD uses the network's logits; these agree up to float rounding.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_ood.detector import NCI as PodNCI

from grood.detectors._common import DEFAULT_CHUNK_ROWS
from grood.detectors.pytorch_ood_adapter import PytorchOODDetector, linear_module
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, NonNegative, checked_arguments


class NCI(PytorchOODDetector):
    """NCI: cosine-like alignment of ``x - mu`` with the predicted class's weight, plus ``alpha * ||x||_1``.

    Fit on the ID training split (its mean feature).

    Args:
        alpha: weight of the L1 feature-norm term (OpenOOD ``nci.yml``: 0.0001).
    """

    name: ClassVar[str] = "nci"
    reference: ClassVar[str] = "Liu & Qin, Detecting Out-of-distribution through the Lens of Neural Collapse, CVPR 2025"
    sweep: ClassVar[dict[str, list]] = {"alpha": [0.0001, 0.001, 0.01, 0.1]}

    @checked_arguments
    def __init__(
        self, alpha: NonNegative = 0.0001, chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.alpha = float(alpha)

    def fit(self, train: FeatureSet, head: LinearHead) -> "NCI":
        self._start_fit(train, head)
        self.pod = PodNCI(encoder=None, head=linear_module(head, self.device), alpha=self.alpha).to(self.device)
        self.pod.fit_features(train.features)
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_features(chunk.features)

"""GradNorm (Huang, Geng & Li, NeurIPS 2021) in closed form on cached features; own code.

Matched: OpenOOD ``gradnorm_postprocessor.py`` (no hyper-parameters). OpenOOD back-propagates, one
sample at a time, the loss ``L = -sum_c log softmax(z)_c`` (cross-entropy against an all-ones target)
through the fc layer ``z = W x + b`` and scores the L1 norm of ``dL/dW``. Since ``dL/dz_c = C p_c - 1``
(``p = softmax(z)``) and ``dL/dW_{cd} = (C p_c - 1) x_d``,

    ``score(x) = ||dL/dW||_1 = (sum_c |C p_c - 1|) * (sum_d |x_d|)``   (higher = more ID).

The paper's loss is ``1/C`` of OpenOOD's (KL divergence to the uniform distribution, temperature 1),
which scales every score by the same constant and so changes no metric. The closed form is checked
against autograd in ``tests/test_detectors.py``. pytorch-ood's ``GradNorm`` (marked ``ai_coded``) needs
the network and differentiates through it, so it is not used.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from grood.detectors._common import BaselineDetector
from grood.featureset import FeatureSet, LinearHead


def gradnorm_score(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``[N]`` L1 norm of ``d(-sum_c log softmax(logits)_c) / dW``: ``sum_c |C p_c - 1| * ||x||_1``."""
    num_classes = logits.shape[1]
    probabilities = torch.softmax(logits.to(torch.float64), dim=1)
    logit_gradient_l1 = (num_classes * probabilities - 1.0).abs().sum(dim=1)
    return logit_gradient_l1 * features.to(torch.float64).abs().sum(dim=1)


class GradNorm(BaselineDetector):
    """GradNorm: L1 norm of the gradient of the uniform-target cross-entropy w.r.t. the fc weight.

    Uses the cached logits and features; nothing to fit (``fit`` only checks shapes).
    """

    name: ClassVar[str] = "gradnorm"
    reference: ClassVar[str] = (
        "Huang, Geng & Li, On the Importance of Gradients for Detecting Distributional Shifts in the Wild, "
        "NeurIPS 2021"
    )

    def fit(self, train: FeatureSet, head: LinearHead) -> "GradNorm":
        self._start_fit(train, head)
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: gradnorm_score(chunk.features, chunk.logits))

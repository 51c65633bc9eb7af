"""Drive pytorch-ood detectors on cached outputs, and convert their sign, here and only here.

pytorch-ood's detectors return **outlier** scores (higher = more OOD); grood and OpenOOD use
in-distribution scores (higher = more ID). :func:`to_id_score` is the single conversion, applied by
:meth:`PytorchOODDetector.score` to whatever the wrapped detector's ``predict_logits`` /
``predict_features`` / ``predict_feature_maps`` returns for a chunk of rows.

A subclass builds its pytorch-ood detector in :meth:`fit` (store it as ``self.pod``) and implements
:meth:`PytorchOODDetector._outlier_scores` for one chunk; it never negates anything itself.
"""

from __future__ import annotations

import torch
from torch import nn

from grood.detectors._common import BaselineDetector
from grood.featureset import FeatureSet, LinearHead


def to_id_score(outlier_scores: torch.Tensor) -> torch.Tensor:
    """pytorch-ood's outlier score (higher = OOD) -> grood's score (higher = ID): ``-outlier_scores``."""
    return -outlier_scores


def linear_module(head: LinearHead, device: torch.device) -> nn.Linear:
    """``head`` as a frozen ``nn.Linear(D, C)`` on ``device`` (pytorch-ood's SHE and NCI want a module)."""
    num_classes, dim = head.weight.shape
    layer = nn.Linear(dim, num_classes)
    with torch.no_grad():
        layer.weight.copy_(head.weight.detach())
        layer.bias.copy_(head.bias.detach())
    layer.requires_grad_(False)
    return layer.to(device)


class PytorchOODDetector(BaselineDetector):
    """Base for detectors whose score is minus a pytorch-ood detector's outlier score."""

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        """pytorch-ood's ``[B]`` outlier scores (higher = OOD) for ``chunk`` (already on ``device``)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        """``[N]`` CPU scores, higher = more ID: minus pytorch-ood's outlier score, chunk by chunk."""
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: to_id_score(self._outlier_scores(chunk)))

"""Detectors that reshape the penultimate features or the last layer, then score the energy of the logits.

All four work on the **pooled** penultimate features ``[N, D]`` of the cache and the linear head, as
OpenOOD v1.5 does:

- ReAct: OpenOOD ``react_postprocessor.py`` + ``networks/react_net.py``: clip the pooled features at
  the ``percentile``-th percentile of *all* pooled feature values of the ID **validation** split
  (``setup`` reads ``id_loader_dict['val']``), apply the fc layer, score ``logsumexp``. ``react.yml``:
  percentile 90. The threshold is computed here with ``numpy.percentile`` (linear interpolation, as
  OpenOOD); clipping, head and energy run in pytorch-ood's ``ReAct`` (given that threshold, with
  ``EnergyBased.score``), whose outlier score is converted in :mod:`grood.detectors.pytorch_ood_adapter`.
  ``fit_split = "val"``: pass the ID validation FeatureSet to :meth:`ReAct.fit`.
- ASH: OpenOOD ``ash_postprocessor.py`` + ``networks/ash_net.py``: OpenOOD v1.5 applies **ASH-B** to the
  *pooled* penultimate features (reshaped to ``[N, D, 1, 1]``), **not** to the pre-pooling feature map
  as the ASH paper does for ResNet-50; grood does the same as OpenOOD, so the cache suffices. Keep the
  top ``k = D - round(D * percentile / 100)`` activations per sample, set each kept one to
  ``sum(all activations) / k`` and the rest to 0, apply fc, score ``logsumexp``. ``ash.yml``:
  percentile 90. ``variant`` also offers the paper's ASH-P and ASH-S on the same pooled features. Own
  code: pytorch-ood's ``ASH`` takes the percentile as a fraction and computes ``k`` with
  ``round(D * fraction)``, which differs from OpenOOD's ``round(D * percent / 100)`` for some ``D``.
- SCALE: OpenOOD ``scale_postprocessor.py`` + ``networks/scale_net.py`` (Xu et al., ICLR 2024): multiply
  the pooled features by ``exp(s1 / s2)`` (``s1`` = sum of all activations, ``s2`` = sum of the top
  ``k`` as in ASH), without pruning; fc; ``logsumexp``. ``scale.yml``: percentile 85. Own code for the
  same ``k`` reason as ASH (pytorch-ood's ``SCALE`` is also marked ``ai_coded``).
- DICE: OpenOOD ``dice_postprocessor.py`` and the DICE paper (Sun & Li, ECCV 2022): contribution
  ``mean_train_feature[d] * W[c, d]``; keep the weights whose contribution is above the ``p``-th
  percentile of all ``C * D`` contributions (``numpy.percentile``), zero the rest, score ``logsumexp``
  of ``features @ W_masked.T + b``. ``dice.yml``: p 90, no APS. Own code because pytorch-ood's
  ``DICE.predict_features`` builds a ``[B, C, D]`` tensor (8 GB for 1,000 ImageNet rows); the maths
  is the same (cross-checked in the tests).
"""

from __future__ import annotations

from typing import Annotated, Callable, ClassVar

import numpy as np
import torch
from pytorch_ood.detector import EnergyBased
from pytorch_ood.detector import ReAct as PodReAct

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector, energy, feature_mean, head_to
from grood.detectors.pytorch_ood_adapter import PytorchOODDetector
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, Percent, Valid, checked_arguments


# -- ReAct ---------------------------------------------------------------------------------------


class ReAct(PytorchOODDetector):
    """ReAct: ``logsumexp(head(min(features, threshold)))``, threshold = ``percentile`` of ID val features.

    Fit on the ID **validation** split (``fit_split = "val"``), as OpenOOD.

    Args:
        percentile: percentile (0..100) of all ID validation feature values used as the clipping
            threshold (OpenOOD ``react.yml``: 90).
    """

    name: ClassVar[str] = "react"
    reference: ClassVar[str] = (
        "Sun, Guo & Li, ReAct: Out-of-distribution Detection With Rectified Activations, NeurIPS 2021"
    )
    fit_split: ClassVar[str] = "val"
    sweep: ClassVar[dict[str, list]] = {"percentile": [85, 90, 95, 99]}

    @checked_arguments
    def __init__(
        self, percentile: Percent = 90, chunk_rows: Count = DEFAULT_CHUNK_ROWS, device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.percentile = float(percentile)

    def fit(self, train: FeatureSet, head: LinearHead) -> "ReAct":
        """``train``: the ID **validation** FeatureSet (OpenOOD's ReAct setup split); ``head``: the fc layer."""
        self._start_fit(train, head)
        values = train.features.detach().cpu().numpy().reshape(-1)
        self.threshold = float(np.percentile(values, self.percentile))
        head_on_device = head_to(head, self.device)

        def clipped_head(feature_maps: torch.Tensor) -> torch.Tensor:
            return head_on_device(feature_maps.flatten(1))

        self.pod = PodReAct(backbone=None, head=clipped_head, threshold=self.threshold, detector=EnergyBased.score)
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_feature_maps(chunk.features[:, :, None, None])


# -- ASH and SCALE -------------------------------------------------------------------------------


def kept_activations(dim: int, percentile: float) -> int:
    """ASH/SCALE's ``k = D - round(D * percentile / 100)``: how many activations per sample stay (>= 1).

    ``round`` is round-half-to-even, as OpenOOD's ``np.round``.
    """
    k = dim - int(round(dim * percentile / 100.0))
    if k < 1:
        raise ValueError(
            f"percentile {percentile} keeps no activation of D={dim} features (k = D - round(D * p / 100) = {k}); "
            "use a smaller percentile"
        )
    return k


def _top_k(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(features, k, dim=1)


def ash_b(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """ASH-B on ``[N, D]``: the top ``k`` activations become ``sum(features) / k``, the others 0."""
    k = kept_activations(features.shape[1], percentile)
    _, index = _top_k(features, k)
    fill = (features.sum(dim=1) / k)[:, None].expand(-1, k)
    return torch.zeros_like(features).scatter_(1, index, fill)


def ash_p(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """ASH-P on ``[N, D]``: keep the top ``k`` activations, set the others to 0."""
    values, index = _top_k(features, kept_activations(features.shape[1], percentile))
    return torch.zeros_like(features).scatter_(1, index, values)


def ash_s(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """ASH-S on ``[N, D]``: ASH-P, then multiply by ``exp(s1 / s2)`` (sums before / after pruning)."""
    pruned = ash_p(features, percentile)
    return pruned * torch.exp(features.sum(dim=1) / pruned.sum(dim=1))[:, None]


def scale_shaping(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """SCALE on ``[N, D]``: ``features * exp(s1 / s2)``, ``s1`` = sum of all, ``s2`` = sum of the top ``k``."""
    values, _ = _top_k(features, kept_activations(features.shape[1], percentile))
    return features * torch.exp(features.sum(dim=1) / values.sum(dim=1))[:, None]


ASH_VARIANTS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "ash-b": ash_b,
    "ash-p": ash_p,
    "ash-s": ash_s,
}
#: ASH's ``variant``: a name of :data:`ASH_VARIANTS`.
AshVariant = Annotated[str, Valid(choices=tuple(ASH_VARIANTS))]


class _ShapedEnergy(BaselineDetector):
    """``logsumexp(head(shape(features, percentile)))`` for a per-sample shaping function."""

    def _shape(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, train: FeatureSet, head: LinearHead) -> "_ShapedEnergy":
        self._start_fit(train, head)
        kept_activations(self.feature_dim, self.percentile)  # fails now, not at score time, when k would be 0
        self.head = head_to(head, self.device)
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: energy(self.head(self._shape(chunk.features))))


class ASH(_ShapedEnergy):
    """ASH on the pooled penultimate features (OpenOOD v1.5: ASH-B), then the energy of the logits.

    Args:
        percentile: percent (0..100) of activations pruned per sample (OpenOOD ``ash.yml``: 90).
        variant: ``"ash-b"`` (OpenOOD's, default), ``"ash-p"`` or ``"ash-s"``.
    """

    name: ClassVar[str] = "ash"
    reference: ClassVar[str] = (
        "Djurisic, Bozanic, Ashok & Liu, Extremely Simple Activation Shaping for Out-of-Distribution Detection, "
        "ICLR 2023"
    )
    sweep: ClassVar[dict[str, list]] = {"percentile": [65, 70, 75, 80, 85, 90, 95]}

    @checked_arguments
    def __init__(
        self,
        percentile: Percent = 90,
        variant: AshVariant = "ash-b",
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.percentile = float(percentile)
        self.variant = variant

    def _shape(self, features: torch.Tensor) -> torch.Tensor:
        return ASH_VARIANTS[self.variant](features, self.percentile)


class SCALE(_ShapedEnergy):
    """SCALE: scale the pooled features by ``exp(s1 / s2)``, then the energy of the logits.

    Args:
        percentile: percent (0..100) of activations left out of ``s2`` (OpenOOD ``scale.yml``: 85).
    """

    name: ClassVar[str] = "scale"
    reference: ClassVar[str] = (
        "Xu, Chen, Franchi & Yao, Scaling for Training Time and Post-hoc Out-of-distribution Detection "
        "Enhancement, ICLR 2024"
    )
    sweep: ClassVar[dict[str, list]] = {"percentile": [65, 70, 75, 80, 85, 90, 95]}

    @checked_arguments
    def __init__(
        self, percentile: Percent = 85, chunk_rows: Count = DEFAULT_CHUNK_ROWS, device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.percentile = float(percentile)

    def _shape(self, features: torch.Tensor) -> torch.Tensor:
        return scale_shaping(features, self.percentile)


# -- DICE ----------------------------------------------------------------------------------------


def dice_mask(mean_feature: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
    """DICE's ``[C, D]`` bool mask: contribution ``mean_feature[d] * W[c, d]`` above its ``p``-th percentile."""
    contribution = mean_feature[None, :] * weight
    threshold = np.percentile(contribution.detach().cpu().numpy(), p)
    return contribution > torch.as_tensor(threshold, dtype=contribution.dtype, device=contribution.device)


class DICE(BaselineDetector):
    """DICE: energy of the logits of the sparsified head ``features @ (W * mask).T + b``.

    Fit on the ID training split (mean training feature).

    Args:
        p: percentile (0..100) of weight contributions dropped (OpenOOD ``dice.yml``: 90).
    """

    name: ClassVar[str] = "dice"
    reference: ClassVar[str] = "Sun & Li, DICE: Leveraging Sparsification for Out-of-Distribution Detection, ECCV 2022"

    @checked_arguments
    def __init__(
        self, p: Percent = 90, chunk_rows: Count = DEFAULT_CHUNK_ROWS, device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.p = float(p)

    def fit(self, train: FeatureSet, head: LinearHead) -> "DICE":
        self._start_fit(train, head)
        self.mean_feature = feature_mean(train.features, self.chunk_rows, self.device).float()
        weight = head.weight.detach().to(self.device, torch.float32)
        self.mask = dice_mask(self.mean_feature, weight, self.p)
        self.head = LinearHead(weight * self.mask, head.bias.detach().to(self.device, torch.float32))
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: energy(self.head(chunk.features)))

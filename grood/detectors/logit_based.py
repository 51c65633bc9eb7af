"""Detectors that read only the logits: MSP, EBO, MLS (through pytorch-ood) and GEN (own code).

Sources matched (OpenOOD v1.5 = ``openood/postprocessors/*.py`` and ``configs/postprocessors/*.yml``):

- MSP: OpenOOD ``base_postprocessor.py`` (max softmax probability); pytorch-ood ``MaxSoftmax``
  (``t=1``) computes the same, checked in ``tests/test_detectors.py``.
- EBO: OpenOOD ``ebo_postprocessor.py``, ``T * logsumexp(logits / T)``, ``ebo.yml`` temperature 1;
  pytorch-ood ``EnergyBased`` returns exactly its negative.
- MLS: OpenOOD ``maxlogit_postprocessor.py`` (max logit); pytorch-ood ``MaxLogit`` returns its negative.
- GEN: OpenOOD ``gen_postprocessor.py`` and the GEN paper (Liu et al., CVPR 2023, eq. 6):
  ``-sum_{j in top-M} p_j^gamma (1 - p_j)^gamma``, ``gen.yml`` gamma 0.1, M 100. Own code, because
  pytorch-ood's ``GEN`` (marked ``ai_coded``) clamps the probabilities to ``[1e-7, 1 - 1e-7]`` before the
  power, which changes the score of every sample with a probability below ``1e-7`` (``p^0.1`` is very
  sensitive there) and so the ranking; OpenOOD does not clamp.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_ood.detector import EnergyBased, MaxLogit, MaxSoftmax

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector
from grood.detectors.pytorch_ood_adapter import PytorchOODDetector
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, Positive, checked_arguments


class MSP(PytorchOODDetector):
    """Maximum softmax probability: ``max_c softmax(logits)_c`` (higher = more ID). Nothing to fit."""

    name: ClassVar[str] = "msp"
    reference: ClassVar[str] = (
        "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and Out-of-Distribution Examples in "
        "Neural Networks, ICLR 2017"
    )

    def fit(self, train: FeatureSet, head: LinearHead) -> "MSP":
        self._start_fit(train, head)
        self.pod = MaxSoftmax(None, t=1.0)
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_logits(chunk.logits)


class EBO(PytorchOODDetector):
    """Energy score ``T * logsumexp(logits / T)`` (negative free energy; higher = more ID).

    Args:
        temperature: ``T`` (OpenOOD ``ebo.yml``: 1; its APS sweep is ``[1]``).
    """

    name: ClassVar[str] = "ebo"
    reference: ClassVar[str] = "Liu, Wang, Owens & Li, Energy-based Out-of-distribution Detection, NeurIPS 2020"
    sweep: ClassVar[dict[str, list]] = {"temperature": [1]}

    @checked_arguments
    def __init__(
        self, temperature: Positive = 1.0, chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.temperature = float(temperature)

    def fit(self, train: FeatureSet, head: LinearHead) -> "EBO":
        self._start_fit(train, head)
        self.pod = EnergyBased(None, t=self.temperature)
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_logits(chunk.logits)


class MLS(PytorchOODDetector):
    """Maximum logit ``max_c logits_c`` (higher = more ID). Nothing to fit."""

    name: ClassVar[str] = "mls"
    reference: ClassVar[str] = (
        "Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, Scaling Out-of-Distribution "
        "Detection for Real-World Settings, ICML 2022"
    )

    def fit(self, train: FeatureSet, head: LinearHead) -> "MLS":
        self._start_fit(train, head)
        self.pod = MaxLogit(None)
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_logits(chunk.logits)


def generalized_entropy(probabilities: torch.Tensor, gamma: float, m: int) -> torch.Tensor:
    """GEN paper eq. 6 over the ``m`` largest probabilities: ``[N, C] -> [N]`` ``sum p^g (1 - p)^g``.

    No clamping (as OpenOOD). ``m >= C`` uses every class.
    """
    top = torch.sort(probabilities, dim=1).values[:, -m:]
    return (top.pow(gamma) * (1.0 - top).pow(gamma)).sum(dim=1)


class GEN(BaselineDetector):
    """Generalized entropy: ``-G_gamma(softmax(logits))`` over the top-``m`` classes (higher = more ID).

    Args:
        gamma: the exponent (OpenOOD ``gen.yml``: 0.1).
        m: number of largest probabilities summed (OpenOOD's ``M``: 100).
    """

    name: ClassVar[str] = "gen"
    reference: ClassVar[str] = (
        "Liu, Lochman & Zach, GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection, CVPR 2023"
    )
    sweep: ClassVar[dict[str, list]] = {"gamma": [0.01, 0.1, 0.5, 1, 2, 5, 10], "m": [10, 50, 100, 200, 500, 1000]}

    @checked_arguments
    def __init__(
        self,
        gamma: Positive = 0.1,
        m: Count = 100,
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.gamma = float(gamma)
        self.m = int(m)

    def fit(self, train: FeatureSet, head: LinearHead) -> "GEN":
        self._start_fit(train, head)
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(
            data, lambda chunk: -generalized_entropy(torch.softmax(chunk.logits, dim=1), self.gamma, self.m)
        )

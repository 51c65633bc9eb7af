"""The one detector interface shared by GROOD and every baseline.

Sign convention: :meth:`Detector.score` returns **higher = more in-distribution** (OpenOOD's
convention). Detectors adapted from pytorch-ood (whose convention is higher = more OOD) convert in
one place: :func:`grood.detectors.pytorch_ood_adapter` (see there).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch

from grood.featureset import FeatureSet, LinearHead
from grood.method.detector import GROOD, NotFittedError  # one exception for GROOD and every baseline

__all__ = ["Detector", "NotFittedError"]


class Detector(ABC):
    """A post-hoc OOD detector working on cached network outputs.

    Subclasses set ``name`` (the config/method name, lower case) and ``reference`` (the paper).
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: True for methods that must run the network again (ODIN's input perturbation).
    needs_network: ClassVar[bool] = False
    #: The ID split :meth:`fit` must receive: "train" for almost all; "val" for ReAct (as in OpenOOD).
    fit_split: ClassVar[str] = "train"

    @classmethod
    def parameter_problem(cls, params: Mapping[str, Any], feature_dim: int) -> str | None:
        """Why the complete constructor parameters ``params`` cannot work on ``feature_dim``-dimensional
        features (checked before any forward pass), or None. Most detectors have no such constraint."""
        return None

    @classmethod
    def nearest_valid(cls, params: Mapping[str, Any], feature_dim: int) -> dict[str, Any]:
        """``params`` with each value :meth:`parameter_problem` rejects replaced by a valid one: the choice the
        method documents for such a network where it has one (ViM: the paper's ``D / 2`` for small ``D``), else
        the nearest valid value."""
        return dict(params)

    def fit(self, train: FeatureSet, head: LinearHead) -> "Detector":
        """Fit on the ID split named by :attr:`fit_split` (training, or validation for ReAct)."""
        self._fitted = True
        return self

    @abstractmethod
    def score(self, data: FeatureSet) -> torch.Tensor:
        """``[N]`` float scores, higher = more in-distribution."""

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise NotFittedError(f"{type(self).__name__}.score() called before fit(); call fit(train, head) first")


# GROOD (grood.method, which imports nothing from grood.detectors) has the Detector interface: fit(train
# FeatureSet, head), score(FeatureSet), name, reference, needs_network, fit_split. It is registered here.
Detector.register(GROOD)

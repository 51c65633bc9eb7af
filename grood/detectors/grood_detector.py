"""GROOD behind the common :class:`~grood.detectors.base.Detector` interface.

The OOD prototype ``p_ood`` (eq. 8) is computed outside (strategies in :mod:`grood.ood_prototypes`,
several of which need the network) and handed over with :meth:`GROODDetector.set_ood_prototype`
before :meth:`fit`; without one, the mean of the class prototypes is used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from grood.detectors.base import Detector
from grood.featureset import FeatureSet, LinearHead
from grood.method.detector import GROOD


class GROODDetector(Detector):
    """GROOD (this paper): distance to the nearest training gradient w.r.t. the OOD prototype (eq. 6).

    Score: minus that distance (higher = more in-distribution).
    """

    name: ClassVar[str] = "grood"
    reference: ClassVar[str] = "GROOD: Gradient-Aware Out-of-Distribution Detection (this repository's paper)"

    def __init__(
        self,
        index: str = "exact",
        index_params: dict[str, Any] | None = None,
        k: int = 1,
        fit_on: str = "all",
        variant: str = "grood",
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model = GROOD(index=index, index_params=index_params, k=k, fit_on=fit_on, variant=variant,
                           device=device, progress=progress)
        self.ood_prototype: torch.Tensor | None = None

    def set_ood_prototype(self, ood_prototype: torch.Tensor | None) -> "GROODDetector":
        """``[D]`` the OOD prototype to use at the next :meth:`fit` (None = mean of class prototypes)."""
        self.ood_prototype = ood_prototype
        return self

    def fit(
        self, train: FeatureSet, head: LinearHead, class_prototypes: torch.Tensor | None = None
    ) -> "GROODDetector":
        """Fit on the training features; ``class_prototypes [C, D]``: eq. 7 already computed from ``train``
        (None: computed here)."""
        self.model.fit(
            train.features,
            train.labels,
            ood_prototype=self.ood_prototype,
            num_classes=train.num_classes,
            train_predictions=train.logits.argmax(dim=1),
            class_prototypes=class_prototypes,
        )
        self._fitted = True
        return self

    def score(self, data: FeatureSet) -> torch.Tensor:
        self._check_fitted()
        # the class_gradient variant differentiates w.r.t. the prototype of the classifier's prediction
        return self.model.score(data.features, predictions=data.logits.argmax(dim=1))

    def predict(self, data: FeatureSet) -> torch.Tensor:
        """``[N]`` nearest-class-prototype predictions (the paper's "NCP Acc.")."""
        self._check_fitted()
        return self.model.predict(data.features)

"""GROOD as a registered :class:`~grood.detectors.base.Detector`, like every baseline.

:class:`grood.method.GROOD` is the method on features (it imports nothing from ``grood.detectors``);
this adapter gives it the detector interface the pipeline drives: ``fit(train FeatureSet, head,
ood_prototype=, class_prototypes=)`` and ``score(FeatureSet)`` (higher = more in-distribution). Its
parameters are GROOD's own constructor parameters (``parameters_from``), declared once there.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from grood.detectors.base import Detector
from grood.featureset import FeatureSet, LinearHead
from grood.method.detector import GROOD
from grood.method.neighbours.recall import is_approximate, measure_recall
from grood.metrics import accuracy


class GROODDetector(Detector):
    """GROOD (eq. 5-7) fitted on the training FeatureSet with the run's OOD prototype (eq. 8/9) and index.

    Keyword arguments: those of :class:`grood.method.GROOD` (``k``, ``fit_on``, ``variant``, ``index``,
    ``index_params``, ``device``, ``progress``, ...).
    """

    name: ClassVar[str] = "grood"
    reference: ClassVar[str] = GROOD.reference
    uses_labels: ClassVar[bool] = True
    uses_ood_prototype: ClassVar[bool] = True
    uses_index: ClassVar[bool] = True
    defaults_in_config: ClassVar[bool] = True
    parameters_from: ClassVar[Any] = GROOD

    def __init__(self, **params: Any) -> None:
        self.grood = GROOD(**params)

    @classmethod
    def parameter_problem(cls, params: Mapping[str, Any], feature_dim: int) -> str | None:
        """Why GROOD's index cannot be built for ``feature_dim`` on its device (e.g. an int8 IVF scan on CUDA)."""
        try:
            GROOD(**params).check_index(feature_dim)
        except ValueError as error:
            return f"index={params.get('index')} {error}"
        return None

    def fit(self, train: FeatureSet, head: LinearHead, ood_prototype: torch.Tensor | None = None,
            class_prototypes: torch.Tensor | None = None) -> "GROODDetector":
        """Algorithm 1 on ``train`` (labels and predictions from it); ``head`` is not read."""
        self.grood.fit(train, ood_prototype=ood_prototype, class_prototypes=class_prototypes)
        return self

    def score(self, data: FeatureSet) -> torch.Tensor:
        """Algorithm 2: ``[N]`` scores, higher = more in-distribution."""
        return self.grood.score(data)

    def run_info(self, test: FeatureSet) -> dict[str, Any]:
        """The nearest-class-prototype accuracy on ``test`` (percent) and the index that ran ("exact" picks
        one per device)."""
        info: dict[str, Any] = {"ncp_accuracy": 100.0 * accuracy(self.grood.predict(test), test.labels)}
        built = self.grood.index
        if built is not None:
            info["index_built"] = built.kind + ("+norm_pruning" if getattr(built, "norm_pruning", False) else "")
        return info

    def search_recall(self, train: FeatureSet, queries: Mapping[str, FeatureSet], seed: int) -> dict[str, Any] | None:
        """recall@1 of an approximate index (``ivf``, ``faiss_ivf``) against exact search on 1,000 seeded
        queries (:func:`grood.method.neighbours.recall.measure_recall`); None for an exact one."""
        if not is_approximate(self.grood):
            return None
        return measure_recall(self.grood, train, queries, seed=seed)

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
from grood.method.detector import NotFittedError  # one exception for GROOD and every baseline

__all__ = ["Detector", "NotFittedError"]


class Detector(ABC):
    """A post-hoc OOD detector working on cached network outputs.

    Subclasses set ``name`` (the config/method name, lower case) and ``reference`` (the paper), and declare
    what they need from a run as the capabilities below; the pipeline reads those, never a method's name.
    Register a new detector with :func:`grood.components.register_method`.
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    # ---- capabilities: what a run gives the detector
    #: True for methods that must run the network again (ODIN's input perturbation): :meth:`score_images`.
    needs_network: ClassVar[bool] = False
    #: The ID split :meth:`fit` must receive: "train" for almost all; "val" for ReAct (as in OpenOOD).
    fit_split: ClassVar[str] = "train"
    #: :meth:`fit` reads the training labels (so they must be in ``0..C-1``).
    uses_labels: ClassVar[bool] = False
    #: :meth:`fit` takes ``ood_prototype [D]`` and ``class_prototypes [C, D]``: the run builds the OOD
    #: prototype of its ``prototype`` group (GROOD).
    uses_ood_prototype: ClassVar[bool] = False
    #: The constructor takes ``index`` and ``index_params``: the run's ``index`` group (GROOD, KNN).
    uses_index: ClassVar[bool] = False
    #: OpenOOD's APS search space (its ``postprocessor_sweep``), searched on the validation split when
    #: ``aps=true``; empty: no search.
    sweep: ClassVar[dict[str, list[Any]]] = {}
    #: False (baselines): each config parameter is None until set, meaning the constructor's default or, with
    #: a sweep, APS's pick. True: the config holds the constructor's defaults (never searched).
    defaults_in_config: ClassVar[bool] = False
    #: The callable whose signature declares the parameters (None: this class's constructor); an adapter
    #: that forwards its keyword arguments names the class it forwards them to.
    parameters_from: ClassVar[Any] = None

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

    def run_info(self, test: FeatureSet) -> dict[str, Any]:
        """What ``run.json`` records of the fitted detector beside its scores (``test``: the ID test split);
        ``ncp_accuracy`` goes to its own key, the rest to ``extra``."""
        return {}

    def search_recall(self, train: FeatureSet, queries: Mapping[str, FeatureSet], seed: int) -> dict[str, Any] | None:
        """How approximate the fitted detector's nearest-neighbour search is: recall@1 against exact search on
        a seeded sample of ``queries`` (split name -> its features), for ``run.json``; None for a detector
        whose search is exact or that has none."""
        return None

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise NotFittedError(f"{type(self).__name__}.score() called before fit(); call fit(train, head) first")


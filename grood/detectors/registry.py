"""Every detector by its config name, and :func:`build_detector` with named, checked parameters.

Names are OpenOOD v1.5's postprocessor names (``configs/postprocessors/<name>.yml``). Every parameter
defaults to OpenOOD's ``postprocessor_args``; a class's ``sweep`` holds OpenOOD's APS search space.
"""

from __future__ import annotations

import inspect
from typing import Any

from grood.detectors.activation_shaping import ASH, DICE, SCALE, ReAct
from grood.detectors.base import Detector
from grood.detectors.distance_based import KNN, MDS, RMDS, SHE
from grood.detectors.fdbd import FDBD
from grood.detectors.gradnorm import GradNorm
from grood.detectors.grood_adapter import GROODDetector
from grood.detectors.logit_based import EBO, GEN, MLS, MSP
from grood.detectors.nci import NCI
from grood.detectors.odin import ODIN
from grood.detectors.openmax import OpenMax
from grood.detectors.vim import ViM

#: The post-hoc baselines of the paper's Table 2, in its row order (GAIA and CIDER are not here:
#: GAIA needs gradients inside the network, CIDER a differently trained network).
TABLE2_BASELINES: tuple[str, ...] = (
    "openmax", "msp", "odin", "mds", "ebo", "react", "mls", "gradnorm",
    "vim", "knn", "dice", "ash", "she", "gen", "fdbd", "nci",
)  # fmt: skip

#: Every built-in detector by name, GROOD first (``method=all`` runs them in this order). Plugins add theirs
#: with :func:`grood.components.register_method`.
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        GROODDetector, OpenMax, MSP, ODIN, MDS, EBO, ReAct, MLS, GradNorm, ViM, KNN, DICE, ASH, SHE, GEN, FDBD,
        NCI, RMDS, SCALE,
    )
}  # fmt: skip


def detector_parameters(name: str) -> dict[str, Any]:
    """The constructor parameters of detector ``name`` and their defaults (for an adapter, those of the
    class it forwards them to: ``parameters_from``)."""
    cls = _detector_class(name)
    signature = inspect.signature(cls.parameters_from or cls)
    return {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if key != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def build_detector(name: str, **params: Any) -> Detector:
    """A new, unfitted detector ``name`` with ``params`` (each must be a constructor parameter).

    Raises:
        ValueError: unknown ``name`` (lists the valid names) or unknown parameter (names it and lists the
            valid ones).
    """
    valid = detector_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for detector {name!r}; valid parameters: {', '.join(valid) or '(none)'}"
        )
    return _detector_class(name)(**params)


def fit_split(detector: Detector | type[Detector]) -> str:
    """The ID split ``detector.fit`` must receive: ``"train"``, or ``"val"`` for ReAct (as OpenOOD)."""
    return getattr(detector, "fit_split", "train")


def _detector_class(name: str) -> type[Detector]:
    """A built-in detector, or a plugin's (:func:`grood.components.register_method`)."""
    if name in DETECTORS:
        return DETECTORS[name]
    from grood.components import components, load

    if name in components("method"):
        return load("method", name)
    raise ValueError(f"unknown detector {name!r}; valid names: {', '.join(sorted(components('method')))}")

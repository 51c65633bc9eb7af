"""Every OOD detector of the benchmark behind one interface (see :mod:`grood.detectors.base`)."""

from grood.detectors.base import Detector, NotFittedError
from grood.detectors.registry import DETECTORS, TABLE2_BASELINES, build_detector, detector_parameters, fit_split

__all__ = ["DETECTORS", "TABLE2_BASELINES", "Detector", "NotFittedError", "build_detector", "detector_parameters",
           "fit_split"]

"""GROOD's maths on tensors, one function per paper equation. Imports nothing from the rest of grood
except the device and atomic-write helpers.

- :mod:`grood.method.prototypes`: eq. 7 (class prototypes), eq. 8 (OOD prototype), section 5.2 filter.
- :mod:`grood.method.ncp`: eq. 2 (NCP logits), eq. 3 (probabilities), eq. 4 (loss), eq. 5 (gradient).
- :mod:`grood.method.neighbours`: eq. 6 (nearest-neighbour distance), exact / IVF / torch indexes.
- :mod:`grood.method.detector`: the :class:`GROOD` detector (Algorithms 1 and 2).
"""

from grood.method.detector import GROOD, NotFittedError
from grood.method.ncp import grood_gradient, ncp_logits, ncp_loss, ncp_probabilities
from grood.method.neighbours import build_index, kth_neighbour_distance
from grood.method.prototypes import ClassMeanAccumulator, class_prototypes, ood_prototype, proximity_filter

__all__ = [
    "GROOD", "NotFittedError", "grood_gradient", "ncp_logits", "ncp_loss", "ncp_probabilities", "build_index",
    "kth_neighbour_distance", "ClassMeanAccumulator", "class_prototypes", "ood_prototype", "proximity_filter",
]

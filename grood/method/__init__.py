"""GROOD's maths on tensors, one function per paper equation; no network, no files except the
detector's and index's own save/load. Imports nothing from the rest of grood except the leaf modules
:mod:`grood.device` and :mod:`grood.io`.

- :mod:`grood.method.prototypes`: eq. 7 (class prototypes), eq. 8 (OOD prototype), the section 5.2
  proximity filter, appendix A.2 mean of prototypes.
- :mod:`grood.method.ncp`: eq. 2 (NCP logits), eq. 3 (probabilities), eq. 4 (loss), eq. 5 (gradient)
  and the Table 4 ablation quantities.
- :mod:`grood.method.strategies`: eq. 9 and appendix A.2 / Table 1, the one registry of OOD-prototype
  strategies (mixup, uniform, val_ood, corrupted, mean, local / global oracle, proximity filter); the
  network passes they read are built by :func:`grood.prototype_inputs.prototype_inputs`.
- :mod:`grood.method.corruptions`: the image corruptions of the "corrupted" strategy (synthetic source).
- :mod:`grood.method.neighbours`: eq. 6 (nearest-neighbour distance); exact / IVF / torch indexes, one
  module each.
- :mod:`grood.method.kmeans`: the IVF index's cells (k-means in log-polar coordinates, balanced).
- :mod:`grood.method.faiss_loader`: ``import faiss`` with its bundled OpenBLAS on the CPU's fast kernels.
- :mod:`grood.method.detector`: the feature-level :class:`GROOD` detector (Algorithms 1 and 2), grood's only
  one; ``grood.GROOD`` (:mod:`grood.on_network`) runs it on a network.
- :mod:`grood.method.synthetic`: clustered synthetic features for tests and benchmarks.
"""

from grood.method.detector import GROOD, NotFittedError
from grood.method.ncp import (
    class_prototype_gradient,
    gradient_l1_norm,
    grood_gradient,
    ncp_log_probabilities,
    ncp_logits,
    ncp_loss,
    ncp_predict,
    ncp_probabilities,
    ood_log_probability,
    ood_prototype_distance,
)
from grood.method.neighbours import build_index, kth_neighbour_distance, load_index
from grood.method.prototypes import (
    ClassMeanAccumulator,
    class_prototypes,
    mean_of_class_prototypes,
    nearest_prototype_distance,
    ood_prototype,
    proximity_filter,
)
from grood.method.strategies import STRATEGIES, PrototypeInputs, build_ood_prototype

__all__ = [
    "GROOD",
    "NotFittedError",
    "STRATEGIES",
    "PrototypeInputs",
    "build_ood_prototype",
    "ClassMeanAccumulator",
    "build_index",
    "class_prototype_gradient",
    "class_prototypes",
    "gradient_l1_norm",
    "grood_gradient",
    "kth_neighbour_distance",
    "load_index",
    "mean_of_class_prototypes",
    "ncp_log_probabilities",
    "ncp_logits",
    "ncp_loss",
    "ncp_predict",
    "ncp_probabilities",
    "nearest_prototype_distance",
    "ood_log_probability",
    "ood_prototype",
    "ood_prototype_distance",
    "proximity_filter",
]

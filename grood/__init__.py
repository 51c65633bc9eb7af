"""GROOD: GRadient-aware Out-Of-Distribution detection.

Score convention everywhere in this package: **higher score = more in-distribution**
(OpenOOD's convention). The paper's eq. 6 defines an OOD score S(x) (higher = more OOD); the
detectors return ``-S(x)``.

``grood.GROOD(model, early_layer=..., feature_layer=..., head_layer=...)`` (from :mod:`grood.on_network`)
is GROOD on a network: ``.fit(train_loader)``, ``.score(images)``. ``grood.wrap(model, early_layer=...,
feature_layer=..., head_layer=...)`` (from :mod:`grood.backbones.wrap`) splits any classifier for GROOD.
Both are imported on first use, so that ``import grood`` stays light. The feature-level detector (tensors
only) is :class:`grood.method.GROOD`.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["GROOD", "__version__", "wrap"]


def __getattr__(name: str) -> Any:
    if name == "wrap":
        from grood.backbones.wrap import wrap

        return wrap
    if name == "GROOD":
        from grood.on_network import GROOD

        return GROOD
    raise AttributeError(f"module 'grood' has no attribute {name!r}")

"""GROOD: GRadient-aware Out-Of-Distribution detection.

Score convention everywhere in this package: **higher score = more in-distribution**
(OpenOOD's convention). The paper's eq. 6 defines an OOD score S(x) (higher = more OOD); the
detectors return ``-S(x)``.
"""

__version__ = "0.1.0"

"""Every OOD detector of the benchmark behind one interface (see :mod:`grood.detectors.base`)."""

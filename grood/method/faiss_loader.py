"""Import faiss so that its exact search runs at this CPU's speed.

The faiss-cpu wheels on PyPI (1.15.1 included) bundle OpenBLAS 0.3.15, whose CPU detection predates
recent x86 CPUs: on an Intel Sapphire Rapids it picks the generic ``Prescott`` (SSE3) kernels, and the
matrix product behind ``IndexFlatL2.search`` runs about 5x slower than it could (measured here, 2
cores: 50,000 x 512 database, 12,000 queries, k=1: 20.7 s with ``Prescott``, 4.2 s with ``SkylakeX``).
OpenBLAS reads the environment variable ``OPENBLAS_CORETYPE`` once, when the library is loaded, to
override its detection.

:func:`import_faiss` is the one place grood imports faiss. When faiss is not yet imported, the wheel
bundles OpenBLAS, ``OPENBLAS_CORETYPE`` is unset and the CPU reports AVX-512 (or AVX2 + FMA), it sets
``OPENBLAS_CORETYPE`` to ``SkylakeX`` (or ``Haswell``) for the import only and restores the environment
afterwards, so that other libraries (numpy's and scipy's own OpenBLAS) keep their detection. A user's
own ``OPENBLAS_CORETYPE`` is always respected. When faiss was imported before grood with the generic
kernels, it logs a warning saying how to fix it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: OpenBLAS core names that use no AVX2 kernels (slow on any CPU that has AVX2).
GENERIC_OPENBLAS_CORES = frozenset({"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai", "Northwood"})
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
AVX2_FLAGS = frozenset({"avx2", "fma"})

_warned_generic = False


def openblas_coretype_for(cpu_flags: frozenset[str] | set[str]) -> str | None:
    """The OpenBLAS core type whose kernels suit a CPU with these ``/proc/cpuinfo`` flags.

    ``"SkylakeX"`` when all of AVX-512 F/CD/BW/DQ/VL are present, ``"Haswell"`` for AVX2 + FMA, None
    otherwise (leave OpenBLAS's own detection alone).
    """
    if AVX512_FLAGS <= cpu_flags:
        return "SkylakeX"
    if AVX2_FLAGS <= cpu_flags:
        return "Haswell"
    return None


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor listed in ``cpuinfo`` (empty where there is none,
    e.g. on macOS or Windows)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def bundled_openblas() -> Path | None:
    """The OpenBLAS library shipped inside the installed faiss wheel (``faiss_cpu.libs/``), or None
    (faiss not installed, a conda build linked to MKL, another platform). Does not import faiss."""
    spec = importlib.util.find_spec("faiss")
    if spec is None or not spec.submodule_search_locations:
        return None
    site_packages = Path(next(iter(spec.submodule_search_locations))).parent
    for libs in sorted(site_packages.glob("faiss*.libs")):
        found = sorted(libs.glob("libopenblas*.so*"))
        if found:
            return found[0]
    return None


def openblas_core(library: str | os.PathLike[str]) -> str | None:
    """The core name the OpenBLAS ``library`` runs with (``openblas_get_corename``), or None when it
    cannot be read. Loading the library here returns the copy already in the process, if any."""
    try:
        get_corename = ctypes.CDLL(str(library)).openblas_get_corename
    except (OSError, AttributeError):
        return None
    get_corename.restype = ctypes.c_char_p
    name = get_corename()
    return None if name is None else name.decode()


def import_faiss() -> Any:
    """``import faiss``, with its bundled OpenBLAS on this CPU's fast kernels (see the module docstring).

    Raises ``ImportError`` naming the packages to install when faiss is missing.
    """
    if "faiss" in sys.modules:
        faiss = sys.modules["faiss"]
        _warn_if_generic_kernels()
        return faiss
    library = bundled_openblas()
    coretype = openblas_coretype_for(cpu_flags()) if library is not None else None
    override = coretype is not None and "OPENBLAS_CORETYPE" not in os.environ
    if override:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "this index kind needs faiss (pip install faiss-cpu, or faiss-gpu); use kind='torch' to search without it"
        ) from error
    finally:
        if override:
            del os.environ["OPENBLAS_CORETYPE"]
    if override:
        log.debug("faiss imported with OPENBLAS_CORETYPE=%s for its bundled %s", coretype, library.name)
    _warn_if_generic_kernels()
    return faiss


def _warn_if_generic_kernels() -> None:
    global _warned_generic
    if _warned_generic or "OPENBLAS_CORETYPE" in os.environ:
        return
    library = bundled_openblas()
    coretype = openblas_coretype_for(cpu_flags())
    if library is None or coretype is None:
        return
    core = openblas_core(library)
    if core in GENERIC_OPENBLAS_CORES:
        _warned_generic = True
        log.warning(
            "faiss's bundled OpenBLAS (%s) runs its generic %r kernels on this %s-capable CPU, so FAISS exact "
            "search is several times slower than it could be. faiss was imported before grood could set its "
            "kernels: set the environment variable OPENBLAS_CORETYPE=%s before starting Python (or import grood "
            "before faiss)",
            library.name, core, "AVX-512" if coretype == "SkylakeX" else "AVX2", coretype,
        )

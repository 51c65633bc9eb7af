"""faiss import with its bundled OpenBLAS on the CPU's fast kernels (grood.method.faiss_loader)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grood.method.faiss_loader import (
    GENERIC_OPENBLAS_CORES,
    bundled_openblas,
    cpu_flags,
    openblas_coretype_for,
)


def test_coretype_from_cpu_flags() -> None:
    avx512 = {"sse3", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert openblas_coretype_for(avx512) == "SkylakeX"
    assert openblas_coretype_for(avx512 - {"avx512bw"}) == "Haswell"  # Xeon Phi-like AVX-512 without BW
    assert openblas_coretype_for({"sse3", "avx", "avx2", "fma"}) == "Haswell"
    assert openblas_coretype_for({"sse3", "avx", "avx2"}) is None
    assert openblas_coretype_for(set()) is None


def test_cpu_flags_reads_the_first_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse3 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse3", "avx2", "fma"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _import_in_fresh_process(env: dict[str, str]) -> dict:
    code = (
        "import json, os, logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from grood.method.faiss_loader import import_faiss, openblas_core, bundled_openblas\n"
        "faiss = import_faiss()\n"
        "print(json.dumps({'core': openblas_core(bundled_openblas()), 'env': os.environ.get('OPENBLAS_CORETYPE'),"
        " 'flat': faiss.IndexFlatL2(4).d}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _requires_bundled_openblas_and_fast_cpu() -> str:
    if bundled_openblas() is None:
        pytest.skip("the installed faiss does not bundle OpenBLAS (e.g. conda's MKL build): nothing to set")
    coretype = openblas_coretype_for(cpu_flags())
    if coretype is None:
        pytest.skip("this CPU has no AVX2: OpenBLAS's own detection is kept")
    return coretype


def test_import_faiss_uses_the_cpus_kernels_and_restores_the_environment() -> None:
    coretype = _requires_bundled_openblas_and_fast_cpu()
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    result = _import_in_fresh_process(env)
    assert result["core"] == coretype
    assert result["core"] not in GENERIC_OPENBLAS_CORES
    assert result["env"] is None  # the override was for faiss's import only
    assert result["flat"] == 4


def test_import_faiss_respects_the_users_coretype() -> None:
    _requires_bundled_openblas_and_fast_cpu()
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    result = _import_in_fresh_process(env)
    assert result["core"] == "Haswell"
    assert result["env"] == "Haswell"


def test_faiss_imported_first_with_generic_kernels_warns() -> None:
    coretype = _requires_bundled_openblas_and_fast_cpu()
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    code = (
        "import os, ctypes, logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "os.environ['OPENBLAS_CORETYPE'] = 'Prescott'\n"
        "import faiss\n"
        "del os.environ['OPENBLAS_CORETYPE']\n"
        "from grood.method.faiss_loader import import_faiss\n"
        "import_faiss()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "generic 'Prescott' kernels" in done.stderr
    assert f"OPENBLAS_CORETYPE={coretype}" in done.stderr

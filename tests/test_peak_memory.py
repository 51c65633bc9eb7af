"""A benchmark child's peak RSS is its own, not its parent's (Linux carries ru_maxrss over fork and exec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's /proc")
def test_a_child_started_by_a_large_parent_reports_its_own_peak() -> None:
    parent = (
        "import subprocess, sys\n"
        "held = bytearray(600 * 2**20)\n"
        "for i in range(0, len(held), 4096): held[i] = 1\n"
        "del held\n"
        "code = 'import resource; from grood.peak_memory import peak_rss_mb; "
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)'\n"
        "print(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True, check=True)
    own, inherited = map(float, out.stdout.split())
    assert inherited >= 600  # what ru_maxrss says: the parent's peak
    assert own < 200  # the child's own: an interpreter and grood.peak_memory

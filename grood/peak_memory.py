"""This process's own peak resident set size, for the benchmarks that print one per method.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is not it in a subprocess: Linux carries the parent's high-water
mark over the fork and the exec, so a child started by a parent that once held 11 GB reports at least 11 GB
(the true-size benchmark's parent writes the features through memory maps). ``VmHWM`` of
``/proc/self/status`` is the high-water mark of the process's own memory, reset by the exec.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` where ``/proc`` exists (Linux); elsewhere ``ru_maxrss``,
    which there may include a parent's peak (macOS reports bytes, other systems KiB)."""
    if STATUS.exists():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0

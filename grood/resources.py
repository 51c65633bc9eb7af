"""CPU resources: data-loader workers and torch threads, within the CPUs this process may use.

The rule (one place for it):

- **CPUs available** = the CPUs this process may run on: ``len(os.sched_getaffinity(0))`` where the OS
  has it (it honours ``taskset`` and container cpusets), else ``os.cpu_count()``.
- **Loader workers** never exceed the CPUs available: :func:`loader_workers` clamps ``num_workers`` and
  logs a notice once per clamped value, so ``num_workers: 4`` on a 2-core machine runs warning-free
  with 2 workers. (PyTorch's DataLoader warns when asked for more workers than CPUs.)
- **Torch threads** (:func:`configure_threads`, called once by each script): ``OMP_NUM_THREADS`` when it is
  set (the standard knob, also read by FAISS's OpenMP and the BLAS libraries), else the CPUs available.
  Inter-op threads: 1 (grood runs no graph of parallel ops). To run two grood processes on one machine
  without thrashing, give each its share: ``OMP_NUM_THREADS=1`` for each on a 2-core machine, or pin
  them to disjoint CPUs (``taskset -c 0 ...`` and ``taskset -c 1 ...``); both are honoured, loader
  workers included.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["available_cpus", "configure_threads", "loader_workers"]

log = logging.getLogger(__name__)

_noticed: set[tuple[int, int]] = set()


def available_cpus() -> int:
    """The number of CPUs this process may run on (affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def loader_workers(requested: int) -> int:
    """``requested`` DataLoader workers, clamped to :func:`available_cpus` (a logged notice when clamped).

    Raises:
        ValueError: ``requested`` is not an integer >= 0.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"num_workers must be an integer >= 0; got {requested!r}")
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _noticed:
        _noticed.add((requested, cpus))
        log.info("num_workers=%d but this process may use %d CPUs: using %d loader workers", requested, cpus, cpus)
    return cpus


def configure_threads() -> int:
    """Set torch's intra-op threads by the module's rule; returns the number of threads set.

    ``OMP_NUM_THREADS`` (a positive integer) wins; else the CPUs available. Inter-op threads are set to 1
    when torch still allows it (only before its first parallel work).

    Raises:
        ValueError: ``OMP_NUM_THREADS`` is set but is not a positive integer.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"OMP_NUM_THREADS={value!r} is not a positive integer; unset it or give e.g. 1")
        threads = int(value)
    else:
        threads = available_cpus()
    torch.set_num_threads(threads)
    try:
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op threads can only be set before torch's first parallel work
        pass
    log.debug("torch threads: %d intra-op (%s)", threads, "OMP_NUM_THREADS" if value else "CPUs available")
    return threads

"""What each method of a run spent, apart from the network's forward passes that every method shares.

A run (:class:`grood.pipeline.BenchmarkRun`) computes each split's outputs once, lazily, during whichever
method first needs them; that pass is recorded once, as ``forward:<split>`` (and added to the run's
``forward_seconds``). A method's own time is measured around its work *less* the shared passes it triggered:
``method:<name>`` (fit + scoring on cached outputs), ``aps:<name>`` (its parameter search),
``prototype:grood`` (GROOD's OOD prototype: the mixup pass over mixed images, or a cache read).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

FORWARD_PREFIX = "forward:"


def start_clock(run: Any) -> tuple[float, float]:
    """The moment a method's work starts: ``(perf_counter, run.forward_seconds)``."""
    return time.perf_counter(), float(run.forward_seconds)


def own_seconds(run: Any, started: tuple[float, float]) -> float:
    """Seconds since ``started`` (:func:`start_clock`) less the shared forward passes run in between."""
    wall, forward = started
    return time.perf_counter() - wall - (float(run.forward_seconds) - forward)


def method_timings(timings: Mapping[str, float], method: str) -> dict[str, float]:
    """The entries of ``timings`` that are ``method``'s own (``<what>:<method>``), rounded to ms."""
    return {key: round(value, 3) for key, value in timings.items()
            if not key.startswith(FORWARD_PREFIX) and key.rpartition(":")[2] == method}


def forward_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """split -> seconds of the network's shared forward pass (or cache read) over it, rounded to ms."""
    return {key[len(FORWARD_PREFIX):]: round(value, 3) for key, value in timings.items()
            if key.startswith(FORWARD_PREFIX)}


def timings_record(run: Any, method: str) -> dict[str, Any]:
    """``run.json``'s timings of ``method``: ``timings_s``, what it spent on its own, and, in a one-method run,
    ``forward_passes_s`` (:func:`forward_timings`; ``method=all`` records them once, in ``summary.json``)."""
    own = {"timings_s": method_timings(run.timings, method)}
    return own if run.config.method.name == "all" else {**own, "forward_passes_s": forward_timings(run.timings)}

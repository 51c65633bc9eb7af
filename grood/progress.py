"""Progress of long phases: a tqdm bar, or (``progress=False``) one log line at the start and one at the end.

Every long phase of grood (feature extraction per split, the mixup prototype pass, APS, ODIN's
perturbation pass, index fit and search) goes through this module, so that a run with ``progress=false``
(``make smoke``, the reproduce targets, batch jobs) is never silent for minutes and its log says how long
each phase took:

    INFO grood.progress: cifar10_smoke/train: started, 20 batches (5,000 images)
    INFO grood.progress: cifar10_smoke/train: done, 20 batches (5,000 images) in 9.8 s

- :func:`track` wraps an iterable (a DataLoader, a range of batch starts, a list of APS combinations).
- :func:`phase` is a context manager for a step that is not a loop (an index's fit, one search).

Counts come from the iterable itself: ``len(iterable)`` batches, and ``len(iterable.dataset)`` images for
a DataLoader. A phase that stops early (an exception, a ``break``) logs how far it got.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["phase", "track"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _sized(obj: object) -> int | None:
    try:
        return len(obj)  # type: ignore[arg-type]
    except TypeError:
        return None


def _counted(count: int, unit: str) -> str:
    """``"1 batch"``, ``"3 batches"``: plural units lose their plural ending for a count of one."""
    if count == 1 and unit.endswith("es") and unit[:-2].endswith(("ch", "sh", "s", "x")):
        unit = unit[:-2]
    elif count == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"{count:,} {unit}"


def _counts(total: int | None, unit: str, items: int | None, item_unit: str) -> str:
    text = _counted(total, unit) if total is not None else f"? {unit}"
    return f"{text} ({_counted(items, item_unit)})" if items is not None else text


def track(
    iterable: Iterable[T],
    desc: str,
    progress: bool,
    *,
    unit: str = "batches",
    items: int | None = None,
    item_unit: str = "images",
) -> Iterator[T]:
    """Iterate over ``iterable``: with a tqdm bar when ``progress``, else logging its start and end.

    Args:
        iterable: what to iterate over; its ``len`` (if any) is the count of ``unit``.
        desc: the phase's name, e.g. ``"cifar10/test"`` or ``"APS knn"``.
        progress: True shows a tqdm bar (no log lines); False logs one INFO line at the start and one at
            the end (count and seconds) on the ``grood.progress`` logger.
        unit: what one element is ("batches", "combinations").
        items: how many ``item_unit`` the phase covers; default ``len(iterable.dataset)`` for a DataLoader.
    """
    if progress:
        yield from tqdm(iterable, desc=desc, leave=False)
        return
    total = _sized(iterable)
    if items is None and hasattr(iterable, "dataset"):
        items = _sized(iterable.dataset)  # type: ignore[attr-defined]
    counts = _counts(total, unit, items, item_unit)
    log.info("%s: started, %s", desc, counts)
    started, done, finished = time.perf_counter(), 0, False
    try:
        for element in iterable:
            done += 1  # handed out: a consumer that breaks after it has had `done` elements
            yield element
        finished = True
    finally:
        seconds = time.perf_counter() - started
        if finished:
            log.info("%s: done, %s in %.1f s", desc, _counts(done, unit, items, item_unit), seconds)
        else:
            log.info("%s: stopped after %s of %s in %.1f s", desc, f"{done:,}", counts, seconds)


@contextmanager
def phase(desc: str, count: int | None = None, unit: str = "vectors") -> Iterator[None]:
    """Log one INFO line when the ``with`` block starts and one when it ends (with its seconds).

    For steps that are not loops over batches (an index's training, a k-means), which have no bar either
    way, so they log whatever ``progress`` says. ``count`` (of ``unit``) is printed on both lines.
    """
    counts = f", {count:,} {unit}" if count is not None else ""
    log.info("%s: started%s", desc, counts)
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        log.info("%s: failed after %.1f s", desc, time.perf_counter() - started)
        raise
    log.info("%s: done%s in %.1f s", desc, counts, time.perf_counter() - started)

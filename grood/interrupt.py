"""Ctrl-C ends a run with one line and a non-zero exit status, not a traceback.

Nothing is left half-written: every result file goes through :func:`grood.io.atomic_write` (and the feature
cache through its own atomic writes), so an interrupted run leaves the files it finished and no others; the
results folder's lock (:mod:`grood.run_lock`) is released on the way out.
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

#: The exit status of a command stopped by SIGINT (128 + 2), as shells report it.
INTERRUPTED_EXIT_STATUS = 130


def exit_interrupted(output_dir: str | os.PathLike, log: logging.Logger) -> NoReturn:
    """Log one line saying the run was interrupted and what its folder holds, then exit with status 130.

    Call it from ``except KeyboardInterrupt:`` around the run (``grood run``)."""
    log.error("interrupted (Ctrl-C): the run stopped; %s holds only complete files (each file is written whole or "
              "not at all), without the methods that had not finished: run the same command again to finish it",
              output_dir)
    raise SystemExit(INTERRUPTED_EXIT_STATUS)

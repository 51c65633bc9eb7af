"""Running a ``@hydra.main`` app as a ``grood`` subcommand (Hydra reads its overrides from ``sys.argv``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_hydra_app(app: Callable[[], Any], prog: str, argv: Sequence[str]) -> int:
    """Call the Hydra app ``app`` with the command line ``argv`` (``prog`` names it in Hydra's help), as if
    it were the script's own; 0 when it returns (its errors exit with their own status)."""
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0

"""Running a ``@hydra.main`` app as a ``grood`` subcommand (Hydra reads its overrides from ``sys.argv``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def checked_hydra_app(app: Callable[[], Any], check: Callable[[list[str]], Any], prog: str,
                      argv: Sequence[str] | None) -> int:
    """``prog <overrides>``: ``check`` the command line (a :class:`~grood.config.ConfigError` is printed,
    exit status 2), then run the Hydra app ``app`` on it (:func:`run_hydra_app`)."""
    from grood.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check(argv)
    except ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    return run_hydra_app(app, prog, argv)


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

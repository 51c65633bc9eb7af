#!/usr/bin/env python
"""`grood leaderboard` from a checkout, installed or not:
`python scripts/leaderboard.py ARGS` = `grood leaderboard ARGS`.

The command lives in the package (grood.cli.leaderboard); see `grood leaderboard --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.leaderboard import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""`grood run` from a checkout, installed or not:
`python scripts/run.py ARGS` = `grood run ARGS`.

The command lives in the package (grood.cli.run); see `grood run --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.run import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli(prog="scripts/run.py"))

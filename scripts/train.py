#!/usr/bin/env python
"""`grood train` from a checkout, installed or not:
`python scripts/train.py ARGS` = `grood train ARGS`.

The command lives in the package (grood.cli.train); see `grood train --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.train import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli(prog="scripts/train.py"))

#!/usr/bin/env python
"""`grood reproduce` from a checkout, installed or not:
`python scripts/reproduce.py ARGS` = `grood reproduce ARGS`.

The command lives in the package (grood.cli.reproduce); see `grood reproduce --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

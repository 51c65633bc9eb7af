#!/usr/bin/env python
"""`grood download` from a checkout, installed or not:
`python scripts/download.py ARGS` = `grood download ARGS`.

The command lives in the package (grood.cli.download); see `grood download --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.download import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

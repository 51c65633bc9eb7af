#!/usr/bin/env python
"""`grood bench-true-size` from a checkout, installed or not:
`python scripts/bench_true_size.py ARGS` = `grood bench-true-size ARGS`.

The command lives in the package (grood.cli.bench_true_size); see `grood bench-true-size --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.bench_true_size import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""`grood bench-eval` from a checkout, installed or not:
`python scripts/bench_eval.py ARGS` = `grood bench-eval ARGS`.

The command lives in the package (grood.cli.bench_eval); see `grood bench-eval --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.bench_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

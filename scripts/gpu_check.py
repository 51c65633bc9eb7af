#!/usr/bin/env python
"""`grood gpu-check` from a checkout, installed or not:
`python scripts/gpu_check.py ARGS` = `grood gpu-check ARGS`.

The command lives in the package (grood.cli.gpu_check); see `grood gpu-check --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's grood, installed or not

from grood.cli.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

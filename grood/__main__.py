"""``python -m grood <command> ...``: the same as the ``grood`` console command (grood/cli)."""

import sys

from grood.cli import main

if __name__ == "__main__":
    sys.exit(main())

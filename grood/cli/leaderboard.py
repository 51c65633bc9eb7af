#!/usr/bin/env python
"""Print a results folder in the format of OpenOOD's leaderboard submissions (``make leaderboard RUN=...``).

    grood leaderboard results/runs/default/cifar10/grood/seed0-1a2b3c4d
    grood leaderboard results/smoke/smoke/cifar10_smoke/all/seed0-... --training CrossEntropy

One markdown row per method (Training, Postprocessor, Near-OOD AUROC, Far-OOD AUROC, ID Accuracy, Outlier
Data, Model Arch., Additional Description); see grood/reporting/leaderboard.py. Exit status: 0 printed,
1 a folder or file that cannot be read (the message names it).
"""

from __future__ import annotations

import argparse
import sys

from grood.reporting.leaderboard import format_leaderboard, leaderboard_rows  # noqa: E402
from grood.reporting.runs import RunFormatError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="a results folder (run.json), or a method=all folder (summary.json)")
    parser.add_argument("--training", default="CrossEntropy",
                        help="the checkpoint's training method (not recorded in results folders; OpenOOD's v1.5 "
                             "checkpoints: CrossEntropy)")
    args = parser.parse_args(argv)
    try:
        print(format_leaderboard(leaderboard_rows(args.results_dir, training=args.training)))
    except RunFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

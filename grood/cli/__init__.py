"""The command line: ``grood <command> [arguments]`` (also ``python -m grood``), one module per command.

Only the chosen command's module is imported, so ``grood --help`` and a mistyped configuration key answer
without loading torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: command -> ("module:function" taking the command's arguments and returning the exit status, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("grood.cli.run:cli",
            "evaluate OOD detectors on a benchmark (Hydra overrides: dataset=cifar10 method=grood; -m for sweeps)"),
    "reproduce": ("grood.cli.reproduce:main", "a paper table or figure: run the jobs it needs, write its tables"),
    "download": ("grood.cli.download:main", "OpenOOD v1.5 benchmark data and checkpoints (data, checkpoints, "
                                            "plan, verify)"),
    "train": ("grood.cli.train:cli", "train a backbone with the paper's recipe (Hydra overrides: dataset=cifar100)"),
    "leaderboard": ("grood.cli.leaderboard:main", "a results folder as OpenOOD leaderboard entries"),
    "bench-method": ("grood.cli.bench_method:main", "speed and memory of the GROOD method on synthetic features"),
    "bench-true-size": ("grood.cli.bench_true_size:main", "GROOD and KNN at ImageNet-1k's true size, out of core: "
                                                           "time, peak RSS, recall"),
    "bench-eval": ("grood.cli.bench_eval:main", "time evaluations on the smoke benchmark (or against OpenOOD)"),
    "gpu-check": ("grood.cli.gpu_check:main", "everything that needs CUDA, in one command, with a summary"),
}


def usage() -> str:
    """The text of ``grood --help``."""
    width = max(map(len, COMMANDS))
    lines = ["usage: grood <command> [arguments]   (also: python -m grood <command> ...)", "",
             "GROOD: gradient-aware out-of-distribution detection. Commands:", ""]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "grood <command> --help: the command's own arguments (run and train: Hydra's --help, --cfg job)."]
    return "\n".join(lines)


def command(name: str):
    """The function of command ``name`` (its module is imported now)."""
    module_name, _, function = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module_name), function)


def main(argv: Sequence[str] | None = None) -> int:
    """``grood <command> [arguments]``: the command's exit status (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from grood import __version__

        print(f"grood {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"grood: unknown command {name!r}; valid: {', '.join(COMMANDS)} (grood --help)", file=sys.stderr)
        return 2
    if name in ("run", "train"):
        return command(name)(rest, prog=f"grood {name}")
    saved, sys.argv = sys.argv, [f"grood {name}", *rest]  # argparse names the command in its messages
    try:
        return command(name)(rest)
    finally:
        sys.argv = saved

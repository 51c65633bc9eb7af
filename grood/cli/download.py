#!/usr/bin/env python
"""Download OpenOOD v1.5 benchmark data and checkpoints (needs the internet; see grood/data/download.py).

    grood download data --benchmark cifar10 --data-root ./data          # `make data`
    grood download checkpoints --benchmark cifar10 --dest ./checkpoints  # `make checkpoints`
    grood download plan --benchmark imagenet200 --data-root ./data --dest ./checkpoints
    grood download verify --data-root ./data --dest ./checkpoints       # installed files vs manifest

What is installed (recorded in the manifest, its files present) is skipped; interrupted downloads resume;
archives placed by hand at the printed path are used without network. Offline, it stops at once and lists
every file needed and where to put it. ``--data-root`` / ``--dest`` default to ``$GROOD_DATA_ROOT`` /
``$GROOD_CHECKPOINT_ROOT`` (else ``./data`` / ``./checkpoints``), as the configs.
Exit status: 0 done (verify: every file matches), 1 download/checksum failure (verify: files missing or
modified), 2 offline, 3 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from grood.data.download import (  # noqa: E402
    DOWNLOADABLE,
    MANIFEST,
    DownloadError,
    OfflineError,
    Resource,
    checkpoint_resources,
    data_resources,
    install,
    manual_notes,
    verify,
)

DATA_ROOT = os.environ.get("GROOD_DATA_ROOT") or "./data"
CHECKPOINT_ROOT = os.environ.get("GROOD_CHECKPOINT_ROOT") or "./checkpoints"


def _benchmarks(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for one in (DOWNLOADABLE if name == "all" else [name]):
            if one not in DOWNLOADABLE:
                raise ValueError(f"unknown benchmark {one!r}; valid: {list(DOWNLOADABLE)} or 'all'")
            if one not in out:
                out.append(one)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--benchmark", nargs="+", default=["cifar10"],
                        help=f"one or more of {list(DOWNLOADABLE)}, or 'all' (default: cifar10)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds for the connectivity probe (default 5)")
    common.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")

    data = sub.add_parser("data", parents=[common], help="image lists and images into an OpenOOD data root")
    data.add_argument("--data-root", default=DATA_ROOT, help=f"OpenOOD v1.5 data root (default {DATA_ROOT})")
    data.add_argument("--torchvision-cifar", action="store_true",
                      help="also fetch torchvision's CIFAR archive into the data root (for training scripts)")
    data.add_argument("--csid", action="store_true",
                      help="also fetch the covariate-shifted ID sets (CIFAR-10-C / -100-C, ImageNet-V2/-C/-R/-ES)")

    ckpt = sub.add_parser("checkpoints", parents=[common], help="OpenOOD v1.5 checkpoints / torchvision weights")
    ckpt.add_argument("--dest", default=CHECKPOINT_ROOT, help=f"checkpoint root (default {CHECKPOINT_ROOT})")
    ckpt.add_argument("--torch-hub-dir", default=None,
                      help="where torchvision weights go (default: torch.hub.get_dir(), where torchvision looks)")

    plan = sub.add_parser("plan", parents=[common], help="print what would be fetched and where; fetch nothing")
    plan.add_argument("--data-root", default=DATA_ROOT)
    plan.add_argument("--dest", default=CHECKPOINT_ROOT)
    plan.add_argument("--torch-hub-dir", default=None)
    plan.add_argument("--torchvision-cifar", action="store_true")
    plan.add_argument("--csid", action="store_true")

    check = sub.add_parser("verify", help="check installed files against the download manifests (size, sha256)")
    check.add_argument("--data-root", default=None, help="verify <data-root>/.downloads/manifest.json")
    check.add_argument("--dest", default=None, help="verify <dest>/.downloads/manifest.json (checkpoints)")
    check.add_argument("--torch-hub-dir", default=None, help="verify <torch-hub-dir>/checkpoints/manifest.json")
    return parser


def manifests_for(args: argparse.Namespace) -> list[Path]:
    """The manifests ``verify`` reads: those of the folders given, else of the default data and checkpoint roots."""
    paths = []
    if args.data_root is not None:
        paths.append(Path(args.data_root) / ".downloads" / MANIFEST)
    if args.dest is not None:
        paths.append(Path(args.dest) / ".downloads" / MANIFEST)
    if args.torch_hub_dir is not None:
        paths.append(Path(args.torch_hub_dir) / "checkpoints" / MANIFEST)
    if paths:
        return paths
    defaults = [Path(DATA_ROOT) / ".downloads" / MANIFEST, Path(CHECKPOINT_ROOT) / ".downloads" / MANIFEST]
    return [p for p in defaults if p.is_file()] or defaults[:1]


def run_verify(args: argparse.Namespace) -> int:
    total, problems = 0, []
    try:
        for manifest in manifests_for(args):
            checked, found = verify(manifest, log=print)
            total += checked
            problems += found
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        missing = sum(p.problem == "missing" for p in problems)
        print(f"error: {len(problems)} of {total} files differ from the manifest ({missing} missing, "
              f"{len(problems) - missing} modified); rerun the download to restore missing files, or delete "
              "the modified ones first to get the archive's version", file=sys.stderr)
        return 1
    print(f"verified: all {total} files match the manifest (size and sha256)")
    return 0


def resources_for(args: argparse.Namespace) -> list[Resource]:
    resources: list[Resource] = []
    for benchmark in _benchmarks(args.benchmark):
        if args.command in ("data", "plan"):
            resources += data_resources(benchmark, args.data_root, torchvision_cifar=args.torchvision_cifar,
                                        csid=args.csid)
        if args.command in ("checkpoints", "plan"):
            resources += checkpoint_resources(benchmark, args.dest, args.torch_hub_dir)
    unique: dict[Path, Resource] = {}
    for resource in resources:  # e.g. 'texture' is shared by imagenet and imagenet200
        if resource.archive in unique:  # one archive for several benchmarks: it must provide all their files
            first = unique[resource.archive]
            markers = tuple(dict.fromkeys(first.markers + resource.markers))
            unique[resource.archive] = dataclasses.replace(first, markers=markers)
        else:
            unique[resource.archive] = resource
    return list(unique.values())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        return run_verify(args)
    try:
        resources = resources_for(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if args.command == "plan":
        for r in resources:
            state = "present" if r.present() else "missing"
            print(f"{state:8s} {r.name}: {r.page or r.url}\n         -> {r.archive}"
                  + (f" -> extracted into {r.install_dir}" if r.install_dir else ""))
        return 0
    try:
        install(resources, check_timeout=args.timeout, keep_archives=args.keep_archives,
                progress=not args.no_progress)
    except OfflineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.command == "data":
        for benchmark in _benchmarks(args.benchmark):
            for note in manual_notes(benchmark, args.data_root):
                print(f"WARNING (manual step): {note}", file=sys.stderr)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

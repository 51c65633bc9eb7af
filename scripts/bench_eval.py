#!/usr/bin/env python
"""Time the one forward pass against every method on its cache (issue target: all methods <= 1.5x).

    python scripts/bench_eval.py [--data-root ...] [--checkpoint ...] [--cache-dir DIR]

On the shared CIFAR-10 smoke benchmark with the ResNet-20: the forward pass over every split (train,
test and each OOD set) runs on an empty cache, then each method runs on the cached outputs. GROOD's
time includes its mixup prototype (a second pass through part of the network over the training
images); ODIN re-runs the network with input perturbation and is reported apart. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grood.detectors import DETECTORS  # noqa: E402
from grood.pipeline import prepare_run, score_baseline, score_grood  # noqa: E402


def main() -> None:
    shared = Path(os.environ.get("GROOD_SHARED_DIR", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(shared / "data" / "openood_cifar10_smoke"))
    parser.add_argument("--checkpoint", default=str(shared / "checkpoints" / "cifar10_resnet20_akamaster.th"))
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="grood-bench-")
    config = {
        "seed": 0, "device": "auto", "batch_size": args.batch_size, "num_workers": 0, "progress": False,
        "check_files": True, "paths": {"cache_dir": cache_dir, "data_root": args.data_root},
        "dataset": {"name": "cifar10_smoke", "benchmark": "cifar10_smoke", "data_root": args.data_root,
                    "checkpoint": args.checkpoint, "transform": {}},
        "backbone": {"name": "resnet20", "split_block": None, "weights": None},
        "prototype": {"strategy": "mixup", "mixup_lambda": 0.5},
        "index": {"kind": "exact", "params": {}},
        "method": {"name": "all", "params": {}},
    }
    run = prepare_run(config)
    started = time.perf_counter()
    run.split_outputs("train", accumulate_early=True)
    for split in ["test", *run.benchmark.near, *run.benchmark.far, *(["val"] if run.benchmark.has_split("val") else [])]:
        run.split_outputs(split)
    forward = time.perf_counter() - started

    rows = []
    for name in ["grood", *[n for n in DETECTORS if n != "grood"]]:
        params = {"dim": 32} if name == "vim" else {}  # ResNet-20 features have D = 64
        started = time.perf_counter()
        score_grood(run, params) if name == "grood" else score_baseline(run, name, params)
        rows.append((name, time.perf_counter() - started))

    on_cache = sum(seconds for name, seconds in rows if name != "odin")
    print(f"\nsmoke benchmark ({sum(len(o.features) for k, o in run.outputs.items() if '+' not in k)} images "
          f"over {len([k for k in run.outputs if '+' not in k])} splits), cache {cache_dir}")
    print(f"{'method':<10}{'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<10}{seconds:>10.2f}")
    print(f"\none forward pass over every split:       {forward:8.2f} s")
    print(f"all methods on the cache (ODIN excluded): {on_cache:8.2f} s")
    print(f"ratio (target <= 1.5):                    {on_cache / forward:8.2f}")
    print(f"ODIN (re-runs the network):               {dict(rows)['odin']:8.2f} s")


if __name__ == "__main__":
    main()

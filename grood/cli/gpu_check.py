#!/usr/bin/env python
"""One GPU check (``make gpu-check``): everything that needs CUDA, in one command, with a summary.

    grood gpu-check [--out results/gpu_check] [--cpu-results DIR] [--tolerance 0.05]

On a machine without CUDA it stops at once (exit status 2) and says so. On a CUDA machine it runs, each
step with its own time limit (about 8 minutes in all on one GPU and a few CPU cores):

1. ``tests``: the CUDA-marked tests, ``pytest -m cuda`` (``@pytest.mark.cuda``; they skip without CUDA).
2. ``smoke``: ``grood run experiment=smoke device=cuda`` (every method, as ``make smoke``) and the same
   on the CPU (or the CPU results in ``--cpu-results``, e.g. ``results/smoke/smoke`` from ``make smoke``),
   each with its own feature cache; every AUROC of every method's ``metrics.csv`` (each OOD set, nearood,
   farood; in percent, as the tables print them) must match the CPU run's within ``--tolerance`` points.
3. ``train``: the training smoke (``grood train dataset=cifar10_smoke``) on CUDA with mixed precision
   (``train.amp=true``): two epochs finish, losses are finite, ``train_config.json`` says cuda + amp.
4. ``faiss_gpu``: with faiss-gpu installed (``faiss.StandardGpuResources``, ``faiss.get_num_gpus() > 0``),
   GROOD's exact index on CUDA against the CPU; with faiss-cpu it is reported as skipped.

Writes ``<out>/summary.json`` and ``<out>/summary.md`` (one row per step: passed / failed / skipped, seconds,
details) and prints the table. Exit status 0 when no step failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The checkout holding this package: its tests/ hold the CUDA tests.
REPO = Path(__file__).resolve().parents[2]

#: AUROC points (percent) by which a CUDA smoke run may differ from the CPU run.
DEFAULT_TOLERANCE = 0.05
#: Seconds each step may take (the whole check stays under 10 minutes).
STEP_LIMITS = {"tests": 150, "smoke_cuda": 120, "smoke_cpu": 180, "train": 90, "faiss_gpu": 60}


@dataclass
class Step:
    """One line of the summary."""

    name: str
    status: str  # "passed", "failed" or "skipped"
    seconds: float
    details: str
    data: dict[str, Any] = field(default_factory=dict)


def no_cuda_message(torch_module: Any) -> str | None:
    """None when CUDA is usable; else why not, and what to do."""
    if torch_module.cuda.is_available():
        return None
    built = torch_module.version.cuda
    why = (f"this torch ({torch_module.__version__}) was built without CUDA" if built is None
           else f"this torch ({torch_module.__version__}, CUDA {built}) sees no CUDA device")
    return (f"gpu-check needs a CUDA device: {why} (torch.cuda.is_available() is False). "
            "Run `make gpu-check` on a machine with an NVIDIA GPU and its driver; nothing was run.")


def run_command(command: Sequence[str], limit: float, log_path: Path, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> tuple[int, float, str]:
    """Run ``command`` (in ``cwd``, default the working directory), output to ``log_path``; ``(exit status,
    seconds, last lines)``.

    Exit status 124 when it ran past ``limit`` seconds (it is killed)."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            completed = subprocess.run(list(command), cwd=cwd, env={**os.environ, **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, timeout=limit, check=False)
            code = completed.returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    return code, time.perf_counter() - started, "\n".join(tail)


def pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": 5, "skipped": 1, ...}`` from pytest's closing line (empty when there is none)."""
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)]
    if not lines:
        return {}
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def compare_smoke(cpu_dir: Path, cuda_dir: Path, tolerance: float) -> tuple[bool, str, dict[str, Any]]:
    """Every method's AUROC column (``<dir>/cifar10_smoke/all/seed0/<method>/metrics.csv``), CPU vs CUDA.

    Returns ``(within tolerance everywhere, one-line details, {method: max |difference|})``; a method
    missing on either side, or a row missing, counts as a failure and is named."""
    import pandas as pd

    def tables(root: Path) -> dict[str, Any]:
        base = root / "cifar10_smoke" / "all" / "seed0"
        if not base.is_dir():
            raise FileNotFoundError(f"no smoke results under {base} (expected one folder per method there)")
        return {p.parent.name: pd.read_csv(p, index_col="dataset") for p in sorted(base.glob("*/metrics.csv"))}

    cpu, cuda = tables(cpu_dir), tables(cuda_dir)
    problems, differences = [], {}
    for method in sorted(set(cpu) | set(cuda)):
        if method not in cpu or method not in cuda:
            problems.append(f"{method} only on {'the CPU' if method in cpu else 'CUDA'}")
            continue
        a, b = cpu[method]["AUROC"], cuda[method]["AUROC"]
        if list(a.index) != list(b.index):
            problems.append(f"{method}: rows {list(a.index)} on the CPU, {list(b.index)} on CUDA")
            continue
        difference = float((a - b).abs().max())
        differences[method] = round(difference, 4)
        if not math.isfinite(difference) or difference > tolerance:
            problems.append(f"{method} differs by {difference:.3f}")
    if not differences and not problems:
        problems.append("no metrics.csv found")
    worst = max(differences.items(), key=lambda item: item[1]) if differences else ("-", float("nan"))
    if problems:
        return False, f"AUROC beyond {tolerance}: {'; '.join(problems)}", differences
    return True, (f"{len(differences)} methods, every AUROC within {tolerance} of the CPU run "
                  f"(largest: {worst[0]} {worst[1]:.3f})"), differences


def check_training(output_dir: Path) -> tuple[bool, str]:
    """The AMP training smoke's outputs: cuda + amp in its config, finite losses, its checkpoints."""
    config_path, history_path = output_dir / "train_config.json", output_dir / "history.json"
    for path in (config_path, history_path, output_dir / "last.ckpt"):
        if not path.exists():
            return False, f"{path} was not written"
    config = json.loads(config_path.read_text())
    history = json.loads(history_path.read_text())
    history = history["history"] if isinstance(history, dict) else history  # {"history": [one row per epoch]}
    losses = [row.get("train_loss") for row in history]
    if config.get("device") != "cuda" or config.get("amp") is not True:
        return False, f"train_config.json says device={config.get('device')!r}, amp={config.get('amp')!r}"
    if len(history) != int(config.get("epochs", len(history))) or not all(
            isinstance(loss, (int, float)) and math.isfinite(loss) for loss in losses):
        return False, f"history.json: {len(history)} epochs, losses {losses}"
    return True, f"{len(history)} epochs on cuda with AMP, losses {', '.join(f'{loss:.3f}' for loss in losses)}"


def check_faiss_gpu() -> Step:
    """GROOD's exact (FAISS) index on CUDA against the CPU, when faiss has GPU support."""
    import torch

    from grood.method import GROOD
    from grood.method.faiss_loader import import_faiss

    started = time.perf_counter()
    faiss = import_faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not hasattr(faiss, "StandardGpuResources") or gpus < 1:
        return Step("faiss_gpu", "skipped", time.perf_counter() - started,
                    f"faiss {getattr(faiss, '__version__', '?')} has no GPU support (faiss-cpu); install "
                    "faiss-gpu (environment.yml) to check it")
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(20000, 64, generator=generator)
    labels = torch.randint(0, 10, (20000,), generator=generator)
    queries = torch.randn(5000, 64, generator=generator)
    cpu = GROOD(index="exact", device="cpu").fit(train, labels, ood_prototype="mean").score(queries)
    cuda = GROOD(index="exact", device="cuda").fit(train.cuda(), labels.cuda(), ood_prototype="mean")
    cuda = cuda.score(queries.cuda()).cpu()
    difference = float((cpu - cuda).abs().max() / cpu.abs().max())
    ok = difference < 1e-4
    return Step("faiss_gpu", "passed" if ok else "failed", time.perf_counter() - started,
                f"{gpus} GPU(s); exact-index GROOD scores on CUDA vs CPU: max relative difference {difference:.1e}",
                {"relative_difference": difference})


def write_summary(out: Path, steps: Sequence[Step], header: str) -> str:
    """``summary.json`` and ``summary.md`` in ``out``; returns the markdown."""
    lines = [header, "", "| step | status | seconds | details |", "|---|---|---:|---|"]
    for step in steps:
        details = step.details.replace("\n", " / ").replace("|", "\\|")
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {details} |")
    failed = [step.name for step in steps if step.status == "failed"]
    lines += ["", f"result: {'FAILED (' + ', '.join(failed) + ')' if failed else 'passed'}"]
    markdown = "\n".join(lines) + "\n"
    from grood.io import atomic_write, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", {"header": header, "steps": [asdict(step) for step in steps],
                                      "failed": failed})
    with atomic_write(out / "summary.md") as handle:
        handle.write(markdown)
    return markdown


def guarded(name: str, body: Callable[[], Step]) -> Step:
    """``body()``, or a failed step naming the exception (one broken step does not stop the others)."""
    started = time.perf_counter()
    try:
        return body()
    except Exception as error:  # noqa: BLE001 - reported in the summary, with its type
        return Step(name, "failed", time.perf_counter() - started, f"{type(error).__name__}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/gpu_check", help="where logs, runs and the summary go")
    parser.add_argument("--cpu-results", default=None,
                        help="an existing CPU smoke run (e.g. results/smoke/smoke) instead of running one")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="AUROC points, CUDA vs CPU")
    args = parser.parse_args(argv)

    import torch

    message = no_cuda_message(torch)
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    shared = os.environ.get("GROOD_SHARED_DIR") or "../shared"  # as paths.shared_dir
    env = {"GROOD_SHARED_DIR": shared, "PYTHONUNBUFFERED": "1"}
    header = (f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(header, flush=True)
    steps: list[Step] = []

    def tests() -> Step:
        if not (REPO / "tests").is_dir():
            return Step("tests", "skipped", 0.0, f"the CUDA tests live in a checkout's tests/ ({REPO} has none)")
        code, seconds, _ = run_command([python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
                                       STEP_LIMITS["tests"], out / "tests.log", env, cwd=REPO)
        counts = pytest_counts((out / "tests.log").read_text(errors="replace"))
        ok = code == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped", 0)
        summary = ", ".join(f"{n} {w}" for w, n in counts.items()) or "no pytest summary"
        return Step("tests", "passed" if ok else "failed", seconds,
                    f"pytest -m cuda: {summary} (exit {code}; log {out / 'tests.log'})", counts)

    def smoke() -> Step:
        started = time.perf_counter()
        runs = {}
        devices = ["cuda"] + ([] if args.cpu_results else ["cpu"])
        for device in devices:
            results = out / f"smoke_{device}"
            code, seconds, tail = run_command(
                [python, "-m", "grood", "run", "experiment=smoke", "progress=false", f"device={device}",
                 f"paths.results_dir={results}", f"paths.cache_dir={out / f'cache_{device}'}"],
                STEP_LIMITS[f"smoke_{device}"], out / f"smoke_{device}.log", env)
            if code != 0:
                return Step("smoke", "failed", time.perf_counter() - started,
                            f"device={device} run exited {code}: {tail}")
            runs[device] = (results / "smoke", seconds)
        cpu_dir = Path(args.cpu_results).resolve() if args.cpu_results else runs["cpu"][0]
        ok, details, differences = compare_smoke(cpu_dir, runs["cuda"][0], args.tolerance)
        timing = ", ".join(f"{device} {seconds:.0f} s" for device, (_, seconds) in runs.items())
        return Step("smoke", "passed" if ok else "failed", time.perf_counter() - started,
                    f"{details}; {timing}", {"max_auroc_difference": differences})

    def train() -> Step:
        checkpoints = out / "checkpoints"
        code, seconds, tail = run_command(
            [python, "-m", "grood", "train", "dataset=cifar10_smoke", "device=cuda", "train.amp=true", "progress=false",
             f"paths.checkpoint_root={checkpoints}"], STEP_LIMITS["train"], out / "train.log", env)
        if code != 0:
            return Step("train", "failed", seconds, f"grood train exited {code}: {tail}")
        ok, details = check_training(checkpoints / "trained" / "cifar10_smoke_resnet20" / "s0")
        return Step("train", "passed" if ok else "failed", seconds, details)

    for name, body in (("tests", tests), ("smoke", smoke), ("train", train), ("faiss_gpu", check_faiss_gpu)):
        print(f"{name} ...", flush=True)
        step = guarded(name, body)
        steps.append(step)
        print(f"{name}: {step.status} in {step.seconds:.1f} s: {step.details}", flush=True)
    print("\n" + write_summary(out, steps, header))
    print(f"summary written to {out / 'summary.md'} and {out / 'summary.json'}")
    return 1 if any(step.status == "failed" for step in steps) else 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/bench_method.py at a toy size: every method runs, rounds keep the fastest, the bounds print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_method.py"


@pytest.mark.slow
def test_bench_method_prints_table_ratios_and_eq3_bounds() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--scales", "cifar", "--cifar-train", "4000", "--cifar-queries", "900",
         "--cifar-dim", "16", "--skip", "knn", "grood-torch", "--repeat", "2", "--recall-queries", "300"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "round 2 of 2" in out
    for method in ("faiss-flat", "grood-exact", "grood-ivf", "grood-ivf-int8"):
        row = re.search(rf"^\| {method} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, flags=re.MULTILINE)
        assert row, f"no table row for {method}:\n{out}"
        # the table keeps, per method, the fastest of its two rounds
        totals = [float(t) for t in re.findall(rf"^  {method}\s.*total\s+([0-9.]+) s", out, flags=re.MULTILINE)]
        assert len(totals) == 2 and abs(float(row.group(3)) - min(totals)) <= 0.011
    assert re.search(r"GROOD exact / bare FAISS flat >= [0-9.]+ on this machine", out)
    assert "GROOD exact ran as: torch+norm_pruning" in out  # the CPU's fastest exact search
    assert re.search(r"GROOD exact / bare FAISS flat\s+[0-9.]+  target <= 1: (met|NOT met)", out)
    assert re.search(r"GROOD exact / GROOD IVF\s+[0-9.]+  target >= 8: (met|NOT met)", out)
    assert re.search(r"GROOD exact / GROOD IVF int8\s+[0-9.]+  target >= 8: (met|NOT met)", out)
    assert re.search(r"pytorch-ood KNN / GROOD exact\s+n/a  target >= 3: not measured", out)
    for scan in ("float32", "int8"):
        assert re.search(rf"IVF \({scan} scan\) recall@1 \(target >= 0.98: (met|NOT met)\) on 300 queries: [01]\.\d{{4}} all",
                         out)
    assert re.search(r"GROOD exact against FAISS flat on 300 queries: largest relative distance difference", out)
    # the IVF floor: its fit, query gradients and routing, from the same run's figures
    for scan in ("float32", "int8"):
        label = rf"GROOD IVF \({scan} scan\)"
        floor = re.search(rf"{label}'s fit \(([0-9.]+) s\) with the query gradients and routing \(([0-9.]+) s\), "
                          rf"without any scan of its cells: ([0-9.]+) s, so GROOD exact / {label} <= ([0-9.]+)", out)
        assert floor, out
        assert abs(float(floor.group(1)) + float(floor.group(2)) - float(floor.group(3))) <= 0.011
    assert re.search(r"the norm bound left \d+\.\d% of the probed cells' pairs to compare", out)


def test_bench_method_rejects_a_bad_repeat() -> None:
    completed = subprocess.run([sys.executable, str(SCRIPT), "--repeat", "0"], capture_output=True, text=True,
                               check=False, timeout=120)
    assert completed.returncode == 2 and "--repeat must be >= 1" in completed.stderr


TRUE_SIZE_COMMAND = ["-m", "grood", "bench-true-size"]


@pytest.mark.slow
def test_bench_true_size_at_a_toy_size_runs_every_method_over_memory_maps(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, *TRUE_SIZE_COMMAND, "--train", "6000", "--queries", "900", "--dim", "32", "--classes",
         "10", "--recall-queries", "300", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "features written shard by shard" in out and "6,000 train x 32 dims" in out
    for method in ("grood-ivf", "grood-exact", "knn", "faiss-ivf-author", "faiss-ivf-tuned", "faiss-hnsw"):
        assert re.search(rf"^\| {method}( \(nlist \d+, nprobe \d+\))? \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", out,
                         flags=re.MULTILINE), f"no row for {method}:\n{out}"
    for method in ("grood-ivf", "faiss-ivf-author", "faiss-ivf-tuned", "faiss-hnsw"):  # recall on 300 queries
        assert re.search(rf"^  {method}\s.*recall@1 [01]\.\d{{4}} \(ID [01]\.\d{{4}}, OOD [01]\.\d{{4}}\)", out,
                         flags=re.MULTILINE)
    assert "| faiss-ivf-author (nlist 19, nprobe 4) |" in out  # the author's rule: 30 batches -> T 24 -> 19 cells
    for method in ("grood-ivf", "grood-exact", "knn"):
        assert re.search(rf"^{method}\s+peak RSS\s+[0-9.]+ GB  target <= 12 GB: (met|NOT met)", out, flags=re.MULTILINE)
    assert re.search(r"GROOD IVF    recall@1 [01]\.\d{4} in [0-9.]+ s  target >= 0.98 in <= 600 s: (met|NOT met)", out)
    assert re.search(r"GROOD exact  completed in [0-9.]+ s", out)
    assert not any(tmp_path.iterdir())  # the features are removed without --keep


def test_bench_true_size_resume_reuses_what_an_earlier_run_measured(tmp_path: Path) -> None:
    """``--keep`` leaves each method's measurement beside the features; ``--resume`` prints it again instead of
    measuring, and measures only what is missing or was measured with other settings."""
    tiny = [sys.executable, *TRUE_SIZE_COMMAND, "--train", "600", "--queries", "90", "--dim", "8", "--classes", "3",
            "--recall-queries", "30", "--workdir", str(tmp_path), "--keep"]
    first = subprocess.run([*tiny, "--methods", "knn"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    record = json.loads((folder / "measured-knn.json").read_text())
    assert record["spec"]["method"] == "knn" and record["result"]["score_s"] > 0
    again = subprocess.run([*tiny, "--methods", "knn", "grood-exact", "--resume"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(knn: measured earlier" in again.stdout and "(grood-exact: measured earlier" not in again.stdout
    knn_row = re.search(r"^\| knn \| ([0-9.]+) \|", again.stdout, flags=re.MULTILINE)
    assert knn_row and float(knn_row.group(1)) == round(record["result"]["fit_s"], 1)
    other_k = subprocess.run([*tiny, "--methods", "knn", "--resume", "--knn-k", "5"], capture_output=True, text=True,
                             timeout=600)
    assert other_k.returncode == 0 and "measured earlier" not in other_k.stdout  # other settings: measured anew

"""scripts/gpu_check.py (`make gpu-check`): the no-CUDA stop and the summary logic (the GPU steps need CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import grood.cli.gpu_check as gpu_check

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"

ROWS = ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_without_cuda_it_stops_at_once_and_says_why(tmp_path):
    out = tmp_path / "gpu_check"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                               timeout=120, check=False)
    assert completed.returncode == 2
    assert "gpu-check needs a CUDA device" in completed.stderr and "nothing was run" in completed.stderr
    assert not out.exists()  # no step ran, nothing written


def test_no_cuda_message_names_the_torch_build():
    def fake(available: bool, built: str | None):
        return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: available),
                               version=SimpleNamespace(cuda=built), __version__="2.14.1")

    assert gpu_check.no_cuda_message(fake(True, "13.0")) is None
    assert "built without CUDA" in gpu_check.no_cuda_message(fake(False, None))
    assert "CUDA 13.0) sees no CUDA device" in gpu_check.no_cuda_message(fake(False, "13.0"))


def _write_smoke(root: Path, aurocs: dict[str, list[float]]) -> Path:
    for method, values in aurocs.items():
        folder = root / "smoke" / "cifar10_smoke" / "all" / "seed0" / method
        folder.mkdir(parents=True)
        table = pd.DataFrame({"FPR@95": 50.0, "AUROC": values, "AUPR_IN": 50.0, "AUPR_OUT": 50.0, "ACC": 81.0},
                             index=pd.Index(ROWS, name="dataset"))
        table.to_csv(folder / "metrics.csv")
    return root / "smoke"


def test_compare_smoke_accepts_differences_within_the_tolerance(tmp_path):
    cpu = _write_smoke(tmp_path / "cpu", {"grood": [73.47, 73.47, 95.0, 90.0, 87.8, 90.93], "msp": [73.4] * 6})
    cuda = _write_smoke(tmp_path / "cuda", {"grood": [73.49, 73.49, 95.0, 90.0, 87.8, 90.93], "msp": [73.4] * 6})
    ok, details, differences = gpu_check.compare_smoke(cpu, cuda, tolerance=0.05)
    assert ok, details
    assert differences == {"grood": pytest.approx(0.02), "msp": 0.0}
    assert "2 methods" in details and "largest: grood 0.020" in details


def test_compare_smoke_names_each_method_beyond_the_tolerance_or_missing(tmp_path):
    cpu = _write_smoke(tmp_path / "cpu", {"grood": [73.47] * 6, "knn": [79.7] * 6, "odin": [77.7] * 6})
    cuda = _write_smoke(tmp_path / "cuda", {"grood": [73.47] * 5 + [73.60], "knn": [79.7] * 6})
    ok, details, differences = gpu_check.compare_smoke(cpu, cuda, tolerance=0.05)
    assert not ok
    assert "grood differs by 0.130" in details and "odin only on the CPU" in details and "knn" not in details
    assert differences["knn"] == 0.0


def test_compare_smoke_without_results_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no smoke results under"):
        gpu_check.compare_smoke(tmp_path / "nothing", tmp_path / "nothing", 0.05)


def test_pytest_counts_reads_the_closing_line():
    text = "....\n==== 6 passed, 1 skipped, 493 deselected in 12.31s ====\n"
    assert gpu_check.pytest_counts(text) == {"passed": 6, "skipped": 1, "deselected": 493}
    assert gpu_check.pytest_counts("ImportError: no module\n") == {}


def _write_training(folder: Path, device: str, amp: bool, losses: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "train_config.json").write_text(json.dumps({"device": device, "amp": amp, "epochs": len(losses)}))
    (folder / "history.json").write_text(json.dumps({"history": [{"epoch": i + 1, "train_loss": loss}
                                                                 for i, loss in enumerate(losses)]}))
    (folder / "last.ckpt").write_bytes(b"checkpoint")
    return folder


def test_check_training_wants_cuda_amp_and_finite_losses(tmp_path):
    ok, details = gpu_check.check_training(_write_training(tmp_path / "good", "cuda", True, [2.3, 2.1]))
    assert ok and "2 epochs on cuda with AMP" in details
    ok, details = gpu_check.check_training(_write_training(tmp_path / "cpu", "cpu", False, [2.3, 2.1]))
    assert not ok and "device='cpu', amp=False" in details
    ok, details = gpu_check.check_training(_write_training(tmp_path / "nan", "cuda", True, [2.3, float("nan")]))
    assert not ok and "losses" in details
    ok, details = gpu_check.check_training(tmp_path / "missing")
    assert not ok and "was not written" in details


def test_summary_files_and_the_failed_steps(tmp_path):
    steps = [gpu_check.Step("tests", "passed", 10.0, "7 passed"),
             gpu_check.Step("smoke", "failed", 80.0, "AUROC beyond 0.05: odin differs by 0.300"),
             gpu_check.Step("faiss_gpu", "skipped", 0.1, "faiss-cpu")]
    markdown = gpu_check.write_summary(tmp_path, steps, "gpu-check: test")
    assert "| smoke | failed | 80.0 | AUROC beyond 0.05: odin differs by 0.300 |" in markdown
    assert markdown.rstrip().endswith("result: FAILED (smoke)")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == ["smoke"] and [s["status"] for s in summary["steps"]] == ["passed", "failed", "skipped"]
    assert (tmp_path / "summary.md").read_text() == markdown


def test_a_step_that_raises_is_a_failed_step():
    def broken():
        raise RuntimeError("no such file")

    step = gpu_check.guarded("train", broken)
    assert step.status == "failed" and step.details == "RuntimeError: no such file"

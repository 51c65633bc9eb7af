"""The command line (grood/cli): `grood <command>` dispatches, answers a bad command line at once (exit status 2)
before loading torch, and the checkout's scripts/*.py are thin wrappers of the same commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grood.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"\n  {name} " in listed for name in COMMANDS)
    assert set(COMMANDS) == {"run", "reproduce", "download", "train", "leaderboard", "bench-method", "bench-eval",
                             "bench-true-size", "gpu-check"}


def test_an_unknown_command_or_none_is_exit_status_2(capsys) -> None:
    assert main(["evaluat"]) == 2
    assert "unknown command 'evaluat'; valid: run, reproduce" in capsys.readouterr().err
    assert main([]) == 2


@pytest.mark.parametrize("argv, message", [
    (["run", "method=knn", "method.params.kk=5"], "grood run: Could not override 'method.params.kk'"),
    (["run", "-m", "seed=0,1", "batch_size=0"], "grood run: invalid configuration:\n  batch_size=0"),
    (["train", "dataset=cifar10_smoke", "train.epochs=0"], "grood train: invalid training configuration:\n  "
                                                          "train.epochs=0: must be an integer >= 1"),
])
def test_a_bad_configuration_stops_before_hydra_starts(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no output folder, no log


def test_argparse_commands_name_themselves(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["download", "nonsense"])
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("usage: grood download")


def test_parsing_the_command_line_loads_no_torch_beyond_grood_config() -> None:
    """The CLI modules add no torch import of their own (grood.config's own imports are its business): a typo
    is reported without loading the network code."""
    probe = ("import sys, grood.config; before = 'torch' in sys.modules; "
             "import grood.cli, grood.cli.run, grood.cli.train, grood.config.train_schema; "
             "from grood.cli import main; main(['--help']); print(before, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split()[-2:]
    assert after == before


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_each_script_is_a_thin_wrapper_of_its_command(script: str) -> None:
    """scripts/<name>.py calls grood.cli.<name> and nothing else; its exit status is the command's."""
    text = (REPO / "scripts" / script).read_text()
    assert len(text.splitlines()) <= 20 and f"from grood.cli.{script[:-3]} import " in text
    assert script[:-3].replace("_", "-") in COMMANDS


def test_the_run_wrapper_keeps_the_exit_status_of_a_bad_command_line(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), "method=knn", "method.params.kk=5"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "scripts/run.py: Could not override 'method.params.kk'" in result.stderr

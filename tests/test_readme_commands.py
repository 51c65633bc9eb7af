"""Every ``scripts/run.py`` and ``make`` command line shown in README.md works as shown (composed, no compute).

``scripts/run.py`` lines are composed and validated with Hydra's compose API (sweeps at their first value).
``make`` lines are dry-run (``make -n``): the target must exist, and every ``scripts/run.py`` line it would
run is composed too; ``scripts/reproduce.py`` lines it would run print their jobs' commands, which are
composed as well. A README example that fails is a failing test.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shlex
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from grood.config import check_command_line

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLACEHOLDER = re.compile(r"<[A-Za-z_ ]+>")


def _readme_commands(prefixes: tuple[str, ...]) -> list[str]:
    """Command lines of README.md (fenced code blocks and inline code) that start with one of ``prefixes``."""
    text = README.read_text()
    found: list[str] = []
    in_block, prose = False, []
    for line in text.replace("\\\n", " ").splitlines():  # commands continued with a backslash
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(prefixes):
                found.append(line)
        else:
            prose.append(line)
    for inline in re.findall(r"`([^`]+)`", "\n".join(prose)):
        inline = " ".join(inline.split())  # inline code may wrap across lines
        if inline.startswith(prefixes):
            found.append(inline)
    return list(dict.fromkeys(found))


def _args_after(command: str, script: str) -> list[str]:
    """The arguments after ``script`` in ``command`` (shell redirections dropped, ``<placeholders>`` filled)."""
    tokens = shlex.split(PLACEHOLDER.sub("placeholder", command))
    if ">" in tokens:
        tokens = tokens[: tokens.index(">")]
    position = next(i for i, token in enumerate(tokens) if token.endswith(script))
    return tokens[position + 1:]


RUN_LINES = _readme_commands(("python scripts/run.py", "torchrun "))
MAKE_LINES = _readme_commands(("make ",))


def test_the_readme_shows_commands_of_both_kinds() -> None:
    assert len(RUN_LINES) >= 5 and len(MAKE_LINES) >= 5


@pytest.mark.parametrize("command", RUN_LINES)
def test_every_run_command_composes(command: str) -> None:
    check_command_line(_args_after(command, "scripts/run.py"))


def _reproduce_script():
    spec = importlib.util.spec_from_file_location("reproduce_script", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", MAKE_LINES)
def test_every_make_command_dry_runs_and_what_it_runs_composes(command: str) -> None:
    args = shlex.split(PLACEHOLDER.sub("placeholder", command))[1:]
    result = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"`{command}`: {result.stderr}"
    for line in result.stdout.replace("\\\n", " ").splitlines():  # recipes continued with a backslash
        if "scripts/run.py" in line:
            check_command_line(_args_after(line, "scripts/run.py"))
        elif "scripts/reproduce.py" in line:
            printed = io.StringIO()
            with redirect_stdout(printed):
                assert _reproduce_script().main([*_args_after(line, "scripts/reproduce.py"), "--print-commands"]) == 0
            for job in printed.getvalue().splitlines():
                if not job.startswith("#"):
                    check_command_line(_args_after(job, "scripts/run.py"))

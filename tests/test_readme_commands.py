"""Every ``grood`` and ``make`` command line shown in README.md works as shown (composed, no compute).

``grood run`` (and ``python scripts/run.py``) lines are composed and validated with Hydra's compose API (sweeps
at their first value); ``grood train`` lines likewise with the training config; ``grood reproduce`` lines print
their jobs' commands, which are composed; the other ``grood <command>`` lines parse their arguments.
``make`` lines are dry-run (``make -n``): the target must exist, and every ``grood run`` / ``grood train`` /
``grood reproduce`` line it would run is checked as above. A README example that fails is a failing test.
"""

from __future__ import annotations

import argparse
import io
import re
import shlex
import subprocess
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

from grood.cli import COMMANDS
from grood.cli import command as grood_command
from grood.cli import main as grood_main
from grood.config import check_command_line
from grood.config.train_schema import check_train_command_line

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


RUN_LINES = _readme_commands(("python scripts/run.py", "grood run "))
GROOD_LINES = [line for line in _readme_commands(("grood ", "python -m grood ", ".venv/bin/grood ", "torchrun ",
                                                   "python scripts/"))
               if "<command>" not in line]  # the notation `grood <command>` itself
MAKE_LINES = _readme_commands(("make ",))


class _Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


def _parse_only(main: Callable[[list[str]], int], args: list[str]) -> None:
    """Parse ``args`` with the argparse parser of ``main`` (a ``grood <command>`` function), run nothing."""
    real = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        real(self, args, namespace)  # a bad argument exits with status 2 here
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse), pytest.raises(_Parsed):
        main(args)


def _entry_point(tokens: list[str]) -> tuple[str, list[str]] | None:
    """``(grood command, its arguments)`` of a command line: ``grood <command>``, ``python -m grood <command>``,
    ``.venv/bin/grood <command>`` or ``python scripts/<command>.py`` (``torchrun ... scripts/run.py``); None
    for a line that calls none of them."""
    for i, token in enumerate(tokens):
        if token.endswith(".py") and Path(token).parent.name == "scripts":
            return Path(token).stem.replace("_", "-"), tokens[i + 1:]
        if (token == "grood" or token.endswith("/bin/grood")) and i + 1 < len(tokens):
            if i == 0 or tokens[i - 1] == "-m" or token.endswith("/bin/grood") or "=" in tokens[i - 1]:
                return tokens[i + 1], tokens[i + 2:]
    return None


def _check_command(command: str, args: list[str]) -> None:
    """``grood <command> <args>`` is a command and its arguments are valid (composed for Hydra apps; the jobs of
    ``reproduce`` composed too); nothing is computed."""
    if command == "--help":
        assert grood_main(["--help", *args]) == 0
        return
    assert command in COMMANDS, f"grood {command}: not a command ({', '.join(COMMANDS)})"
    if not args:
        return  # prose naming the command (`grood download` fetches ...): it exists
    if command == "run":
        check_command_line(args)
    elif command == "train":
        check_train_command_line(args)
    elif command == "reproduce":
        printed = io.StringIO()
        with redirect_stdout(printed):
            assert grood_command("reproduce")([*args, "--print-commands"]) == 0
        for job in printed.getvalue().splitlines():
            if not job.startswith("#"):
                tokens = shlex.split(job)
                assert _entry_point(tokens)[0] == "run", job
                check_command_line(_entry_point(tokens)[1])
    else:
        _parse_only(grood_command(command), args)


def _check_line(line: str) -> bool:
    """Check a shell line (redirections dropped, ``<placeholders>`` filled); False when it calls no command."""
    tokens = shlex.split(PLACEHOLDER.sub("placeholder", line))
    if ">" in tokens:
        tokens = tokens[: tokens.index(">")]
    found = _entry_point(tokens)
    if found is None:
        return False
    _check_command(*found)
    return True


def test_the_readme_shows_commands_of_both_kinds() -> None:
    assert len(RUN_LINES) >= 5 and len(MAKE_LINES) >= 5 and len(GROOD_LINES) >= len(RUN_LINES) + 5


@pytest.mark.parametrize("command", GROOD_LINES)
def test_every_grood_command_parses_and_composes(command: str) -> None:
    assert _check_line(command), f"`{command}` calls no grood command"


@pytest.mark.parametrize("command", MAKE_LINES)
def test_every_make_command_dry_runs_and_what_it_runs_composes(command: str) -> None:
    args = shlex.split(PLACEHOLDER.sub("placeholder", command))[1:]
    result = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"`{command}`: {result.stderr}"
    for line in result.stdout.replace("\\\n", " ").splitlines():  # recipes continued with a backslash
        if "grood" in line or "scripts/" in line:
            _check_line(line.lstrip("@"))


def test_the_makefile_calls_the_package_entry_points() -> None:
    """Every recipe line that runs grood calls `$(PY) -m grood <command>` (never a script path)."""
    recipes = [line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("\t")]
    assert not [line for line in recipes if "scripts/" in line]
    called = {m for line in recipes for m in re.findall(r"\$\(PY\) -m grood ([a-z-]+)", line)}
    assert called == set(COMMANDS), sorted(called ^ set(COMMANDS))

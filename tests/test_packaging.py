"""A wheel of grood works outside the checkout: it ships the paper numbers and the reproduce specs.

The wheel is built from a copy of the files a build reads (``pyproject.toml``, ``README.md``, ``grood/``) in a
temporary folder, without build isolation (offline: the test environment's setuptools), installed with
``pip install --no-deps --target`` into a fresh folder, and imported by a subprocess whose working directory
is outside the checkout, with only that folder on ``PYTHONPATH`` (torch and the other dependencies come from
the running environment; installing them again would take minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys
import grood
from grood.reporting.paper import PAPER_DIR, PAPER_TABLES, load_paper_table
from grood.reproduce.specs import SPEC_DIR, available_specs, load_spec

rows = {str(t): len(load_paper_table(t)) for t in PAPER_TABLES}
specs = {name: [load_spec(name).title, load_spec(name, smoke=True).variant] for name in available_specs()}
print(json.dumps({"grood": grood.__file__, "paper_dir": str(PAPER_DIR), "spec_dir": str(SPEC_DIR),
                  "rows": rows, "specs": specs}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copy2(REPO / "pyproject.toml", source)
    shutil.copy2(REPO / "README.md", source)
    shutil.copytree(REPO / "grood", source / "grood", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("grood-*.whl")
    return built


def test_wheel_metadata_declares_what_grood_imports(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as handle:
        (metadata_name,) = [n for n in handle.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(handle.read(metadata_name).decode())
        names = handle.namelist()
    assert metadata["License-Expression"] == "MIT"
    requirements = [r.replace(" ", "").replace("'", '"') for r in metadata.get_all("Requires-Dist")]
    core = {r for r in requirements if ";" not in r}
    for requirement in ("scipy>=1.10", "pyyaml>=6.0", "gdown>=6", "pytorch-ood<1,>=0.2", "hydra-core>=1.3"):
        assert requirement in core, (requirement, sorted(core))
    assert not any(r.startswith("faiss") for r in core)  # faiss-cpu only as the faiss extra (conda: faiss-gpu)
    assert 'faiss-cpu>=1.7.4;extra=="faiss"' in requirements
    assert "grood/reporting/paper_numbers/table1.csv" in names
    assert "grood/reproduce/targets/table6.yaml" in names


def test_installed_wheel_loads_paper_numbers_and_reproduce_specs(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    for key in ("grood", "paper_dir", "spec_dir"):
        assert Path(found[key]).is_relative_to(target), (key, found[key])  # not the checkout
    checkout = {str(t): len(__import__("grood.reporting.paper", fromlist=["x"]).load_paper_table(t))
                for t in found["rows"]}
    assert found["rows"] == checkout and sum(found["rows"].values()) == 276  # the paper's 276 numbers
    assert sorted(found["specs"]) == sorted(p.stem for p in (REPO / "grood" / "reproduce" / "targets").glob("*.yaml"))
    assert all(variant == "smoke" for _, variant in found["specs"].values())


# ------------------------------------------------------------------------- the wheel in a fresh environment
COMMAND_NAMES = ("run", "reproduce", "download", "train", "leaderboard", "bench-method", "bench-eval", "gpu-check")


def _fresh_venv(folder: Path) -> Path:
    """A virtual environment without pip that sees the running environment's packages (torch, hydra, ...)
    through a .pth line, but not grood: that environment's own ``.pth`` files (its editable grood) are not
    read from a folder that a .pth line adds. Its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "shared_environment.pth").write_text("".join(f"{path}\n" for path in shared))
    return python


def _pip_into(python: Path, *args: str) -> None:
    """``pip install --no-deps --no-index ARGS`` into the environment of ``python`` (this environment's pip).
    ``--ignore-installed``: the grood that the shared packages hold is never a candidate for uninstalling."""
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                             "--no-index", "--ignore-installed", "-q", *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (nothing points at the checkout) plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (its ``bin/`` holds the ``grood`` command)."""
    python = _fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    _pip_into(python, str(wheel))
    return python


def test_wheel_ships_the_configs_and_the_console_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as handle:
        names = set(handle.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = handle.read(entry_points).decode()
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "grood" / "configs").rglob("*.yaml")}
    assert len(shipped) > 40 and {"grood/configs/config.yaml", "grood/configs/train.yaml"} <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert "grood/__main__.py" in names and "grood/cli/run.py" in names
    assert "[console_scripts]\ngrood = grood.cli:main" in scripts


INSTALLED_PROBE = r"""
import json, sys
import grood, grood.config
from grood.config import CONFIG_DIR, compose_run_config
from grood.config.train_schema import compose_train_config

run = compose_run_config(["experiment=smoke", "method=knn", "method.params.k=5"])
train = compose_train_config(["dataset=cifar10_smoke"])
print(json.dumps({"grood": grood.__file__, "config_dir": str(CONFIG_DIR), "k": run.method.params.k,
                  "data_root": run.paths.data_root, "epochs": train.train.epochs, "torch": "torch" in sys.modules}))
"""


def test_installed_wheel_composes_and_answers_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    """From a folder outside the checkout, with nothing pointing at it: grood is the installed one, the configs
    compose from the package, `python -m grood --help` and `grood --help` list the commands, and a mistyped
    key stops `grood run` with exit status 2 and the valid keys."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(GROOD_SHARED_DIR=str(tmp_path / "shared"))
    probe = subprocess.run([str(installed), "-c", INSTALLED_PROBE], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    venv = installed.parents[1]
    assert Path(found["grood"]).is_relative_to(venv) and Path(found["config_dir"]).is_relative_to(venv)
    assert not Path(found["grood"]).is_relative_to(REPO)
    assert (found["k"], found["epochs"]) == (5, 2)
    assert found["data_root"] == f"{tmp_path / 'shared'}/data/openood_cifar10_smoke"  # $GROOD_SHARED_DIR
    for command in ([str(installed), "-m", "grood", "--help"], [str(venv / "bin" / "grood"), "--help"]):
        listed = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert all(f"\n  {name} " in listed.stdout for name in COMMAND_NAMES), listed.stdout
    typo = subprocess.run([str(venv / "bin" / "grood"), "run", "method=knn", "method.params.kk=5"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and "'method.params.kk' is not a setting" in typo.stderr, typo.stderr
    assert not list(elsewhere.iterdir())  # nothing written


def _makefile_editable_options() -> list[str]:
    """The options of the Makefile's editable install (`pip install -e '.[dev,faiss]' <options>`)."""
    (line,) = [line for line in (REPO / "Makefile").read_text().splitlines() if "pip install -e" in line]
    return line.split("'.[dev,faiss]'", 1)[1].split()


@pytest.mark.parametrize("options, shadowed", [([], True), (_makefile_editable_options(), False)],
                         ids=["setuptools-default", "makefile"])
def test_the_checkout_folder_does_not_shadow_an_editable_install(options: list[str], shadowed: bool,
                                                                 tmp_path: Path) -> None:
    """A checkout in a folder named grood, installed editable, used by a script in the folder holding it: with
    setuptools' default editable finder the folder wins as a namespace package (`module 'grood' has no
    attribute 'wrap'`); the Makefile's install (compat mode: the checkout on sys.path) imports the package."""
    checkout = tmp_path / "projects" / "grood"
    checkout.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", checkout)
    shutil.copy2(REPO / "README.md", checkout)
    shutil.copytree(REPO / "grood", checkout / "grood", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    python = _fresh_venv(tmp_path / "venv")
    _pip_into(python, "--no-build-isolation", "-e", str(checkout), *options)
    script = checkout.parent / "use_grood.py"
    script.write_text("import grood\nprint(grood.__file__)\nprint(grood.wrap.__name__)\n")
    result = subprocess.run([str(python), str(script)], cwd=checkout.parent, env=_clean_env(), capture_output=True,
                            text=True, timeout=120)
    if shadowed:  # what the issue reported: the test can tell the two apart
        assert result.returncode == 1 and "module 'grood' has no attribute 'wrap'" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(checkout / "grood" / "__init__.py"), "wrap"]


@pytest.mark.smoke
def test_installed_grood_command_runs_the_smoke_evaluation(installed: Path, shared_dir: Path, tmp_path: Path) -> None:
    """The wheel's `grood` command, from an empty folder outside the checkout, paths from the environment
    variables: GROOD on the shared smoke benchmark gives the README's smoke numbers."""
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env(GROOD_SHARED_DIR=str(shared_dir), GROOD_RESULTS_DIR=str(tmp_path / "results"),
                     GROOD_CACHE_DIR=str(tmp_path / "cache"), GROOD_DATA_ROOT=str(shared_dir / "data" /
                                                                                   "openood_cifar10_smoke"))
    grood_command = installed.parent / "grood"
    result = subprocess.run([str(grood_command), "run", "experiment=smoke", "method=grood", "progress=false"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = (tmp_path / "results").rglob("metrics.csv")
    run = json.loads((metrics.parent / "run.json").read_text())
    assert run["method"] == "grood" and run["data_root"] == str(shared_dir / "data" / "openood_cifar10_smoke")
    import pandas as pd

    table = pd.read_csv(metrics, index_col="dataset")
    assert (round(table.loc["nearood", "AUROC"], 2), round(table.loc["farood", "AUROC"], 2)) == (73.47, 90.93)
    assert not [p for p in work.rglob("*") if p.is_file()]  # everything went where the variables say

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

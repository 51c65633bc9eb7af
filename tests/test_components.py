"""Components (methods, OOD-prototype strategies, indexes): one declaration per parameter, capabilities
instead of method names, configs generated from the code, a plugin method run from the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grood.config import ConfigError, compose_run_config, hydra_compose
from grood.config import generate
from grood.config.schema import component_schemas

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ generated from the code
def test_catalogue_and_method_yaml_match_the_code() -> None:
    """grood/config/catalogue.py and every configs/method/<name>.yaml are what the code generates (their
    defaults, types and APS search values); run `python -m grood.config.generate` after changing one."""
    stale = [str(path.relative_to(REPO)) for path, text in generate.generated_files().items()
             if not path.is_file() or path.read_text() != text]
    assert stale == [], f"regenerate with python -m grood.config.generate: {stale}"


def test_method_yaml_shows_defaults_and_search_values() -> None:
    knn = (REPO / "grood/configs/method/knn.yaml").read_text()
    assert re.search(r"^  k: null +# default 50; APS searches \[50, 100, 200, 500, 1000\]$", knn, re.M)
    odin = (REPO / "grood/configs/method/odin.yaml").read_text()
    assert "noise: null" in odin and "APS searches [0.0014, 0.0028]" in odin
    grood = (REPO / "grood/configs/method/grood.yaml").read_text()
    assert re.search(r"^  k: 1$", grood, re.M) and 'fit_on: "all"' in grood


def test_a_changed_default_or_sweep_is_a_drift(monkeypatch) -> None:
    from grood.detectors.distance_based import KNN

    before = generate.method_yaml("knn", KNN, generate.method_parameters(KNN))
    monkeypatch.setattr(KNN, "sweep", {"k": [1, 2]})
    assert generate.method_yaml("knn", KNN, generate.method_parameters(KNN)) != before
    constructor = KNN.__init__.__wrapped__  # the constructor under its @checked_arguments
    monkeypatch.setattr(constructor, "__defaults__", (7,) + constructor.__defaults__[1:])
    assert "default 7" in generate.method_yaml("knn", KNN, generate.method_parameters(KNN))


def test_one_declaration_per_parameter() -> None:
    """A schema's keys are the constructor's (or the strategy dataclass's) parameters less the run's own."""
    import inspect

    from grood.detectors.registry import DETECTORS
    from grood.method.neighbours import INDEX_CLASSES
    from grood.method.neighbours.faiss_ivf import AUTHOR_NPROBE, FaissIVFIndex

    for name, cls in DETECTORS.items():
        target = cls.parameters_from or cls
        declared = set(inspect.signature(target).parameters) - set(generate.RUN_ARGUMENTS["method"])
        assert {f.name for f in dataclasses.fields(component_schemas("method")[name])} == declared, name
    for kind, cls in INDEX_CLASSES.items():
        declared = set(inspect.signature(cls).parameters) - set(generate.RUN_ARGUMENTS["index"])
        assert {f.name for f in dataclasses.fields(component_schemas("index")[kind])} == declared, kind
    assert component_schemas("index")["faiss_ivf"]().nprobe == AUTHOR_NPROBE == \
        inspect.signature(FaissIVFIndex).parameters["nprobe"].default
    config = compose_run_config(["method=grood", "index=faiss_ivf"], check=False)
    assert config.index.params.nprobe == AUTHOR_NPROBE


def test_knn_takes_the_typed_index_group() -> None:
    from grood.pipeline import run_arguments
    from grood.detectors.distance_based import KNN

    config = compose_run_config(["method=knn", "index=ivf", "index.params.nprobe=3"])
    assert run_arguments(KNN, config)["index"] == "ivf" and run_arguments(KNN, config)["index_params"]["nprobe"] == 3
    with pytest.raises(ConfigError, match=r"'method.params.index' is not a setting"):
        hydra_compose(["method=knn", "method.params.index=ivf"])


def test_batch_size_means_one_thing() -> None:
    """``batch_size``: images per loader batch (top level); rows per chunk are ``chunk_rows``."""
    for name, schema in component_schemas("method").items():
        assert "batch_size" not in {f.name for f in dataclasses.fields(schema)}, name
    assert compose_run_config(["method=knn", "method.params.chunk_rows=64"]).method.params.chunk_rows == 64


# ------------------------------------------------------------------------ capabilities, not names
def test_grood_is_an_ordinary_detector() -> None:
    from grood.detectors.base import Detector
    from grood.detectors.registry import DETECTORS
    from grood.method.detector import GROOD

    cls = DETECTORS["grood"]
    assert Detector in cls.__mro__ and not issubclass(GROOD, Detector)  # no virtual registration
    assert cls.uses_ood_prototype and cls.uses_index and not DETECTORS["knn"].uses_ood_prototype
    assert DETECTORS["knn"].uses_index and DETECTORS["odin"].needs_network and DETECTORS["react"].fit_split == "val"


def test_grood_fit_refuses_a_head_as_its_labels() -> None:
    import torch

    from grood.featureset import FeatureSet, LinearHead
    from grood.method.detector import GROOD

    features = torch.randn(20, 4)
    labels = torch.arange(20) % 2
    data = FeatureSet(features=features, logits=torch.randn(20, 2), labels=labels)
    with pytest.raises(ValueError, match="pass no train_labels"):
        GROOD(device="cpu").fit(data, LinearHead(weight=torch.randn(2, 4), bias=torch.zeros(2)))


def test_no_method_name_in_the_pipeline_control_flow() -> None:
    paths = sorted(REPO.glob("grood/pipeline/*.py"))
    assert {p.name for p in paths} >= {"__init__.py", "prepare.py", "scoring.py", "results.py"}
    for path in paths:
        lines = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                 if '"grood"' in line]
        assert lines == [], lines


def test_composing_and_validating_imports_neither_torch_nor_the_detectors() -> None:
    code = ("import sys; from grood.config import hydra_compose, validate; "
            "validate(hydra_compose(['experiment=smoke', 'method=all', 'index=ivf', 'prototype=corrupted'])); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('grood.detectors', "
            "'pytorch_ood', 'grood.method'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", "import grood.config, sys; print('torch' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------ a method from outside the package
PLUGIN = '''
"""A post-hoc method from outside the package: energy at a temperature."""
import torch

from grood.components import register_method
from grood.detectors.base import Detector
from grood.valid_values import Positive, checked_arguments


class ToyEnergy(Detector):
    name = "toy_energy"
    reference = "a plugin of tests/test_components.py"
    sweep = {"temperature": [1.0, 10.0]}

    @checked_arguments
    def __init__(self, temperature: Positive = 1.0, device: str | None = None) -> None:
        self.temperature = float(temperature)

    def score(self, data) -> torch.Tensor:
        self._check_fitted()
        return self.temperature * torch.logsumexp(data.logits.float() / self.temperature, dim=1)


register_method(ToyEnergy)
'''


def _plugin_path(root: Path) -> Path:
    """A plugin module and the metadata that lists it in the ``grood.plugins`` entry points (as an
    installed package would), under ``root``."""
    (root / "toy_grood_plugin.py").write_text(PLUGIN)
    info = root / "toy_grood_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-grood-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[grood.plugins]\ntoy_energy = toy_grood_plugin\n")
    return root


def _env(plugin_root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_root), str(REPO)])}


def test_a_plugin_method_is_a_config_option(tmp_path) -> None:
    root = _plugin_path(tmp_path)
    code = ("from grood.config import compose_run_config, ConfigError\n"
            "c = compose_run_config(['method=toy_energy', 'method.params.temperature=2'])\n"
            "print(c.method.name, c.method.params.temperature)\n"
            "print(compose_run_config(['method=all']).method.params.toy_energy.temperature)\n"
            "try:\n    compose_run_config(['method=toy_energy', 'method.params.temperature=-1'])\n"
            "except ConfigError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(root), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["toy_energy 2.0", "None"]
    assert "refused" in lines[2] and "method.params.temperature=-1.0: must be a number > 0" in out.stdout


@pytest.mark.slow
def test_a_plugin_method_runs_end_to_end_with_its_parameter_search(tmp_path, smoke_data_root, resnet20_checkpoint):
    """One class and one registration in a module outside the package; ``scripts/run.py`` evaluates it on
    the smoke benchmark with APS over its sweep."""
    (tmp_path / "plugin").mkdir()
    root = _plugin_path(tmp_path / "plugin")
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "scripts" / "run.py"), "experiment=smoke", "method=toy_energy",
               "progress=false", "device=cpu", f"paths.data_root={smoke_data_root}", f"paths.results_dir={results}",
               f"paths.cache_dir={tmp_path / 'cache'}", f"dataset.checkpoint={resnet20_checkpoint}"]
    out = subprocess.run(command, cwd=tmp_path, env=_env(root), capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (folder,) = (results / "smoke" / "cifar10_smoke" / "toy_energy").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["method"] == "toy_energy" and record["status"] == "ok"
    assert record["aps"]["searched"] == {"temperature": [1.0, 10.0]} and len(record["aps"]["trials"]) == 2
    assert record["method_params"]["temperature"] in (1.0, 10.0)
    import pandas as pd

    metrics = pd.read_csv(folder / "metrics.csv", index_col=0)
    assert {"nearood", "farood"} <= set(metrics.index)
    assert 50.0 < metrics.loc["farood", "AUROC"] <= 100.0

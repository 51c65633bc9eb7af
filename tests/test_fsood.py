"""Full-spectrum OOD (OpenOOD v1.5's ``eval_ood(fsood=True)``) and the real "ID-Corrupted Val" prototype.

OpenOOD's definition (``openood/evaluation_api/evaluator.py``): the covariate-shifted ID (csid) samples
count as ID, so each OOD row compares ``concat(ID test, csid_1, ..., csid_k)`` with the OOD set, and ``ACC``
is the accuracy over ID test and every csid set pooled. The pipeline runs use a 1/20 copy of the smoke root
with a csid list of blurred smoke validation images (written by the test).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from grood.config import ConfigError, compose_run_config
from grood.data import get_benchmark
from grood.evaluation import fsood_table, metrics_table, pooled_accuracy
from grood.metrics import accuracy, compute_all
from grood.pipeline import MissingInputError, prepare_run, run_evaluation

GROUPS = {"near": ["a"], "far": ["b"]}


# ------------------------------------------------------------------------ the table, by hand
def test_fsood_table_against_a_hand_computed_case():
    id_scores = torch.tensor([0.9, 0.8])
    csid = {"c": torch.tensor([0.7, 0.2])}
    ood = {"a": torch.tensor([0.5, 0.1]), "b": torch.tensor([0.95, 0.85])}
    table = fsood_table(id_scores, csid, ood, GROUPS, fsood_accuracy=0.75, csid_accuracies={"c": 0.5})
    assert list(table.index) == ["a", "nearood", "b", "farood", "csid:c"]
    # ID = {0.9, 0.8, 0.7, 0.2} vs OOD "a" = {0.5, 0.1}: 7 of the 8 (ID, OOD) pairs ordered ID > OOD
    assert table.loc["a", "AUROC"] == pytest.approx(100 * 7 / 8)
    # every OOD sample detected (conf <= 0.5) also takes the csid sample at 0.2: 1 of 4 ID samples
    assert table.loc["a", "FPR@95"] == pytest.approx(25.0)
    # OOD "b" = {0.95, 0.85}: pairs with ID > OOD: 0.9 > 0.85 only -> 1/8; all OOD detected at conf <= 0.95: FPR 1
    assert table.loc["b", "AUROC"] == pytest.approx(100 / 8)
    assert table.loc["b", "FPR@95"] == pytest.approx(100.0)
    assert (table.loc[["a", "nearood", "b", "farood"], "ACC"] == 75.0).all()
    assert table.loc["csid:c", "ACC"] == 50.0 and table.loc["csid:c", ["FPR@95", "AUROC"]].isna().all()
    assert table.loc["farood", "AUROC"] == table.loc["b", "AUROC"]
    # without the csid set the same scores give the plain OOD table, which differs
    plain = metrics_table(id_scores, ood, GROUPS, 1.0)
    assert plain.loc["a", "AUROC"] == 100.0 and plain.loc["a", "FPR@95"] == 0.0


def test_fsood_table_is_openood_concatenation_of_id_and_every_csid_set():
    generator = torch.Generator().manual_seed(0)
    id_scores, ood = torch.randn(50, generator=generator), {n: torch.randn(30, generator=generator) - 1 for n in "ab"}
    csid = {"c1": torch.randn(20, generator=generator) - 0.5, "c2": torch.randn(10, generator=generator)}
    table = fsood_table(id_scores, csid, ood, GROUPS, 0.6, {"c1": 0.5, "c2": 0.4})
    combined = torch.cat([id_scores, csid["c1"], csid["c2"]])  # OpenOOD: np.concatenate((id_conf, csid_conf))
    for name in "ab":
        expected = compute_all(combined, ood[name])
        for column in ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT"):
            assert table.loc[name, column] == pytest.approx(100 * expected[column])


def test_pooled_accuracy_is_correct_over_total():
    predictions = [torch.tensor([0, 1, 1, 1]), torch.tensor([2])]
    labels = [torch.tensor([0, 1, 0, 0]), torch.tensor([2])]
    assert pooled_accuracy(predictions, labels) == pytest.approx(3 / 5)  # not the mean of 0.5 and 1.0


def test_benchmark_csid_lists_are_openood_data_info():
    assert get_benchmark("cifar10").csid == {"cifar10c": "benchmark_imglist/cifar10/test_cifar10c.txt"}
    assert get_benchmark("cifar100").csid == {}  # DATA_INFO["cifar100"]["csid"]["datasets"] is empty
    assert list(get_benchmark("imagenet200").csid) == ["imagenet_v2", "imagenet_c", "imagenet_r"]
    assert get_benchmark("imagenet").csid["imagenet_es"] == "benchmark_imglist/imagenet/test_imagenet_es.txt"
    assert get_benchmark("imagenet").transform_for("csid:imagenet_c")["size"] == 224  # ToTensor+Normalize only
    bench = get_benchmark("cifar10")
    assert "csid:cifar10c" not in bench.splits() and bench.list_for("csid:cifar10c")[1] is True
    assert get_benchmark("cifar10_smoke").optional_splits() == []


# ------------------------------------------------------------------------ the pipeline on a tiny root
def _with_csid(root: Path) -> dict:
    """A csid list of blurred copies of the tiny root's ID validation images (their labels kept), and the
    smoke benchmark's definition with it as csid set and as corrupted images."""
    lists = root / "benchmark_imglist" / "cifar10"
    lines = []
    for line in (lists / "val_cifar10.txt").read_text().splitlines():
        relative, label = line.split()
        target = root / "images_classic" / "smokec" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / "images_classic" / relative).convert("RGB").filter(ImageFilter.GaussianBlur(1.5)).save(target)
        lines.append(f"smokec/{relative} {label}\n")
    (lists / "test_smokec.txt").write_text("".join(lines))
    definition = get_benchmark("cifar10_smoke").to_dict()
    definition.update(name="cifar10_smoke_csid", csid={"smokec": "benchmark_imglist/cifar10/test_smokec.txt"},
                      corrupted_val="benchmark_imglist/cifar10/test_smokec.txt")
    return definition


def _config(root: Path, cache: Path, checkpoint: Path, *overrides: str, definition: dict | None = None):
    config = compose_run_config(["dataset=cifar10_smoke", "device=cpu", "progress=false", "num_workers=0",
                                 "batch_size=256", "aps=false", f"paths.data_root={root}",
                                 f"paths.cache_dir={cache}", f"dataset.checkpoint={checkpoint}", *overrides])
    if definition is not None:
        config = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, benchmark=None,
                                                                         definition=definition))
    return config


def test_fsood_run_adds_the_csid_rows_and_openood_metrics(tiny_root, tmp_path, resnet20_checkpoint):
    definition = _with_csid(tiny_root)
    cache = tmp_path / "cache"
    config = _config(tiny_root, cache, resnet20_checkpoint, "method=msp", "fsood=true", definition=definition)
    run_evaluation(config, tmp_path / "fs")
    plain = _config(tiny_root, cache, resnet20_checkpoint, "method=msp", definition=definition)
    run_evaluation(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / "metrics_fsood.csv").exists()
    # metrics.csv stays OpenOOD's plain OOD table
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fs" / "metrics.csv", index_col=0),
                                  pd.read_csv(tmp_path / "plain" / "metrics.csv", index_col=0))
    table = pd.read_csv(tmp_path / "fs" / "metrics_fsood.csv", index_col=0)
    assert list(table.index) == ["tin", "nearood", "mnist", "fashionmnist", "texture", "farood", "csid:smokec"]
    scores = torch.load(tmp_path / "fs" / "scores.pt")
    combined = torch.cat([scores["id"], scores["csid"]["smokec"]])
    for name in ("tin", "texture"):
        expected = compute_all(combined, scores["ood"][name])
        assert table.loc[name, "AUROC"] == pytest.approx(100 * expected["AUROC"], abs=1e-4)
        assert table.loc[name, "FPR@95"] == pytest.approx(100 * expected["FPR@95"], abs=1e-4)
    run = prepare_run(config)
    test, csid = run.features("test"), run.features("csid:smokec")
    correct = int((test.logits.argmax(1) == test.labels).sum()) + int((csid.logits.argmax(1) == csid.labels).sum())
    pooled = 100 * correct / (len(test) + len(csid))
    record = json.loads((tmp_path / "fs" / "run.json").read_text())
    assert record["config"]["fsood"] is True
    assert record["fsood"]["accuracy"] == pytest.approx(pooled)
    assert table.loc["nearood", "ACC"] == pytest.approx(pooled, abs=1e-4)
    assert record["fsood"]["csid"]["smokec"]["samples"] == len(csid) == 50
    assert table.loc["csid:smokec", "ACC"] == pytest.approx(100 * accuracy(csid.logits, csid.labels), abs=1e-4)
    assert record["fsood"]["near_auroc"] == pytest.approx(table.loc["nearood", "AUROC"], abs=1e-4)


def test_fsood_without_csid_lists_is_a_config_error_before_compute(tiny_root, tmp_path, resnet20_checkpoint,
                                                                    monkeypatch):
    from grood import features as features_module

    monkeypatch.setattr(features_module, "forward_pass", lambda *a, **k: pytest.fail("a forward pass ran"))
    config = _config(tiny_root, tmp_path / "cache", resnet20_checkpoint, "method=msp", "fsood=true")
    with pytest.raises(ConfigError, match=r"fsood=true: benchmark 'cifar10_smoke' has no covariate-shifted ID "
                                          r"\(csid\) lists.*\['cifar10', 'imagenet', 'imagenet200'\]"):
        run_evaluation(config, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"oracle prototype"):
        prepare_run(_config(tiny_root, tmp_path / "cache", resnet20_checkpoint, "method=grood",
                            "prototype=local_oracle", "fsood=true", definition=_with_csid(tiny_root)))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ Table 6's corrupted images
def test_corrupted_prototype_source_is_explicit_and_labelled(tiny_root, tmp_path, resnet20_checkpoint):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"prototype.source=real: benchmark 'cifar10_smoke' defines no real "
                                          r"corrupted ID images.*prototype.source=synthetic"):
        prepare_run(_config(tiny_root, cache, resnet20_checkpoint, "method=grood", "prototype=corrupted"))
    with pytest.raises(ConfigError, match=r"prototype.source='auto': must be one of real, synthetic"):
        compose_run_config(["experiment=smoke", "prototype=corrupted", "prototype.source=auto"])
    definition = _with_csid(tiny_root)
    results = {}
    for source in ("real", "synthetic"):
        config = _config(tiny_root, cache, resnet20_checkpoint, "method=grood", "prototype=corrupted",
                         f"prototype.source={source}", definition=definition)
        results[source] = run_evaluation(config, tmp_path / source)["grood"]
        record = json.loads((tmp_path / source / "run.json").read_text())
        assert record["extra"]["prototype_source"] == source
    assert not results["real"].equals(results["synthetic"])  # another prototype, other numbers
    # the real images' list absent: an error naming it and the synthetic fallback, before compute
    (tiny_root / "benchmark_imglist" / "cifar10" / "test_smokec.txt").unlink()
    with pytest.raises(MissingInputError, match=r"(?s)missing: benchmark_imglist/cifar10/test_smokec.txt.*"
                                                r"set prototype.source=synthetic"):
        prepare_run(_config(tiny_root, cache, resnet20_checkpoint, "method=grood", "prototype=corrupted",
                            definition=definition))
    # Table 6's rows select the runs by that label: each source has its own row
    from grood.reporting.runs import collect_runs
    from grood.reproduce import load_spec, select_rows

    long = collect_runs(tmp_path)
    rows = {row.label: row for row in load_spec("table6").rows}
    for source in ("real", "synthetic"):
        label = next(label for label in rows if label.startswith(f"ID-Corrupted Val ({source}"))
        chosen = select_rows(long, rows[label].select, "table6")
        assert set(chosen["run_dir"].map(lambda d: Path(d).name)) == {source}


def test_table6_smoke_uses_and_labels_the_synthetic_source():
    from grood.reproduce import load_spec

    smoke, full = load_spec("table6", smoke=True), load_spec("table6")
    by_tag = {run.tag: run.overrides for run in smoke.runs}
    assert "prototype.source=synthetic" in by_tag["grood-corrupted"]
    assert "prototype.source=real" in {run.tag: run.overrides for run in full.runs}["grood-corrupted"]
    assert any("synthetic" in note for note in smoke.notes)
    compose_run_config(["experiment=smoke", *by_tag["grood-corrupted"]])  # a valid run config

"""A run computes exactly what was asked, or stops before computing (issue "Trustworthy runs", cases 1-9).

Each test names its case. The runs use a 1/20 copy of the smoke data root (``tiny_root``) or only compose
the config, so the file takes about a minute.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grood import features as features_module
from grood.backbones import build_backbone
from grood.config import ConfigError, compose_run_config, config_hash, hydra_compose, to_plain
from grood.detectors import DETECTORS
from grood.pipeline import (MethodsFailedError, MissingInputError, RunInputError, check_results_folder,
                            prepare_run, resolve_transform, run_evaluation)
from grood.reproduce.jobs import job_complete, set_aside

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]


def _tiny(root: Path, cache: Path, *overrides: str, checkpoint: Path | None = None):
    """The validated config of a run on the tiny root (CPU, no progress bars, its own cache)."""
    extra = [f"dataset.checkpoint={checkpoint}"] if checkpoint else []
    return compose_run_config(["dataset=cifar10_smoke", "device=cpu", "progress=false", "num_workers=0",
                               "batch_size=256", f"paths.data_root={root}", f"paths.cache_dir={cache}",
                               *extra, *overrides])


@pytest.fixture()
def no_forward_pass(monkeypatch):
    """Fails the test if the network runs on data."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran although the inputs are invalid")
    monkeypatch.setattr(features_module, "forward_pass", forbidden)


# ------------------------------------------------------------------------ 1. one data root
def test_case1_the_data_root_setting_is_the_one_used(monkeypatch, tmp_path):
    monkeypatch.delenv("GROOD_DATA_ROOT", raising=False)
    assert compose_run_config(["experiment=smoke", "paths.data_root=/does/not/exist"]).paths.data_root \
        == "/does/not/exist"
    monkeypatch.setenv("GROOD_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert compose_run_config(["experiment=smoke"]).paths.data_root == str(tmp_path / "elsewhere")
    assert compose_run_config(["dataset=cifar10"]).paths.data_root == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"dataset.data_root' is not a setting; valid keys of dataset: name"):
        compose_run_config(["experiment=smoke", "dataset.data_root=/x"])


def test_case1_a_missing_data_root_stops_naming_it_and_writes_no_cache(tmp_path, shared_dir):
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "experiment=smoke", "paths.data_root=/nonexistent", "method=msp",
         f"paths.cache_dir={cache}", f"paths.results_dir={tmp_path / 'results'}"],
        cwd=REPO, capture_output=True, text=True, env={"GROOD_SHARED_DIR": str(shared_dir), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "data root /nonexistent does not exist" in result.stdout + result.stderr
    assert not cache.exists()


# ------------------------------------------------------------------------ 2. a cache that cannot go stale
def _replace_image(root: Path, list_name: str, line: int, source: Path) -> Path:
    relative = (root / "benchmark_imglist" / "cifar10" / list_name).read_text().splitlines()[line].split()[0]
    target = root / "images_classic" / relative
    shutil.copyfile(source, target)
    return target


def test_case2_a_replaced_image_or_another_root_is_recomputed(tiny_root, smoke_data_root, tmp_path, resnet20_checkpoint):
    cache = tmp_path / "cache"
    before = prepare_run(_tiny(tiny_root, cache, "method=msp", checkpoint=resnet20_checkpoint)).features("test")
    # another root whose lists have the same text, one test image different
    other = tmp_path / "other_root"
    shutil.copytree(tiny_root, other)
    tin_image = smoke_data_root / "images_classic" / (
        (smoke_data_root / "benchmark_imglist" / "cifar10" / "test_tin.txt").read_text().split()[0])
    _replace_image(other, "test_cifar10.txt", 3, tin_image)
    assert (other / "benchmark_imglist/cifar10/test_cifar10.txt").read_text() == \
        (tiny_root / "benchmark_imglist/cifar10/test_cifar10.txt").read_text()
    moved = prepare_run(_tiny(other, cache, "method=msp", checkpoint=resnet20_checkpoint)).features("test")
    assert not torch.equal(moved.features[3], before.features[3])
    assert torch.equal(moved.features[4], before.features[4])
    # the same root with an image replaced in place: recomputed too
    _replace_image(tiny_root, "test_cifar10.txt", 5, tin_image)
    replaced = prepare_run(_tiny(tiny_root, cache, "method=msp", checkpoint=resnet20_checkpoint)).features("test")
    assert not torch.equal(replaced.features[5], before.features[5])
    # and the metrics follow the images
    first = run_evaluation(_tiny(other, cache, "method=msp", checkpoint=resnet20_checkpoint), tmp_path / "a")["msp"]
    second = run_evaluation(_tiny(tiny_root, cache, "method=msp", checkpoint=resnet20_checkpoint), tmp_path / "b")["msp"]
    assert not first.equals(second)


def test_case2_content_verification_sees_what_size_and_time_do_not(tiny_root, tmp_path, resnet20_checkpoint):
    cache = tmp_path / "cache"
    config = _tiny(tiny_root, cache, "method=msp", "cache.verify=content", checkpoint=resnet20_checkpoint)
    run = prepare_run(config)
    key_before = run.cache_key_parts("test")
    image = run.dataset("test").path(0)
    stat = Path(image).stat()
    data = bytearray(Path(image).read_bytes())
    data[-1] ^= 0xFF  # same size; the modification time is put back below
    Path(image).write_bytes(bytes(data))
    import os

    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert prepare_run(dataclasses.replace(config, cache=dataclasses.replace(config.cache, verify="stat"))) \
        .cache_key_parts("test")["files"] != key_before["files"]  # another mode: another key
    assert prepare_run(config).cache_key_parts("test")["files"] != key_before["files"]


# ------------------------------------------------------------------------ 3. README's example and typed keys
def test_case3_declared_keys_work_without_plus_and_bad_ones_fail_at_once():
    config = compose_run_config(["dataset=cifar10", "prototype=val_ood", "index=ivf", "method.params.k=5"])
    assert config.method.params.k == 5 and config.index.kind == "ivf" and config.prototype.strategy == "val_ood"
    mean = compose_run_config(["dataset=cifar10", "dataset.transform.mean=[0.5,0.5,0.5]"]).dataset.transform.mean
    assert mean == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match=r"method.params.k=0: must be an integer >= 1"):
        compose_run_config(["dataset=cifar10", "method.params.k=0"])
    with pytest.raises(ConfigError, match=r"valid keys of method.params: k, chunk_rows"):
        compose_run_config(["method=knn", "method.params.kk=5"])
    with pytest.raises(ConfigError, match=r"undeclared configuration key\(s\), which nothing would read: "
                                          r"method.params.kk"):
        compose_run_config(["method=knn", "+method.params.kk=5"])
    with pytest.raises(ConfigError) as info:  # every problem at once
        compose_run_config(["prototype.mixup_lambda=1.5", "method.params.k=0", "batch_size=0"])
    assert all(part in str(info.value) for part in ("mixup_lambda=1.5", "method.params.k=0: must be an integer >= 1",
                                                    "batch_size=0"))


def test_case3_the_command_line_is_checked_before_hydra_starts(tmp_path):
    result = subprocess.run([sys.executable, "scripts/run.py", "method=knn", "method.params.kk=5",
                             f"paths.results_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "valid keys of method.params: k, chunk_rows" in result.stderr
    assert not any(tmp_path.iterdir())  # no output folder


# ------------------------------------------------------------------------ 4. late errors
def test_case4_an_empty_list_stops_before_any_forward_pass(tiny_root, tmp_path, resnet20_checkpoint, no_forward_pass):
    (tiny_root / "benchmark_imglist" / "cifar10" / "test_cifar10.txt").write_text("")
    (tiny_root / "benchmark_imglist" / "cifar10" / "val_tin.txt").write_text("tin/missing.jpg -1\n")
    with pytest.raises(MissingInputError) as info:
        run_evaluation(_tiny(tiny_root, tmp_path / "cache", "method=msp", checkpoint=resnet20_checkpoint),
                       tmp_path / "out")
    message = str(info.value)
    assert "test_cifar10.txt holds no entries" in message  # both problems, in one report
    assert "val_tin.txt: 1 of 1 image file(s) missing" in message and "line 1: " in message
    assert not (tmp_path / "cache").exists()


def test_case4_duplicate_lines_are_an_error_naming_both(tiny_root, tmp_path, resnet20_checkpoint, no_forward_pass):
    path = tiny_root / "benchmark_imglist" / "cifar10" / "test_tin.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(RunInputError, match=rf"line {len(lines) + 1}: image .* is listed again \(first at line 1\)"):
        prepare_run(_tiny(tiny_root, tmp_path / "cache", "method=msp", checkpoint=resnet20_checkpoint))


# ------------------------------------------------------------------------ 5. one method's failure
@pytest.fixture()
def resnet56_checkpoint(tmp_path) -> Path:
    """A randomly initialised CIFAR ResNet-56 (64-d features) saved as a plain state dict."""
    torch.manual_seed(0)
    path = tmp_path / "resnet56.pt"
    torch.save(build_backbone("resnet56", num_classes=10).state_dict(), path)
    return path


def test_case5_vim_alone_with_an_invalid_default_stops_before_computing(tiny_root, tmp_path, resnet56_checkpoint,
                                                                         no_forward_pass):
    config = _tiny(tiny_root, tmp_path / "cache", "method=vim", "backbone=resnet56", checkpoint=resnet56_checkpoint)
    with pytest.raises(RunInputError, match=r"method vim: every value of its APS sweep is invalid for this network "
                                            r"\(ViM dim=256 must be smaller than the feature dimension D=64\); set a "
                                            r"valid value with method.params.dim=<value>, or on_invalid=adapt"):
        run_evaluation(config, tmp_path / "out")


def test_case5_method_all_runs_every_other_method_and_fails_naming_vim(tiny_root, tmp_path, resnet56_checkpoint):
    out = tmp_path / "out"
    # aps=false keeps it short: ViM's OpenOOD default dim=256 is as invalid as its APS values (D = 64)
    config = _tiny(tiny_root, tmp_path / "cache", "method=all", "backbone=resnet56", "aps=false",
                   checkpoint=resnet56_checkpoint)
    with pytest.raises(MethodsFailedError, match=r"(?s)method\(s\) failed .*\n  vim: ConfigError: method vim: its "
                                                 r"parameters are invalid .*D=64"):
        run_evaluation(config, out)
    summary = json.loads((out / "summary.json").read_text())["methods"]
    assert summary["vim"]["status"] == "failed" and "D=64" in summary["vim"]["error"]
    # random weights: OpenMax and SHE find no correctly classified sample of some class, and say so
    for name in ("openmax", "she"):
        assert summary[name]["status"] == "ok" or "correctly classified" in summary[name]["error"] \
            or "correct predictions" in summary[name]["error"]
    ok = [name for name, entry in summary.items() if entry["status"] == "ok"]
    assert set(ok) >= {"grood", *DETECTORS} - {"vim", "openmax", "she"}
    for name in ok:
        assert (out / name / "metrics.csv").is_file()
    vim_record = json.loads((out / "vim" / "run.json").read_text())
    assert vim_record["status"] == "failed" and not (out / "vim" / "metrics.csv").exists()
    # asked for: the value ViM's paper gives for small D (D / 2), recorded
    adapted = _tiny(tiny_root, tmp_path / "cache", "method=vim", "backbone=resnet56", "on_invalid=adapt",
                    checkpoint=resnet56_checkpoint)
    run_evaluation(adapted, tmp_path / "adapted")
    record = json.loads((tmp_path / "adapted" / "run.json").read_text())
    assert record["method_params"] == {"dim": 32}
    assert "on_invalid=adapt uses {'dim': 32}" in record["parameter_notes"][0]


# ------------------------------------------------------------------------ 6. wrong advice
def test_case6_a_truncated_checkpoint_is_called_truncated(tiny_root, tmp_path, resnet20_checkpoint, no_forward_pass):
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(resnet20_checkpoint.read_bytes()[:1000])
    with pytest.raises(RunInputError, match=r"is a truncated or corrupt file \(1,000 bytes; EOFError\)") as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", "method=msp", checkpoint=truncated))
    assert "Python objects" not in str(info.value)


# ------------------------------------------------------------------------ 8. the network's normalisation
def test_case8_each_network_gets_the_statistics_it_was_trained_with(tmp_path):
    def normalisation(*overrides: str) -> dict:
        config = compose_run_config(["dataset=cifar10_smoke", *overrides])
        from grood.pipeline import resolve_benchmark

        benchmark = resolve_benchmark(config.dataset.benchmark, config.dataset.definition)
        return resolve_transform(benchmark, config)[1]

    resnet20 = normalisation()
    assert resnet20["mean"] == IMAGENET_MEAN and "backbone resnet20" in resnet20["source"]
    resnet18 = normalisation("backbone=resnet18_32x32")  # OpenOOD's CIFAR-10 checkpoints: CIFAR-10's statistics
    assert resnet18["mean"] == CIFAR10_MEAN and "benchmark cifar10_smoke" in resnet18["source"]
    mine = normalisation("dataset.transform.mean=[0.5,0.5,0.5]")
    assert mine["mean"] == [0.5, 0.5, 0.5] and "mean: dataset.transform (set by you)" in mine["source"]
    for name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        assert normalisation(f"backbone={name}")["mean"] == IMAGENET_MEAN


# ------------------------------------------------------------------------ 9. no result lost or mistaken
def _run_dir(*overrides: str) -> str:
    cfg = hydra_compose(["dataset=cifar10", *overrides], return_hydra_config=True)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]


def test_case9_runs_of_other_settings_never_share_a_folder():
    folders = {_run_dir("prototype=mixup"), _run_dir("prototype=mean"), _run_dir("index=ivf"),
               _run_dir("method.params.k=5"), _run_dir("paths.data_root=/elsewhere")}
    assert len(folders) == 5
    assert _run_dir("prototype=mean") == _run_dir("prototype=mean", "progress=false", "num_workers=0")
    assert _run_dir().startswith("results/runs/default/cifar10/grood/seed0-")
    config = compose_run_config(["dataset=cifar10"])
    assert _run_dir().endswith(config_hash(to_plain(config)))  # the folder's hash is run.json's


def test_case9_a_folder_of_another_configuration_is_refused_and_set_aside(tmp_path):
    mean = compose_run_config(["dataset=cifar10", "prototype=mean"])
    mixup = compose_run_config(["dataset=cifar10", "prototype=mixup"])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"config_hash": config_hash(to_plain(mean)), "status": "ok"}))
    (folder / "metrics.csv").write_text("dataset,AUROC\n")
    check_results_folder(folder, mean)  # the same configuration: replaced, with a log line
    with pytest.raises(RunInputError, match=r"holds a run of another configuration"):
        check_results_folder(folder, mixup)
    assert job_complete(folder, ["grood"], mean) and not job_complete(folder, ["grood"], mixup)
    moved = set_aside(folder)
    assert moved.name == "run.superseded-1" and (moved / "run.json").is_file() and not folder.exists()


# ------------------------------------------------------------------------ 7. silent degradations
def test_case7_an_ood_prototype_on_a_class_prototype_is_an_error_naming_the_class():
    from grood.method import GROOD, class_prototypes

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 8, generator=generator) + 3 * torch.eye(3, 8).repeat(100, 1)
    labels = torch.arange(3).repeat(100)
    protos = class_prototypes(features, labels, 3)
    for p_ood in (protos[2].clone(), protos[2] + 1e-7):
        with pytest.raises(ValueError, match=r"coincides with the prototype of class 2"):
            GROOD(index="torch").fit(features, labels, ood_prototype=p_ood, num_classes=3)
    GROOD(index="torch").fit(features, labels, ood_prototype=protos[2] + 0.5, num_classes=3)  # distinct: fine


def test_case7_an_empty_class_of_a_declared_count_is_an_error_naming_it(caplog):
    from grood.featureset import FeatureSet
    from grood.method import GROOD

    features = torch.randn(90, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(9).repeat(10)  # class 9 of 10 has no sample
    data = FeatureSet(torch.randn(90, 10), features, labels)  # the benchmark's 10 classes: the logits' width
    with pytest.raises(ValueError, match=r"class\(es\) \[9\] of 10 have no sample"):
        GROOD(index="torch").fit(data, ood_prototype="mean")
    with pytest.raises(ValueError, match=r"class\(es\) \[9\] of 10 have no sample"):
        GROOD(index="torch").fit(features, labels, num_classes=10, ood_prototype="mean")
    with caplog.at_level("WARNING"):  # inferred with nothing declaring more classes: no noise (issue 23 case 5)
        assert GROOD(index="torch").fit(features, labels, ood_prototype="mean").num_classes == 9
    assert "num_classes inferred" not in caplog.text
    with caplog.at_level("WARNING"), pytest.raises(ValueError):  # the network predicts class 9: said
        GROOD(index="torch").fit(features, labels, ood_prototype="mean", train_predictions=torch.arange(10).repeat(9))
    assert "num_classes inferred as max(train_labels) + 1 = 9, but train_predictions hold class 9" in caplog.text

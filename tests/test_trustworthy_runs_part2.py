"""Trustworthy runs, part two (issue 23): the cases about checkpoints, messages, Ctrl-C, the results-folder
lock, known-bad methods in ``method=all``, per-method timings and GROOD.fit's class-count warning.

Each test names its case (2, 5, 9, 10, 11, 12). Runs use a 1/20 copy of the smoke root (``tiny_root``), or
only compose the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grood import features as features_module
from grood import pipeline
from grood.backbones import build_backbone
from grood.backbones.checkpoints import read_state_dict
from grood.config import ConfigError, compose_run_config
from grood.pipeline import (MissingInputError, RunInputError, adapt_parameters, method_list, method_problem,
                            prepare_run, run_evaluation)

REPO = Path(__file__).resolve().parents[1]


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


def _with_nan(source: Path, target: Path, key: str = "linear.weight", value: float = float("nan")) -> Path:
    """A copy of akamaster's ResNet-20 checkpoint with ``value`` written into ``key[0, 0]``."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    state["module." + key].view(-1)[0] = value
    torch.save(checkpoint, target)
    return target


# ------------------------------------------------------------------------ 2. non-finite checkpoints
def test_case2_a_nan_weight_stops_before_any_forward_pass_naming_file_and_tensor(
        tiny_root, tmp_path, resnet20_checkpoint, no_forward_pass):
    damaged = _with_nan(resnet20_checkpoint, tmp_path / "nan.th")
    with pytest.raises(RunInputError) as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", "method=grood", checkpoint=damaged))
    message = str(info.value)
    assert f"checkpoint {damaged} holds non-finite values in 1 of its 97 floating tensors: " \
           "[linear.weight: 1 NaN of 640 values]" in message
    assert not (tmp_path / "cache").exists()
    # +inf in another tensor: both named, with their counts
    _with_nan(damaged, damaged, key="conv1.weight", value=float("inf"))
    with pytest.raises(ValueError, match=r"2 of its 97 floating tensors: \[conv1.weight: 1 \+inf of "
                                                       r"432 values, linear.weight: 1 NaN of 640 values\]"):
        build_backbone("resnet20", num_classes=10, checkpoint=damaged)
    assert read_state_dict(resnet20_checkpoint)  # the real one is finite


def test_case2_and_9_a_jpeg_given_as_checkpoint_is_not_a_torch_checkpoint(
        tiny_root, tmp_path, smoke_data_root, no_forward_pass):
    jpeg = next((smoke_data_root / "images_classic" / "cifar10").rglob("*.jpg"))
    with pytest.raises(RunInputError) as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", "method=msp", checkpoint=jpeg))
    message = str(info.value)
    assert f"checkpoint {jpeg} ({jpeg.stat().st_size:,} bytes) is not a torch checkpoint: it is a JPEG image" in message
    assert "re-save" not in message and "Python objects" not in message
    text = tmp_path / "notes.th"
    text.write_text("epoch 10, accuracy 91.2\n")
    with pytest.raises(ValueError, match=r"is not a torch checkpoint: it is a text file \(it starts with 'epoch 10"):
        read_state_dict(text)
    empty = tmp_path / "empty.th"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a torch checkpoint: it is an empty file"):
        read_state_dict(empty)


# ------------------------------------------------------------------------ 5. GROOD.fit's class count
def test_case5_grood_fit_warns_only_when_the_inferred_class_count_is_doubtful(caplog):
    from grood.method import GROOD

    features = torch.randn(90, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(9).repeat(10)
    with caplog.at_level(logging.WARNING, logger="grood.method.detector"):
        GROOD(index="torch").fit(features, labels, ood_prototype="mean")  # the README's snippet: nothing to doubt, no warning
    assert not [r for r in caplog.records if "num_classes inferred" in r.getMessage()]
    caplog.clear()
    # the network predicts a class no label has: the caller's network declares 10 classes
    with caplog.at_level(logging.WARNING, logger="grood.method.detector"), pytest.raises(ValueError):
        GROOD(index="torch").fit(features, labels, ood_prototype="mean", train_predictions=torch.arange(10).repeat(9))
    assert "num_classes inferred as max(train_labels) + 1 = 9, but train_predictions hold class 9" in caplog.text
    caplog.clear()
    # labels that skip class 3
    skipping = torch.where(labels == 3, 4, labels)
    with caplog.at_level(logging.WARNING, logger="grood.method.detector"), pytest.raises(ValueError):
        GROOD(index="torch").fit(features, skipping, ood_prototype="mean")
    assert "the labels skip class(es) [3] (no sample)" in caplog.text
    caplog.clear()
    # class prototypes of more classes than the labels show
    protos = torch.randn(10, 8)
    with caplog.at_level(logging.WARNING, logger="grood.method.detector"), pytest.raises(ValueError):
        GROOD(index="torch").fit(features, labels, ood_prototype="mean", class_prototypes=protos)
    assert "class_prototypes has 10 rows" in caplog.text


# ------------------------------------------------------------------------ 9. messages that point at the fix
def test_case9_a_value_of_the_wrong_type_says_the_key_is_right():
    with pytest.raises(ConfigError) as info:
        compose_run_config(["method.params.k=five"])
    message = str(info.value)
    assert "'method.params.k' is a setting, but its value has the wrong type: expected int, got 'five'" in message
    assert "is not a setting" not in message
    with pytest.raises(ConfigError, match=r"'progress' is a setting, but its value has the wrong type: expected "
                                          r"bool, got 'maybe'"):
        compose_run_config(["progress=maybe"])


def test_case9_hydras_use_plus_hint_is_not_shown_where_plus_is_refused():
    with pytest.raises(ConfigError) as info:
        compose_run_config(["method=knn", "method.params.kk=5"])
    message = str(info.value)
    assert "'method.params.kk' is not a setting; valid keys of method.params: k, chunk_rows" in message
    assert "use +" not in message and "+method.params.kk" not in message
    with pytest.raises(ConfigError, match=r"undeclared configuration key"):  # the rule the hint contradicted
        compose_run_config(["method=knn", "+method.params.kk=5"])
    with pytest.raises(ConfigError, match=r"add a key with \+backbone.kwargs.n=<value>"):  # where '+' is right
        compose_run_config(["backbone=module", "backbone.target=torchvision.models.resnet18",
                            "backbone.early_layer=layer1", "backbone.head_layer=fc", "backbone.kwargs.n=3"])


def test_case9_and_11_vims_hint_names_the_dim_key_and_adapt_uses_the_papers_rule():
    for overrides, key in ((["method=vim"], "method.params.dim"), (["method=all"], "method.params.vim.dim")):
        config = compose_run_config(["dataset=cifar10_smoke", *overrides])
        params = dict(method_list(config.method))["vim"]
        problem = method_problem("vim", params, 64, config)
        assert f"set a valid value with {key}=<value>, or on_invalid=adapt to use {{'dim': 32}}" in problem
        assert "method.params=<value>" not in problem and "method.params.vim=<value>" not in problem
    adapt = compose_run_config(["dataset=cifar10_smoke", "method=vim", "on_invalid=adapt"])
    params, sweep, notes = adapt_parameters("vim", {}, 64, adapt)  # both APS values (256, 1000) invalid
    assert params == {"dim": 32} and sweep is None and "on_invalid=adapt uses {'dim': 32}" in notes[0]
    no_aps = compose_run_config(["dataset=cifar10_smoke", "method=vim", "on_invalid=adapt", "aps=false"])
    assert adapt_parameters("vim", {}, 64, no_aps)[0] == {"dim": 32}  # OpenOOD's 256: D / 2, not D - 1
    assert adapt_parameters("vim", {"dim": 1000}, 768, no_aps)[0] == {"dim": 512}  # the paper's ViT-B choice
    assert adapt_parameters("vim", {"dim": 40}, 64, no_aps)[0] == {"dim": 40}  # a valid value is kept


FACTORIES = '''
import os
import signal

from torch import nn


def raises_runtime_error(**kwargs):
    raise RuntimeError("CUDA driver not found")


def raises_key_error(**kwargs):
    return {}["weights"]


def interrupting_net(num_classes=10):
    """A small CNN that sends itself SIGINT (Ctrl-C) when the first batch of images reaches it."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, num_classes))

    def interrupt(module, inputs):
        if inputs[0].shape[0] > 1:  # a batch of images, not the one-image probe of the feature size
            os.kill(os.getpid(), signal.SIGINT)

    model[0].register_forward_pre_hook(interrupt)
    return model
'''


@pytest.fixture()
def factories(tmp_path, monkeypatch) -> str:
    """The module name of :data:`FACTORIES`, importable (also by child processes through PYTHONPATH)."""
    folder = tmp_path / "factories"
    folder.mkdir()
    (folder / "grood_issue23_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(folder))
    return "grood_issue23_factories"


def test_case9_a_module_factory_that_raises_is_named_with_its_exception(tiny_root, tmp_path, factories,
                                                                        no_forward_pass):
    layers = {"early_layer": "1", "head_layer": "4"}
    with pytest.raises(ValueError, match=rf"backbone.target='{factories}.raises_runtime_error' called with "
                                         r"backbone.kwargs=\{\} raised RuntimeError: CUDA driver not found"):
        build_backbone("module", target=f"{factories}.raises_runtime_error", **layers)
    for name, expected in (("raises_runtime_error", "RuntimeError: CUDA driver not found"),
                           ("raises_key_error", "KeyError: 'weights'")):
        config = _tiny(tiny_root, tmp_path / "cache", "method=msp", "backbone=module", "dataset.checkpoint=null",
                       f"backbone.target={factories}.{name}", "backbone.early_layer=1", "backbone.head_layer=4")
        with pytest.raises(RunInputError, match=rf"backbone.target='{factories}.{name}' .* raised {expected}"):
            prepare_run(config)


def test_case9_a_missing_smoke_checkpoint_suggests_a_command_that_works(tiny_root, tmp_path, resnet20_checkpoint):
    shared = tmp_path / "no_shared"
    config = _tiny(tiny_root, tmp_path / "cache", "method=msp", f"paths.shared_dir={shared}")
    with pytest.raises(MissingInputError) as info:
        prepare_run(config)
    message = str(info.value)
    assert "make checkpoints DATASET=cifar10_smoke" not in message
    assert "point GROOD_SHARED_DIR at the folder holding checkpoints/cifar10_resnet20_akamaster.th" in message
    command = next(line.strip() for line in message.splitlines() if "download_url_to_file" in line)
    # the command, with the download served from a local copy of the same file: it fetches and hash-checks it
    url = re.search(r"'(https://[^']+)'", command).group(1)
    assert url.startswith("https://github.com/akamaster/pytorch_resnet_cifar10/")
    local = command.replace(url, resnet20_checkpoint.resolve().as_uri()).replace("python -c", f"{sys.executable} -c")
    subprocess.run(local, shell=True, check=True, capture_output=True)
    fetched = shared / "checkpoints" / "cifar10_resnet20_akamaster.th"
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == hashlib.sha256(resnet20_checkpoint.read_bytes()).hexdigest()
    assert prepare_run(config).checkpoint_sha256.startswith("12fca82f")  # the run now finds it
    assert shlex.split(command)[:3] == ["mkdir", "-p", str(fetched.parent)]


def test_case9_ctrl_c_ends_with_one_line_a_nonzero_status_and_no_half_written_file(tiny_root, tmp_path, factories):
    results, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "factories")}
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "dataset=cifar10_smoke", "method=msp", "device=cpu", "progress=false",
         "num_workers=0", "backbone=module", f"backbone.target={factories}.interrupting_net",
         "backbone.early_layer=1", "backbone.head_layer=4", "dataset.checkpoint=null", f"paths.data_root={tiny_root}",
         f"paths.cache_dir={cache}", f"paths.results_dir={results}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    last = output.strip().splitlines()[-1]
    assert "interrupted (Ctrl-C): the run stopped" in last
    leftovers = [p for p in [*results.rglob("*"), *cache.rglob("*")] if p.name.endswith(".tmp") or p.name.startswith(".")
                 and p.name not in (".hydra",)]
    assert leftovers == []  # no temporary file, no lock file
    assert not list(results.rglob("run.json")) and not list(results.rglob("metrics.csv"))


# ------------------------------------------------------------------------ 10. one run per results folder
def test_case10_a_second_run_on_a_locked_folder_stops_at_once_naming_the_other(tiny_root, tmp_path,
                                                                               resnet20_checkpoint, no_forward_pass):
    from grood.run_lock import LOCK_NAME, ResultsFolderBusyError, results_folder_lock

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from grood.run_lock import acquire; acquire(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = _tiny(tiny_root, tmp_path / "cache", "method=msp", checkpoint=resnet20_checkpoint)
        started = time.perf_counter()
        with pytest.raises(ResultsFolderBusyError, match=rf"results folder {out} is being written by another run "
                                                         rf"\(pid {holder.pid} on host .*wait for it to finish"):
            run_evaluation(config, out)
        assert time.perf_counter() - started < 5  # at once, not after the other run
        assert not (tmp_path / "cache").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without removing its lock file: the next run takes the stale lock over
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    with results_folder_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(ResultsFolderBusyError, match=rf"pid {os.getpid()} "):  # held: also within one process
            with results_folder_lock(out):
                pass
    assert not (out / LOCK_NAME).exists()  # a run that ends removes its lock


# ------------------------------------------------------------------------ 11. a known-bad method, said at once
@pytest.fixture()
def resnet56_checkpoint(tmp_path) -> Path:
    """A randomly initialised CIFAR ResNet-56 (64-d features) saved as a plain state dict."""
    torch.manual_seed(0)
    path = tmp_path / "resnet56.pt"
    torch.save(build_backbone("resnet56", num_classes=10).state_dict(), path)
    return path


def test_case11_method_all_says_at_once_that_vim_cannot_run(tiny_root, tmp_path, resnet56_checkpoint,
                                                             no_forward_pass, caplog):
    config = _tiny(tiny_root, tmp_path / "cache", "method=all", "backbone=resnet56", checkpoint=resnet56_checkpoint)
    with caplog.at_level(logging.ERROR, logger="grood.pipeline"):
        run = prepare_run(config)  # no forward pass over data yet (no_forward_pass)
    assert run.feature_dim == 64
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("method vim: every value of its APS sweep is invalid for this "
                                                     "network (ViM dim=256 must be smaller than the feature dimension "
                                                     "D=64); set a valid value with method.params.vim.dim=<value>")
    assert "It will be recorded as failed; the other methods run" in errors[0]


def test_case11_the_readme_says_where_vims_dim_32_comes_from():
    readme = (REPO / "README.md").read_text()
    assert "With `method=all` they are set per method: `method.params.vim.dim=32`." not in readme
    assert "`experiment=smoke` sets `method.params.vim.dim=32`" in readme
    assert compose_run_config(["experiment=smoke"]).method.params.vim.dim == 32
    assert compose_run_config(["experiment=smoke", "method=vim"]).method.params.dim == 32
    assert compose_run_config(["dataset=cifar10", "method=all"]).method.params.vim.dim is None  # OpenOOD's 256


# ------------------------------------------------------------------------ 12. per-method timings
SLEEP_S = 1.5


def test_case12_each_method_records_its_own_time_and_the_forward_passes_once(tiny_root, tmp_path,
                                                                              resnet20_checkpoint, monkeypatch):
    real_extract, real_methods = pipeline.prepare.extract_split, pipeline.method_list

    def slow_extract(*args, **kwargs):  # every shared forward pass takes at least SLEEP_S
        time.sleep(SLEEP_S)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(pipeline.prepare, "extract_split", slow_extract)
    three = lambda method: [m for m in real_methods(method) if m[0] in ("grood", "msp", "knn")]  # noqa: E731
    monkeypatch.setattr(pipeline.prepare, "method_list", three)
    monkeypatch.setattr(pipeline.results, "method_list", three)
    out = tmp_path / "out"
    config = _tiny(tiny_root, tmp_path / "cache", "method=all", "prototype=mean", "aps=false", "index=torch",
                   checkpoint=resnet20_checkpoint)
    run_evaluation(config, out)
    forward = json.loads((out / "summary.json").read_text())["forward_passes_s"]
    assert set(forward) == {"train", "test", "tin", "mnist", "fashionmnist", "texture"}
    assert all(seconds >= SLEEP_S for seconds in forward.values())
    timings = {name: json.loads((out / name / "run.json").read_text()) for name in ("grood", "msp", "knn")}
    for name, record in timings.items():
        assert set(record["timings_s"]) <= {f"method:{name}", f"prototype:{name}"}, record["timings_s"]
        assert "forward_passes_s" not in record  # recorded once, in summary.json
    grood = timings["grood"]["timings_s"]
    # GROOD ran first: the passes over the four OOD sets (>= 4 * SLEEP_S) ran in its window, not in its time
    ood_passes = sum(forward[name] for name in ("tin", "mnist", "fashionmnist", "texture"))
    assert grood["method:grood"] + grood["prototype:grood"] < ood_passes
    assert timings["msp"]["timings_s"]["method:msp"] < SLEEP_S  # every pass was done: MSP's own time only

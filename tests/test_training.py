"""grood.training, grood.training_run and `grood train`: the recipe's schedule, manifold mixup, resume, atomic checkpoints,
the Hydra configs and the smoke run on the shared CIFAR-10 smoke data (CPU, ResNet-20, seconds)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import grood.training as training
from grood.backbones import build_backbone, load_checkpoint
from grood.data import ImageListDataset
from grood.training import (
    ResumeMismatchError,
    TrainConfig,
    balanced_subset,
    check_resumable,
    cosine_learning_rate,
    load_history,
    manifold_mixup_loss,
    mixup_cross_entropy,
    sample_mixup,
    train,
)
from grood.config import ConfigError
from grood.config.train_schema import compose_train_config
from grood.training_run import TrainingDataError, run_training, train_config_from

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine torch's 2 OpenMP threads run a tiny network ~30x slower
    (measured: 0.8 s vs 24 s for the same 2-epoch run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compose(overrides: list[str]):
    return compose_train_config(overrides)


def _smoke_overrides(smoke_data_root: Path, checkpoint_root: Path, *extra: str) -> list[str]:
    return ["dataset=cifar10_smoke", f"paths.data_root={smoke_data_root}", f"paths.checkpoint_root={checkpoint_root}",
            "progress=false", *extra]


def _tiny_data(n: int = 24, classes: int = 4, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=generator)  # ResNet-20 pools globally: any size
    labels = torch.arange(n) % classes
    return TensorDataset(images, labels)


def _tiny_network(classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet20", num_classes=classes)


def _tiny_config(**changes) -> TrainConfig:
    values = dict(epochs=2, batch_size=8, num_workers=0, device="cpu", progress=False)
    values.update(changes)
    return TrainConfig(**values)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different[:5]}"


# --------------------------------------------------------------------------- the learning rate
def test_cosine_learning_rate_endpoints_and_midpoint():
    assert cosine_learning_rate(0, 100, 0.1, 1e-6) == pytest.approx(0.1)
    assert cosine_learning_rate(50, 100, 0.1, 1e-6) == pytest.approx((0.1 + 1e-6) / 2)
    assert cosine_learning_rate(100, 100, 0.1, 1e-6) == pytest.approx(1e-6)
    assert cosine_learning_rate(25, 100, 0.1, 0.0) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    values = [cosine_learning_rate(t, 10, 0.1, 0.0) for t in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing


def test_learning_rate_is_stepped_per_batch(tmp_path):
    """3 batches per epoch, 2 epochs: the LR after epoch 1 is the cosine at step 3 of 6, not at epoch 1 of 2
    of a per-epoch schedule; after the last batch it is the minimum."""
    config = _tiny_config(learning_rate=0.1, min_learning_rate=1e-4)
    train(_tiny_network(), _tiny_data(24), None, tmp_path, config)
    history = load_history(tmp_path)
    assert history[0]["learning_rate"] == pytest.approx(cosine_learning_rate(3, 6, 0.1, 1e-4))
    assert history[1]["learning_rate"] == pytest.approx(1e-4)


# --------------------------------------------------------------------------- manifold mixup
def test_mixup_cross_entropy_is_the_convex_combination():
    logits = torch.randn(6, 5)
    a, b = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([4, 3, 2, 1, 0, 1])
    assert torch.allclose(mixup_cross_entropy(logits, a, b, 1.0), F.cross_entropy(logits, a))
    assert torch.allclose(mixup_cross_entropy(logits, a, b, 0.0), F.cross_entropy(logits, b))
    log_p = F.log_softmax(logits, dim=1)
    expected = -(0.3 * log_p[torch.arange(6), a] + 0.7 * log_p[torch.arange(6), b]).mean()
    assert torch.allclose(mixup_cross_entropy(logits, a, b, 0.3), expected)


@pytest.mark.parametrize("layer", ["input", "early"])
def test_manifold_mixup_with_lambda_one_is_plain_cross_entropy(layer):
    network = _tiny_network().eval()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    loss = manifold_mixup_loss(network, images, labels, 2.0, torch.Generator().manual_seed(3), lam=1.0, layer=layer)
    torch.testing.assert_close(loss, F.cross_entropy(network(images), labels))


@pytest.mark.parametrize("layer", ["input", "early"])
def test_manifold_mixup_mixes_at_the_drawn_layer(layer):
    network = _tiny_network().eval()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    generator = torch.Generator().manual_seed(5)
    _, _, permutation = sample_mixup(8, 2.0, torch.Generator().set_state(generator.get_state()))
    loss = manifold_mixup_loss(network, images, labels, 2.0, generator, lam=0.3, layer=layer)
    if layer == "input":
        logits = network(0.3 * images + 0.7 * images[permutation])
    else:
        h = network.early(images)
        logits = network.head(network.mid(0.3 * h + 0.7 * h[permutation]))
    expected = 0.3 * F.cross_entropy(logits, labels) + 0.7 * F.cross_entropy(logits, labels[permutation])
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(network(images), labels))


def test_sample_mixup_draws_beta_lambda_both_layers_and_permutations():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_mixup(6, 2.0, generator) for _ in range(2000)]
    lams = np.array([lam for lam, _, _ in draws])
    assert ((lams > 0) & (lams < 1)).all()
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 0.05) < 0.01  # Beta(2, 2): mean 1/2, var 1/20
    layers = [layer for _, layer, _ in draws]
    assert 0.45 < layers.count("input") / len(layers) < 0.55 and set(layers) == {"input", "early"}
    assert all(sorted(p.tolist()) == list(range(6)) for _, _, p in draws[:50])
    again = torch.Generator().manual_seed(0)
    assert sample_mixup(6, 2.0, again)[0] == draws[0][0]  # reproducible from the generator


def test_manifold_mixup_loss_is_finite_and_trains(tmp_path):
    network = _tiny_network().train()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    loss = manifold_mixup_loss(network, images, labels, 2.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
    train(_tiny_network(), _tiny_data(), None, tmp_path, _tiny_config(manifold_mixup=True))
    assert all(math.isfinite(row["train_loss"]) for row in load_history(tmp_path))


# --------------------------------------------------------------------------- checkpoints and resume
def test_checkpoints_are_plain_state_dicts_and_best_follows_accuracy(tmp_path):
    data = _tiny_data()
    train(_tiny_network(), data, data, tmp_path, _tiny_config(epochs=3))
    history = json.loads((tmp_path / "history.json").read_text())
    accuracies = [row["eval_accuracy"] for row in history["history"]]
    best_epoch = max(i for i, acc in enumerate(accuracies, start=1) if acc == max(accuracies))
    assert history["best_epoch"] == best_epoch
    _assert_same_weights(_state(tmp_path / "best.ckpt"), _state(tmp_path / f"epoch_{best_epoch:03d}.ckpt"))
    _assert_same_weights(_state(tmp_path / "last.ckpt"), _state(tmp_path / "epoch_003.ckpt"))
    for name in ("epoch_001.ckpt", "best.ckpt", "last.ckpt"):
        network = build_backbone("resnet20", num_classes=4)
        load_checkpoint(network, tmp_path / name, strict=True)


def test_without_eval_set_best_is_last_and_keep_epoch_checkpoints(tmp_path):
    train(_tiny_network(), _tiny_data(), None, tmp_path, _tiny_config(epochs=3, keep_epoch_checkpoints=2))
    assert sorted(p.name for p in tmp_path.glob("epoch_*.ckpt")) == ["epoch_002.ckpt", "epoch_003.ckpt"]
    _assert_same_weights(_state(tmp_path / "best.ckpt"), _state(tmp_path / "last.ckpt"))
    assert [row["eval_accuracy"] for row in load_history(tmp_path)] == [None, None, None]


class _Interrupt:
    """Raise KeyboardInterrupt at the ``stop_at``-th item a dataset serves (a Ctrl-C mid-epoch)."""

    def __init__(self, dataset, stop_at: int | None) -> None:
        self.dataset, self.stop_at, self.served = dataset, stop_at, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.served += 1
        if self.stop_at is not None and self.served == self.stop_at:
            raise KeyboardInterrupt
        return self.dataset[index]


@pytest.mark.parametrize("mixup", [False, True])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, mixup):
    """Ctrl-C in epoch 2 of 2, then the same call again: epoch 1 is not redone, and the final weights equal an
    uninterrupted run's bit for bit (CPU; sampler, augmentation and mixup RNG states are restored)."""
    data, config = _tiny_data(24), _tiny_config(manifold_mixup=mixup)
    train(_tiny_network(), data, data, tmp_path / "straight", config)

    interrupted = _Interrupt(data, stop_at=24 + 10)  # the 10th item of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_network(), interrupted, data, tmp_path / "resumed", config)
    assert [row["epoch"] for row in load_history(tmp_path / "resumed")] == [1]
    epoch1_mtime = (tmp_path / "resumed" / "epoch_001.ckpt").stat().st_mtime_ns

    again = _Interrupt(data, stop_at=None)
    train(_tiny_network(), again, data, tmp_path / "resumed", config)
    assert again.served == 24  # only epoch 2
    assert (tmp_path / "resumed" / "epoch_001.ckpt").stat().st_mtime_ns == epoch1_mtime
    for name in ("epoch_001.ckpt", "epoch_002.ckpt", "last.ckpt", "best.ckpt"):
        _assert_same_weights(_state(tmp_path / "straight" / name), _state(tmp_path / "resumed" / name))
    drop = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert drop(load_history(tmp_path / "straight")) == drop(load_history(tmp_path / "resumed"))

    train(_tiny_network(), again, data, tmp_path / "resumed", config)  # finished: nothing more to do
    assert again.served == 24 and len(load_history(tmp_path / "resumed")) == 2


def test_resume_refuses_a_different_recipe(tmp_path):
    data = _tiny_data()
    assert check_resumable(tmp_path, 24, 0, _tiny_config(epochs=1)) is False  # nothing to resume
    train(_tiny_network(), data, None, tmp_path, _tiny_config(epochs=1))
    assert check_resumable(tmp_path, 24, 0, _tiny_config(epochs=1, progress=True, num_workers=2)) is True
    with pytest.raises(ResumeMismatchError, match="manifold_mixup: False in resume.pt, True now"):
        check_resumable(tmp_path, 24, 0, _tiny_config(epochs=1, manifold_mixup=True))
    with pytest.raises(ResumeMismatchError, match=r"(?s)batch_size: 8 in resume.pt, 12 now.*new output directory"):
        train(_tiny_network(), data, None, tmp_path, _tiny_config(epochs=1, batch_size=12))
    with pytest.raises(ResumeMismatchError, match="num_train: 24 in resume.pt, 16 now"):
        train(_tiny_network(), _tiny_data(16), None, tmp_path, _tiny_config(epochs=1))


def test_interrupted_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A kill while ``last.ckpt`` of epoch 2 is being written: the old ``last.ckpt`` (epoch 1) survives whole,
    no temporary file is left, and the run then resumes and finishes."""
    data, config = _tiny_data(), _tiny_config()
    real_save, real_atomic_write = torch.save, training.atomic_write
    state = {"target": None, "last_writes": 0}

    @contextlib.contextmanager
    def tracking_atomic_write(path, mode="w"):
        state["target"] = Path(path).name
        with real_atomic_write(path, mode) as handle:
            yield handle

    def dying_save(obj, handle, *args, **kwargs):
        if state["target"] == "last.ckpt":
            state["last_writes"] += 1
            if state["last_writes"] == 2:  # epoch 2's last.ckpt: half written, then killed
                handle.write(b"half a checkpoint")
                raise KeyboardInterrupt
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(training, "atomic_write", tracking_atomic_write)
    monkeypatch.setattr(training.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_network(), data, None, tmp_path, config)
    monkeypatch.setattr(training.torch, "save", real_save)
    assert state["last_writes"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    _assert_same_weights(_state(tmp_path / "last.ckpt"), _state(tmp_path / "epoch_001.ckpt"))
    assert torch.load(tmp_path / "resume.pt", weights_only=False)["epoch"] == 1
    train(_tiny_network(), data, None, tmp_path, config)
    assert [row["epoch"] for row in load_history(tmp_path)] == [1, 2]
    _assert_same_weights(_state(tmp_path / "last.ckpt"), _state(tmp_path / "epoch_002.ckpt"))


# --------------------------------------------------------------------------- data helpers
def test_balanced_subset_is_seeded_and_class_balanced():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    chosen = balanced_subset(labels, 4, seed=0)
    assert chosen == sorted(chosen) and len(set(chosen)) == 12
    assert np.bincount(labels[chosen].numpy()).tolist() == [4, 4, 4]
    assert balanced_subset(labels, 4, seed=0) == chosen and balanced_subset(labels, 4, seed=1) != chosen
    with pytest.raises(ValueError, match="class 2 has 5 samples, fewer than the 6"):
        balanced_subset(labels, 6, seed=0)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="mixup_alpha must be > 0"):
        TrainConfig(manifold_mixup=True, mixup_alpha=0.0)
    with pytest.raises(ValueError, match="min_learning_rate"):
        TrainConfig(learning_rate=0.1, min_learning_rate=0.2)


# --------------------------------------------------------------------------- configs and the script
def test_configs_give_each_dataset_its_recipe():
    cifar = _compose(["dataset=cifar100"])
    assert (cifar.backbone.name, cifar.train.batch_size, cifar.train.epochs, cifar.train.augmentation) == (
        "resnet18_32x32", 128, 100, "cifar")
    assert (cifar.train.learning_rate, cifar.train.momentum, cifar.train.weight_decay) == (0.1, 0.9, 5e-4)
    assert cifar.output_dir == f"{cifar.paths.checkpoint_root}/trained/cifar100_resnet18_32x32/s0"
    imagenet = _compose(["dataset=imagenet200", "manifold_mixup=true", "seed=2"])
    assert (imagenet.backbone.name, imagenet.train.batch_size, imagenet.train.augmentation) == (
        "resnet18_224x224", 256, "imagenet")
    assert imagenet.output_dir.endswith("trained/imagenet200_resnet18_224x224_mixup/s2")
    smoke = _compose(["dataset=cifar10", "train=smoke"])
    assert (smoke.train.epochs, smoke.train.subset_per_class, smoke.device, smoke.num_workers) == (2, 20, "cpu", 0)
    assert _compose(["dataset=cifar10_smoke"]).train.subset_per_class == 20


@pytest.mark.parametrize("overrides, message", [
    (["train.epochz=3"], r"'train.epochz' is not a setting; valid keys of train: epochs, batch_size"),
    (["train.epochs=abc"], r"train.epochs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["manifold_mixup=maybe"], r"manifold_mixup: Value 'maybe' is not a valid bool"),
    (["+train.lr=0.1"], r"undeclared training configuration key\(s\).*train.lr"),
    (["train.epochs=0", "train.augmentation=autoaugment", "device=gpu", "train.min_learning_rate=1.0",
      "train.eval_split=holdout", "train.subset_per_class=0"],
     r"(?s)device=.gpu..*train.epochs=0: must be an integer >= 1.*subset_per_class=0.*min_learning_rate=1.0.*"
     r"augmentation='autoaugment': must be one of \['cifar', 'imagenet'\].*eval_split='holdout'"),
])
def test_training_config_is_typed(overrides, message):
    """Every key of configs/train.yaml is declared with its type: an unknown key, a wrong type or a value out
    of range stops at composition, naming the key (all range problems at once)."""
    with pytest.raises(ConfigError, match=message):
        _compose(["dataset=cifar10", *overrides])


def test_train_config_takes_every_loop_setting_from_its_key():
    """The loop's TrainConfig: each field from the config key of its name, none left at the class default."""
    config = _compose(["dataset=cifar100", "seed=2", "manifold_mixup=true", "num_workers=3", "progress=false",
                       "device=cpu", "train.epochs=7", "train.batch_size=9", "train.learning_rate=0.05",
                       "train.min_learning_rate=0.001", "train.momentum=0.5", "train.nesterov=false",
                       "train.weight_decay=0.01", "train.mixup_alpha=0.4", "train.amp=false",
                       "train.max_batches_per_epoch=4", "train.keep_epoch_checkpoints=2"])
    loop = train_config_from(config)
    assert (loop.seed, loop.manifold_mixup, loop.num_workers, loop.progress, loop.device) == (2, True, 3, False, "cpu")
    assert (loop.epochs, loop.batch_size, loop.learning_rate, loop.min_learning_rate, loop.momentum) == (
        7, 9, 0.05, 0.001, 0.5)
    assert (loop.nesterov, loop.weight_decay, loop.mixup_alpha, loop.amp) == (False, 0.01, 0.4, False)
    assert (loop.max_batches_per_epoch, loop.keep_epoch_checkpoints) == (4, 2)
    assert loop.extra == {"dataset": "cifar100", "backbone": "resnet18_32x32", "eval_split": "val"}


def test_train_command_line_stops_on_a_bad_key_before_training(tmp_path):
    result = subprocess.run([sys.executable, "-m", "grood", "train", "dataset=cifar10_smoke", "train.epocs=1",
                             f"paths.checkpoint_root={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "grood train: Could not override 'train.epocs'" in result.stderr
    assert "valid keys of train: epochs" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_data_names_the_make_command(tmp_path):
    cfg = _compose(["dataset=cifar10", f"paths.data_root={tmp_path / 'nowhere'}", f"paths.checkpoint_root={tmp_path}"])
    with pytest.raises(TrainingDataError, match=r"(?s)does not exist.*train_cifar10.txt.*make data DATASET=cifar10"):
        run_training(cfg)
    assert not (tmp_path / "trained").exists()  # nothing written before the data is there
    lists = tmp_path / "root" / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    (tmp_path / "root" / "images_classic").mkdir()
    for name in ("train_cifar10.txt", "val_cifar10.txt"):
        (lists / name).write_text("cifar10/train/airplane/0000.png 0\n")
    cfg = _compose(["dataset=cifar10", f"paths.data_root={tmp_path / 'root'}", f"paths.checkpoint_root={tmp_path}"])
    with pytest.raises(TrainingDataError, match=r"(?s)1 of 1 image file\(s\) missing.*make data DATASET=cifar10"):
        run_training(cfg)


def test_smoke_script_resumes_and_matches_uninterrupted(tmp_path, smoke_data_root, monkeypatch):
    """The smoke recipe on the real smoke images, through the script's entry point: interrupted in epoch 2 and
    re-run, it continues at epoch 2 and ends with the weights of an uninterrupted run."""
    small = ["train.subset_per_class=8", "train.eval_subset_per_class=2"]  # 80 train images: fast under load
    straight = run_training(_compose(_smoke_overrides(smoke_data_root, tmp_path / "a", *small)))
    real_getitem = ImageListDataset.__getitem__
    served = {"train": 0}

    def counting_getitem(self, index, stop_at=None):
        if self.imglist_path.name == "train_cifar10.txt":
            served["train"] += 1
            if served["train"] == stop_at:
                raise KeyboardInterrupt
        return real_getitem(self, index)

    monkeypatch.setattr(ImageListDataset, "__getitem__", lambda self, i: counting_getitem(self, i, stop_at=80 + 30))
    cfg = _compose(_smoke_overrides(smoke_data_root, tmp_path / "b", *small))
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    served["train"] = 0
    monkeypatch.setattr(ImageListDataset, "__getitem__", lambda self, i: counting_getitem(self, i))
    resumed = run_training(cfg)
    assert served["train"] == 80  # 8 images x 10 classes: epoch 2 only
    _assert_same_weights(_state(straight), _state(resumed))
    provenance = json.loads((resumed.parent / "provenance.json").read_text())["sessions"]
    assert [s["resumed"] for s in provenance] == [False, True] and provenance[-1]["epochs_done"] == 2


def test_smoke_cli_writes_openood_checkpoints_history_and_provenance(tmp_path, smoke_data_root):
    command = [sys.executable, "-m", "grood", "train",
               *_smoke_overrides(smoke_data_root, tmp_path), "train.epochs=1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
                                 "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "trained" / "cifar10_smoke_resnet20" / "s0"
    for name in ("epoch_001.ckpt", "best.ckpt", "last.ckpt"):
        state = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict
        network = build_backbone("resnet20", num_classes=10)
        network.load_state_dict(state, strict=True)
    history = load_history(run_dir)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"]) and 0 <= history[0]["eval_accuracy"] <= 1
    session = json.loads((run_dir / "provenance.json").read_text())["sessions"][0]
    assert session["packages"]["torch"] and session["packages"]["python"]
    assert "git_commit" in session and session["config"]["train"]["subset_per_class"] == 20
    assert "${" not in json.dumps(session["config"])  # resolved
    assert session["data"]["num_train"] == 200 and len(session["data"]["train_subset_indices"]) == 200
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert not list(run_dir.glob("*.tmp"))

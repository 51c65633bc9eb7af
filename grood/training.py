"""The paper's training recipe (section 6) for the checkpoint studies (Tables 5 and 7).

ResNet-18 (32x32 for CIFAR, 224 for ImageNet-200), SGD with momentum 0.9 (Nesterov, as OpenOOD's
``BaseTrainer``) and weight decay 5e-4, a cosine learning rate from 0.1 stepped every batch (OpenOOD's
``cosine_annealing``, down to 1e-6), 100 epochs, batch 128 (CIFAR) / 256 (ImageNet-200), standard
augmentation. Optional manifold mixup (Verma et al. 2019) for Table 7.

Files in ``output_dir`` (all written atomically: a killed run leaves the old file or the new one):

- ``epoch_<NNN>.ckpt``: the weights after epoch NNN, a plain state dict (OpenOOD's checkpoint format,
  loads with ``strict=True`` into :func:`grood.backbones.build_backbone`); ``last.ckpt`` and ``best.ckpt``
  (highest accuracy on the evaluation set, ties to the later epoch, as OpenOOD's recorder; the last epoch
  when there is no evaluation set).
- ``resume.pt``: everything an interrupted run needs to continue (model, optimizer, scheduler, AMP scaler,
  every RNG, history, best accuracy). It is written last in each epoch: it is the commit point.
- ``history.json`` (one row per epoch) and ``train_config.json``.

Calling :func:`train` again with the same ``output_dir`` continues after the last finished epoch. On the
CPU with the same settings the continued run ends with the same weights, bit for bit, as an uninterrupted
one (every source of randomness -- the sampler's generator, the global RNGs that drive the augmentation,
the mixup generator -- is saved and restored). On CUDA cuDNN's non-deterministic kernels make the two
differ by rounding.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from grood.device import resolve_device
from grood.io import atomic_write, write_json
from grood.resources import loader_workers

log = logging.getLogger(__name__)

#: Where manifold mixup may mix (Verma et al. 2019, restricted to the split network's first cut):
#: the input images, or ``h_early`` (after ``network.early``).
MIXUP_LAYERS = ("input", "early")

#: TrainConfig fields that define the optimisation; resuming with any of them changed is refused.
RECIPE_FIELDS = (
    "epochs", "batch_size", "learning_rate", "min_learning_rate", "momentum", "weight_decay", "nesterov",
    "manifold_mixup", "mixup_alpha", "seed", "max_batches_per_epoch",
)


class ResumeMismatchError(ValueError):
    """``resume.pt`` was written by a run with a different recipe or data; continuing would mix the two."""


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the paper's CIFAR recipe).

    Attributes:
        epochs, batch_size, learning_rate, momentum, weight_decay, nesterov: the SGD recipe.
        min_learning_rate: where the cosine ends (OpenOOD: 1e-6).
        manifold_mixup, mixup_alpha: train with manifold mixup, ``λ ~ Beta(α, α)`` (Table 7).
        seed: seeds the sampler, the augmentation and mixup (the network is initialised by the caller).
        num_workers, device (``auto`` = CUDA when present), amp (float16 autocast, CUDA only), progress.
        max_batches_per_epoch: cap on the batches per epoch (smoke runs); None = the whole training set.
        keep_epoch_checkpoints: write ``epoch_<NNN>.ckpt`` only for the last N epochs (Table 5 needs 15);
            None = every epoch.
        extra: free-form values recorded in ``train_config.json``.
    """

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 0.1
    min_learning_rate: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    manifold_mixup: bool = False
    mixup_alpha: float = 2.0
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    max_batches_per_epoch: int | None = None  # for smoke runs
    keep_epoch_checkpoints: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer; got {value!r}")
        for name in ("max_batches_per_epoch", "keep_epoch_checkpoints"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be a positive integer or None; got {value!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be an integer >= 0; got {self.num_workers!r}")
        if not self.learning_rate > 0 or not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"TrainConfig needs learning_rate > 0 and 0 <= min_learning_rate <= learning_rate; got "
                f"learning_rate={self.learning_rate!r}, min_learning_rate={self.min_learning_rate!r}"
            )
        if self.manifold_mixup and not self.mixup_alpha > 0:
            raise ValueError(f"TrainConfig.mixup_alpha must be > 0 (λ ~ Beta(α, α)); got {self.mixup_alpha!r}")

    def recipe(self) -> dict[str, Any]:
        """The fields of :data:`RECIPE_FIELDS` (what a resumed run must share)."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


# --------------------------------------------------------------------------- the learning rate
def cosine_learning_rate(step: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Cosine decay per optimisation step (OpenOOD's ``cosine_annealing``, SGDR without restarts).

    ``lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2`` for step ``t = 0 .. T``: the first
    batch uses ``base_lr``, the learning rate falls to ``min_lr`` at ``t = T`` (after the last batch).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- manifold mixup
def mixup_cross_entropy(
    logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float
) -> torch.Tensor:
    """Mixup loss ``λ CE(logits, y_a) + (1 - λ) CE(logits, y_b)`` (Verma et al. 2019, eq. 2).

    ``logits`` ``[B, C]`` of the mixed batch; ``labels_a``, ``labels_b`` ``[B]`` class indices of the two
    mixed samples; returns the scalar batch mean.
    """
    return lam * F.cross_entropy(logits, labels_a) + (1.0 - lam) * F.cross_entropy(logits, labels_b)


def sample_mixup(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[float, str, torch.Tensor]:
    """Draw one manifold-mixup configuration from ``generator``.

    Returns ``(λ ~ Beta(α, α), layer`` uniform over :data:`MIXUP_LAYERS`, ``permutation [B])``: sample ``i``
    is mixed with sample ``permutation[i]``. torch's Beta sampler cannot take a generator, so λ comes from a
    NumPy generator seeded by a draw from ``generator`` (one state to save and restore).
    """
    numpy_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(numpy_seed).beta(alpha, alpha))
    layer = MIXUP_LAYERS[int(torch.randint(0, len(MIXUP_LAYERS), (1,), generator=generator))]
    permutation = torch.randperm(batch_size, generator=generator)
    return lam, layer, permutation


def manifold_mixup_loss(
    network: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
    lam: float | None = None,
    layer: str | None = None,
) -> torch.Tensor:
    """Manifold mixup (Verma et al. 2019) on a split network ``f = head ∘ mid ∘ early``.

    A layer is drawn uniformly from {input, after ``early``}; the batch's hidden states there are mixed
    with those of a random permutation of the batch, ``h = λ h_i + (1 - λ) h_perm(i)``, ``λ ~ Beta(α, α)``,
    the rest of the network runs on ``h``, and the loss is :func:`mixup_cross_entropy`.

    Args:
        images: ``[B, 3, H, W]``; labels: ``[B]``.
        generator: a CPU ``torch.Generator`` for λ, the layer and the permutation.
        lam, layer: fix λ and/or the layer (tests); None = drawn.

    Returns:
        The scalar loss.
    """
    drawn_lam, drawn_layer, permutation = sample_mixup(images.shape[0], alpha, generator)
    lam = drawn_lam if lam is None else float(lam)
    layer = drawn_layer if layer is None else layer
    if layer not in MIXUP_LAYERS:
        raise ValueError(f"manifold mixup layer must be one of {MIXUP_LAYERS}; got {layer!r}")
    permutation = permutation.to(images.device)
    if layer == "input":
        mixed = lam * images + (1.0 - lam) * images[permutation]
        logits = network.head(network.mid(network.early(mixed)))
    else:
        h_early = network.early(images)
        mixed = lam * h_early + (1.0 - lam) * h_early[permutation]
        logits = network.head(network.mid(mixed))
    return mixup_cross_entropy(logits, labels, labels[permutation], lam)


# --------------------------------------------------------------------------- data helpers
def balanced_subset(labels: torch.Tensor | Sequence[int], per_class: int, seed: int) -> list[int]:
    """Indices of ``per_class`` randomly chosen samples of every class (seeded), in ascending order.

    ``labels``: ``[N]`` class indices. Raises ValueError naming a class with fewer than ``per_class``.
    """
    labels = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer; got {per_class!r}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < per_class:
            raise ValueError(
                f"class {int(label)} has {members.size} samples, fewer than the {per_class} per class asked for; "
                "lower the per-class count"
            )
        chosen.extend(rng.choice(members, size=per_class, replace=False).tolist())
    return sorted(chosen)


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], large_scale: bool, interpolation: str = "bilinear"
):
    """Training transform for RGB PIL images (the datasets convert to RGB), as OpenOOD's ``BasePreprocessor``.

    32x32 (``large_scale=False``): resize to ``size``, centre crop, random flip, random crop with padding 4.
    ImageNet-scale: random resized crop to ``size``, random flip. Then ``ToTensor`` and ``Normalize``:
    output ``[3, size, size]``.
    """
    from torchvision import transforms

    from grood.data.transforms import INTERPOLATIONS

    mode = INTERPOLATIONS[interpolation]
    if large_scale:
        geometry = [transforms.RandomResizedCrop(size, interpolation=mode), transforms.RandomHorizontalFlip()]
    else:
        geometry = [
            transforms.Resize(size, interpolation=mode),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(size, padding=4),
        ]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(list(mean), list(std))])


# --------------------------------------------------------------------------- evaluation and files
@torch.no_grad()
def evaluate_accuracy(network: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy (fraction) of ``network`` on ``loader``."""
    network.eval()
    correct = total = 0
    for images, labels in loader:
        logits = network(images.to(device))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
        total += labels.numel()
    return correct / max(total, 1)


def _save(obj: Any, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def checkpoint_name(epoch: int) -> str:
    """``epoch_<NNN>.ckpt`` for a 1-based epoch."""
    return f"epoch_{epoch:03d}.ckpt"


def _rng_state(loader_generator: torch.Generator, mixup_generator: torch.Generator) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
        "mixup": mixup_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict[str, Any], loader_generator: torch.Generator, mixup_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    loader_generator.set_state(state["loader"].cpu())
    mixup_generator.set_state(state["mixup"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def data_sizes(num_train: int, num_eval: int, config: TrainConfig) -> dict[str, int]:
    """What a resumed run must share besides the recipe: ``num_train``, ``num_eval``, ``batches_per_epoch``."""
    batches = math.ceil(num_train / config.batch_size)
    if config.max_batches_per_epoch is not None:
        batches = min(batches, config.max_batches_per_epoch)
    return {"num_train": num_train, "num_eval": num_eval, "batches_per_epoch": batches}


def _check_resumable(state: dict[str, Any], config: TrainConfig, sizes: dict[str, int], path: Path) -> None:
    differences = [
        f"{key}: {state['recipe'].get(key)!r} in {path.name}, {value!r} now"
        for key, value in {**config.recipe(), **sizes}.items()
        if state["recipe"].get(key) != value
    ]
    if differences:
        raise ResumeMismatchError(
            f"{path} was written by a run with different settings:\n  " + "\n  ".join(differences)
            + f"\nrestore those settings to continue it, or train into a new output directory (or delete "
            f"{path.parent} to start over)"
        )


def check_resumable(output_dir: str | Path, num_train: int, num_eval: int, config: TrainConfig) -> bool:
    """Whether ``output_dir`` holds a run to continue (``resume.pt``); raise :class:`ResumeMismatchError`
    when that run's recipe (:data:`RECIPE_FIELDS`) or data sizes differ from ``config``'s.

    :func:`train` checks this itself; call it first to fail before writing anything else.
    """
    path = Path(output_dir) / "resume.pt"
    if not path.exists():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    _check_resumable(state, config, data_sizes(num_train, num_eval, config), path)
    return True


# --------------------------------------------------------------------------- training
def train(
    network: torch.nn.Module,
    train_set: Dataset,
    test_set: Dataset | None,
    output_dir: str | Path,
    config: TrainConfig,
) -> Path:
    """Train ``network`` with the paper's recipe; resume from ``output_dir/resume.pt`` if present.

    Args:
        network: a split network (``early``/``mid``/``head``; needed for manifold mixup), freshly
            initialised (seed it before building it) or anything: a resumed run loads its weights.
        train_set: items ``(image [3, H, W], label)``, augmented.
        test_set: held-out ID items for the per-epoch accuracy that selects ``best.ckpt``
            (``grood train`` passes the benchmark's *val* split, as OpenOOD does); None = none.
        output_dir: where the files listed in the module docstring go.

    Returns:
        The path of ``last.ckpt``.

    Raises:
        ResumeMismatchError: ``resume.pt`` exists but was written with another recipe or data size.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(None if config.device == "auto" else config.device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    network = network.to(device)
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    loader_generator = torch.Generator().manual_seed(config.seed)
    mixup_generator = torch.Generator().manual_seed(config.seed + 1)
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, num_workers=loader_workers(config.num_workers),
        generator=loader_generator, drop_last=False, pin_memory=device.type == "cuda",
    )
    sizes = data_sizes(len(train_set), len(test_set) if test_set is not None else 0, config)
    batches_per_epoch = sizes["batches_per_epoch"]
    total_steps = config.epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: cosine_learning_rate(step, total_steps, config.learning_rate, config.min_learning_rate)
        / config.learning_rate,
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    test_loader = (
        DataLoader(test_set, batch_size=config.batch_size, num_workers=loader_workers(config.num_workers),
                   pin_memory=device.type == "cuda")
        if test_set is not None else None
    )

    start_epoch, best_accuracy, best_epoch, history = 0, -math.inf, 0, []
    resume_path = output_dir / "resume.pt"
    if resume_path.exists():
        # Our own file, holding Python/NumPy RNG states besides tensors: weights_only=False is needed.
        state = torch.load(resume_path, map_location=device, weights_only=False)
        _check_resumable(state, config, sizes, resume_path)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and use_amp:
            scaler.load_state_dict(state["scaler"])
        _restore_rng_state(state["rng"], loader_generator, mixup_generator)
        start_epoch, best_accuracy, best_epoch = state["epoch"], state["best_accuracy"], state["best_epoch"]
        history = state["history"]
        log.info("resuming %s after epoch %d of %d", output_dir, start_epoch, config.epochs)
    write_json(output_dir / "train_config.json", {**asdict(config), **sizes})
    if start_epoch >= config.epochs:
        log.info("%s: all %d epochs already done", output_dir, config.epochs)

    epochs_bar = tqdm(range(start_epoch, config.epochs), initial=start_epoch, total=config.epochs,
                      desc="epochs", disable=not config.progress, position=0)
    for epoch in epochs_bar:
        started = time.time()
        network.train()
        loss_sum, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per batch
        bar = tqdm(train_loader, total=batches_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress, leave=False, position=1)
        for batch_index, (images, labels) in enumerate(bar):
            if batch_index >= batches_per_epoch:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                if config.manifold_mixup:
                    loss = manifold_mixup_loss(network, images, labels, config.mixup_alpha, mixup_generator)
                else:
                    loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach().float() * labels.shape[0]
            seen += labels.shape[0]
            if config.progress and batch_index % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}")
        bar.close()
        running_loss = loss_sum.item()
        if not math.isfinite(running_loss):
            raise FloatingPointError(
                f"epoch {epoch + 1}: the training loss is {running_loss}; lower train.learning_rate or check the data"
            )
        accuracy = evaluate_accuracy(network, test_loader, device) if test_loader is not None else None
        history.append({
            "epoch": epoch + 1,
            "train_loss": running_loss / max(seen, 1),
            "eval_accuracy": accuracy,
            "learning_rate": scheduler.get_last_lr()[0],  # for the next step: the epoch's end
            "seconds": time.time() - started,
        })
        weights = {key: value.detach().cpu() for key, value in network.state_dict().items()}
        if config.keep_epoch_checkpoints is None or epoch + 1 > config.epochs - config.keep_epoch_checkpoints:
            _save(weights, output_dir / checkpoint_name(epoch + 1))
        _save(weights, output_dir / "last.ckpt")
        if accuracy is None or accuracy >= best_accuracy:  # ties go to the later epoch (OpenOOD's recorder)
            best_accuracy, best_epoch = (accuracy if accuracy is not None else -math.inf), epoch + 1
            _save(weights, output_dir / "best.ckpt")
        write_json(output_dir / "history.json", {
            "history": history, "best_epoch": best_epoch,
            "best_accuracy": None if best_accuracy == -math.inf else best_accuracy,
            "epochs_done": epoch + 1, "epochs": config.epochs,
        })
        _save(  # the commit point: written last, so a run killed before it redoes this epoch
            {
                "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(loader_generator, mixup_generator),
                "epoch": epoch + 1, "best_accuracy": best_accuracy, "best_epoch": best_epoch,
                "history": history, "recipe": {**config.recipe(), **sizes},
            },
            resume_path,
        )
        shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
        epochs_bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", acc=shown)
        log.info("epoch %d/%d: train loss %.4f, eval accuracy %s, lr %.3g, %.1f s", epoch + 1, config.epochs,
                 history[-1]["train_loss"], shown, history[-1]["learning_rate"], history[-1]["seconds"])
    epochs_bar.close()
    return output_dir / "last.ckpt"


def load_history(output_dir: str | Path) -> list[dict]:
    """The per-epoch history a :func:`train` run wrote (``epoch, train_loss, eval_accuracy, learning_rate``)."""
    return json.loads((Path(output_dir) / "history.json").read_text())["history"]

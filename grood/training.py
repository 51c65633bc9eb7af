"""The paper's training recipe (section 6) for the checkpoint studies (Tables 5 and 7).

ResNet-18 (32x32 for CIFAR, 224 for ImageNet-200), SGD with momentum 0.9 and weight decay 5e-4, cosine
learning rate from 0.1, 100 epochs, batch 128 (CIFAR) / 256 (ImageNet-200), standard augmentation.
Optional manifold mixup (Verma et al. 2019) for Table 7.

Every epoch writes ``epoch_<NNN>.ckpt`` (a plain state dict: OpenOOD's checkpoint format) and
``last.ckpt``/``best.ckpt``, plus ``resume.pt`` (optimizer, scheduler, scaler, RNG state) from which an
interrupted run continues. All writes are atomic.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from grood.device import resolve_device
from grood.io import atomic_write, write_json

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the paper's CIFAR recipe)."""

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 0.1
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
    progress: bool = True
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def manifold_mixup_loss(
    network: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Manifold mixup (Verma et al. 2019) on a split network.

    A mixing layer is drawn uniformly from {input, after ``early``}; hidden states of the batch and of a
    random permutation of it are mixed with ``λ ~ Beta(α, α)``, and the loss is the same convex
    combination of the two cross-entropies.
    """
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator))).beta(alpha, alpha))
    permutation = torch.randperm(images.shape[0], generator=generator).to(images.device)
    if torch.randint(0, 2, (1,), generator=generator).item() == 0:
        mixed = lam * images + (1 - lam) * images[permutation]
        logits = network.head(network.mid(network.early(mixed)))
    else:
        h_early = network.early(images)
        mixed = lam * h_early + (1 - lam) * h_early[permutation]
        logits = network.head(network.mid(mixed))
    return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[permutation])


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


def _save_state_dict(state: dict, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def train(
    network: torch.nn.Module,
    train_set: Dataset,
    test_set: Dataset | None,
    output_dir: str | Path,
    config: TrainConfig,
) -> Path:
    """Train ``network`` with the paper's recipe; resume from ``output_dir/resume.pt`` if present.

    Returns the path of ``last.ckpt``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(None if config.device == "auto" else config.device)
    seed_everything(config.seed)
    network = network.to(device)
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
        generator=generator, drop_last=False, pin_memory=device.type == "cuda",
    )
    batches_per_epoch = len(train_loader)
    if config.max_batches_per_epoch is not None:
        batches_per_epoch = min(batches_per_epoch, config.max_batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * batches_per_epoch)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    test_loader = (
        DataLoader(test_set, batch_size=config.batch_size, num_workers=config.num_workers) if test_set else None
    )

    start_epoch, best_accuracy, history = 0, -1.0, []
    resume_path = output_dir / "resume.pt"
    if resume_path.exists():
        state = torch.load(resume_path, map_location=device, weights_only=False)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_accuracy, history = state["epoch"], state["best_accuracy"], state["history"]
        log.info("resuming from %s at epoch %d", resume_path, start_epoch + 1)
    write_json(output_dir / "train_config.json", asdict(config))

    for epoch in range(start_epoch, config.epochs):
        network.train()
        running_loss, seen = 0.0, 0
        bar = tqdm(train_loader, total=batches_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress, leave=False)
        for batch_index, (images, labels) in enumerate(bar):
            if batch_index >= batches_per_epoch:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                if config.manifold_mixup:
                    loss = manifold_mixup_loss(network, images, labels, config.mixup_alpha, generator)
                else:
                    loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running_loss += loss.item() * labels.shape[0]
            seen += labels.shape[0]
            bar.set_postfix(loss=f"{running_loss / seen:.3f}")
        accuracy = evaluate_accuracy(network, test_loader, device) if test_loader else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": running_loss / max(seen, 1), "test_accuracy": accuracy})
        state_dict = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        _save_state_dict(state_dict, output_dir / f"epoch_{epoch + 1:03d}.ckpt")
        _save_state_dict(state_dict, output_dir / "last.ckpt")
        if accuracy > best_accuracy or best_accuracy < 0:
            best_accuracy = accuracy
            _save_state_dict(state_dict, output_dir / "best.ckpt")
        _save_state_dict(
            {
                "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1, "best_accuracy": best_accuracy, "history": history,
            },
            resume_path,
        )
        write_json(output_dir / "history.json", {"history": history})
        log.info("epoch %d: loss %.4f, test accuracy %.4f", epoch + 1, history[-1]["train_loss"], accuracy)
    return output_dir / "last.ckpt"


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], large_scale: bool):
    """Training transform for RGB PIL images (the datasets convert to RGB). Standard augmentation: random crop (padding 4) + flip for 32x32; random resized crop + flip for 224."""
    from torchvision import transforms

    if large_scale:
        crop = transforms.RandomResizedCrop(size)
    else:
        crop = transforms.RandomCrop(size, padding=4)
    return transforms.Compose(
        [
            crop,
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def load_history(output_dir: str | Path) -> list[dict]:
    """The per-epoch history a :func:`train` run wrote."""
    return json.loads((Path(output_dir) / "history.json").read_text())["history"]

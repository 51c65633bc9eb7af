"""GROOD's OOD-prototype strategies (paper section 5.2, appendix A.2, Table 1).

Each strategy produces a set of candidate penultimate features ``X_ood`` ``[M, D]``; the prototype is
their mean (eq. 8), optionally after the proximity filter of section 5.2. Strategies that need the
network (synthetic mixup, uniform noise, corrupted ID images) run it here; the others read cached
features.

Strategy names (``build_ood_prototype(strategy=...)``):

- ``mixup`` (default, eq. 9): ``h = f_mid(λ f_early(x) + (1-λ) p_early[c2])`` for ID training images,
  with ``c2`` the 2nd-highest predicted class and ``λ = 0.5``.
- ``uniform``: uniform-noise images; keep those with the lowest energy score.
- ``val_ood``: ~100 images of an auxiliary OOD validation list (e.g. ``val_tin``).
- ``corrupted``: ~100 ID validation images corrupted in code (noise, blur, contrast, ...).
- ``mean``: the mean of the class prototypes (no OOD data at all).
- ``local_oracle`` / ``global_oracle`` (Table 1): 100 images of the OOD test set itself / 100 images of
  each of the *other* OOD test sets. These are handled by the evaluation, which must also hold the
  oracle images out of the scored set.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from grood.device import resolve_device
from grood.method.prototypes import mean_of_class_prototypes, ood_prototype, proximity_filter
from grood.progress import track
from grood.resources import loader_workers

STRATEGIES = ("mixup", "uniform", "val_ood", "corrupted", "mean", "local_oracle", "global_oracle")


def stratified_sample(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``count`` rows drawn evenly across the classes in ``labels``.

    Image lists are usually sorted by class, so "the first ``count``" would be one class only.
    ``count=None`` or ``count >= len(labels)`` returns all indices in order.

    Args:
        labels: ``[N]`` class index per row.
    Returns:
        ``[min(count, N)]`` int64 indices, sorted.
    """
    n = labels.shape[0]
    if count is None or count >= n:
        return torch.arange(n)
    if count <= 0:
        raise ValueError(f"sample size must be positive; got {count}")
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [(labels == c).nonzero().flatten() for c in classes]
    per_class = [rows[torch.randperm(rows.numel(), generator=generator)] for rows in per_class]
    base, extra = divmod(count, len(classes))
    extra_classes = set(torch.randperm(len(classes), generator=generator)[:extra].tolist())
    chosen: list[torch.Tensor] = []
    leftovers: list[torch.Tensor] = []
    for position, rows in enumerate(per_class):
        want = base + (1 if position in extra_classes else 0)
        chosen.append(rows[:want])
        leftovers.append(rows[want:])
    picked = torch.cat(chosen)
    if picked.numel() < count:  # some classes had fewer rows than their share: top up at random
        pool = torch.cat(leftovers)
        pool = pool[torch.randperm(pool.numel(), generator=generator)]
        picked = torch.cat([picked, pool[: count - picked.numel()]])
    return picked.sort().values


def second_predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """``[N, C] -> [N]`` the class with the 2nd-highest logit (``c2`` of eq. 9)."""
    if logits.shape[1] < 2:
        raise ValueError("the mixup prototype needs at least 2 classes")
    return logits.topk(2, dim=1).indices[:, 1]


@torch.no_grad()
def mixup_features(
    network: torch.nn.Module,
    train_dataset: Dataset,
    train_logits: torch.Tensor,
    early_prototypes: torch.Tensor,
    *,
    mixup_lambda: float = 0.5,
    num_images: int | None = None,
    train_labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Synthetic OOD features of eq. 9: ``f_mid(λ f_early(x) + (1-λ) p_early[c2(x)])``.

    Args:
        train_dataset: the ID training images, in the order of ``train_logits``.
        train_logits: ``[N, C]`` the network's logits on ``train_dataset`` (from the cache).
        early_prototypes: ``[C, *S]`` early-layer class prototypes (eq. 7).
        num_images: how many training images to mix (default all); a smaller number is a seeded
            sample drawn evenly across classes (by ``train_labels``, else by predicted class).
    Returns:
        ``[M, D]`` penultimate features of the synthetic samples.
    """
    if not 0.0 <= mixup_lambda <= 1.0:
        raise ValueError(f"mixup_lambda must lie in [0, 1]; got {mixup_lambda}")
    if len(train_dataset) != train_logits.shape[0]:
        raise ValueError(
            f"train_dataset has {len(train_dataset)} images but train_logits has {train_logits.shape[0]} rows"
        )
    device = resolve_device(device)
    network = network.to(device).eval()
    strata = train_labels if train_labels is not None else train_logits.argmax(1)
    rows = stratified_sample(strata, num_images, seed)
    second = second_predicted_class(train_logits)[rows]
    prototypes = early_prototypes.to(device)
    loader = DataLoader(Subset(train_dataset, rows.tolist()), batch_size=batch_size, num_workers=loader_workers(num_workers))
    outputs, start = [], 0
    for images, _ in track(loader, "mixup prototype", progress):
        images = images.to(device)
        c2 = second[start : start + images.shape[0]].to(device)
        start += images.shape[0]
        h_early = network.early(images)
        mixed = mixup_lambda * h_early + (1.0 - mixup_lambda) * prototypes[c2].to(h_early.dtype)
        outputs.append(network.mid(mixed).float().cpu())
    return torch.cat(outputs)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[N, C] -> [N]`` energy score ``T·logsumexp(logits / T)`` (higher = more ID)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


@torch.no_grad()
def uniform_noise_features(
    network: torch.nn.Module,
    *,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int = 1000,
    keep: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Appendix A.2 "Uniform": uniform-noise images, keep the ``keep`` with the lowest energy score.

    Pixels are drawn uniformly in ``[0, 1]`` per channel, then normalised with ``mean``/``std`` like
    real images. Returns ``[keep, D]`` penultimate features of the kept images.
    """
    if keep > num_images:
        raise ValueError(f"keep={keep} exceeds num_images={num_images}")
    device = resolve_device(device)
    network = network.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    energies, features = [], []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        noise = torch.rand((count, *image_shape), generator=generator)
        images = ((noise - mean_t) / std_t).to(device)
        h_pen = network.mid(network.early(images))
        energies.append(energy_score(network.head(h_pen)).float().cpu())
        features.append(h_pen.float().cpu())
    energy = torch.cat(energies)
    lowest = energy.argsort()[:keep]
    return torch.cat(features)[lowest]


def _gaussian_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images + 0.08 * torch.randn(images.shape, generator=generator)


def _gaussian_blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = 1.0
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    channels = images.shape[1]
    horizontal = kernel_1d.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel_1d.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = torch.nn.functional.pad(images, (radius, radius, 0, 0), mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, horizontal, groups=channels)
    padded = torch.nn.functional.pad(blurred, (0, 0, radius, radius), mode="reflect")
    return torch.nn.functional.conv2d(padded, vertical, groups=channels)


def _contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    means = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - means) * 0.3 + means


def _shot_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    rate = 60.0
    return torch.poisson(images.clamp(0, 1) * rate, generator=generator) / rate


def _pixelate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    small = torch.nn.functional.interpolate(images, size=(max(1, height // 4), max(1, width // 4)), mode="area")
    return torch.nn.functional.interpolate(small, size=(height, width), mode="nearest")


#: Corruptions applied to images in ``[0, 1]`` (before normalisation), in the spirit of CIFAR-10-C.
CORRUPTIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "shot_noise": _shot_noise,
    "pixelate": _pixelate,
}


def corrupt_images(
    images: torch.Tensor, corruption: str, mean: Sequence[float], std: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """Corrupt normalised images ``[B, 3, H, W]``: un-normalise, corrupt in ``[0, 1]``, clamp, re-normalise."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; valid: {sorted(CORRUPTIONS)}")
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    raw = images * std_t + mean_t
    corrupted = CORRUPTIONS[corruption](raw, generator).clamp(0.0, 1.0)
    return (corrupted - mean_t) / std_t


@torch.no_grad()
def corrupted_id_features(
    network: torch.nn.Module,
    id_dataset: Dataset,
    id_labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int = 100,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Appendix A.2 "ID-Corrupted Val": ``num_images`` ID validation images, each with one corruption.

    Images are drawn evenly across classes (seeded) and corruptions are assigned round-robin.
    Returns ``[num_images, D]`` penultimate features.
    """
    device = resolve_device(device)
    network = network.to(device).eval()
    rows = stratified_sample(id_labels, num_images, seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(Subset(id_dataset, rows.tolist()), batch_size=batch_size)
    features, position = [], 0
    for images, _ in loader:
        corrupted = []
        for image in images:
            name = corruptions[position % len(corruptions)]
            corrupted.append(corrupt_images(image.unsqueeze(0), name, mean, std, generator))
            position += 1
        batch = torch.cat(corrupted).to(device)
        features.append(network.mid(network.early(batch)).float().cpu())
    return torch.cat(features)


def finish_prototype(
    candidates: torch.Tensor,
    class_prototypes: torch.Tensor,
    *,
    filter_quantile: float | None = None,
    min_keep: int = 1,
) -> torch.Tensor:
    """Eq. 8 on ``candidates [M, D]``, after the section-5.2 proximity filter when ``filter_quantile`` is set.

    Returns the OOD prototype ``[D]``.
    """
    if not torch.isfinite(candidates).all():
        bad = (~torch.isfinite(candidates)).any(dim=1).sum().item()
        raise ValueError(f"{bad} OOD candidate feature row(s) contain NaN or inf")
    if filter_quantile is not None:
        candidates = proximity_filter(candidates, class_prototypes, filter_quantile, min_keep)
    return ood_prototype(candidates)


def mean_prototype(class_prototypes: torch.Tensor) -> torch.Tensor:
    """The "Mean of Prototypes" strategy: ``[C, D] -> [D]``."""
    return mean_of_class_prototypes(class_prototypes)


def oracle_split(count: int, num_oracle: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``count`` OOD test rows into (oracle rows ``[min(num_oracle, count)]``, scored rows)."""
    if count <= num_oracle:
        raise ValueError(
            f"an oracle prototype needs more than {num_oracle} OOD test images to leave some for scoring; got {count}"
        )
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return permutation[:num_oracle].sort().values, permutation[num_oracle:].sort().values


"""Image corruptions for appendix A.2's "ID-Corrupted Val" OOD prototype (``source="synthetic"``), on tensors.

Each corruption maps images in ``[0, 1]`` (``[B, 3, H, W]``) to corrupted images, in the spirit of
CIFAR-10-C; :func:`corrupt_images` applies one to normalised images (un-normalise, corrupt, clamp,
re-normalise). The network pass over the corrupted images is :func:`grood.prototype_inputs.corrupted_id_features`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


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

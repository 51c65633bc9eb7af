"""Test-time image transforms of OpenOOD v1.5, one preset per ID dataset.

OpenOOD v1.5 evaluates every ID benchmark with the same pipeline (``openood/evaluation_api/preprocessor.py``,
``TestStandardPreProcessor`` and ``default_preprocessing_dict``)::

    convert to RGB -> Resize(size, bilinear) -> CenterCrop(crop_size) -> ToTensor -> Normalize(mean, std)

(here the last two are one step, :class:`ToNormalisedTensor`, with the same result to the bit).

``Resize(size)`` with an int scales the *shorter* side to ``size`` (aspect ratio kept). The output is a
float tensor ``[3, crop_size, crop_size]``.

A *spec* is a plain dict ``{size, crop_size, mean, std, interpolation}``; ``test_transform`` accepts a preset
name, a complete spec, or a partial spec with ``preset`` as its base (e.g. the smoke benchmark's ResNet-20:
``{"preset": "cifar10", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from grood.data.imagemodes import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: OpenOOD v1.5 ``default_preprocessing_dict`` (pre_size -> size, img_size -> crop_size) with its
#: module-level ``INTERPOLATION = BILINEAR``. ``imagenet_swin_t`` is torchvision's
#: ``Swin_T_Weights.IMAGENET1K_V1.transforms()``, which OpenOOD's ``scripts/eval_ood_imagenet.py`` uses for
#: Swin-T (ResNet-50 and ViT-B-16 weights use 256/224 bilinear, i.e. the ``imagenet`` preset).
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "size": 32, "crop_size": 32,
        "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
        "interpolation": "bilinear",
    },
    "cifar100": {
        "size": 32, "crop_size": 32,
        "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761),
        "interpolation": "bilinear",
    },
    "imagenet200": {
        "size": 256, "crop_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear",
    },
    "imagenet": {
        "size": 256, "crop_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear",
    },
    "imagenet_swin_t": {
        "size": 232, "crop_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic",
    },
}

SPEC_KEYS = ("size", "crop_size", "mean", "std", "interpolation")

INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


class ToRGB:
    """Convert a PIL image to 3-channel RGB (grey MNIST digits become 3 equal channels; 16-bit images are
    scaled by value, other modes as :mod:`grood.data.imagemodes` says)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else to_rgb(image)

    def __repr__(self) -> str:  # stable: the transform's repr is part of feature-cache keys
        return "ToRGB()"


class ToNormalisedTensor:
    """An RGB PIL image -> float32 tensor ``[3, H, W]``, ``(pixel / 255 - mean) / std`` per channel.

    The same float32 operations, in the same order, as torchvision's ``ToTensor()`` followed by
    ``Normalize(mean, std)`` (``tests/test_data.py`` checks equality to the bit), in one step: the two
    steps cost about 2.5x as much per image, mostly in per-call overhead, which on a small network is a
    large part of the forward pass (``scripts/bench_eval.py``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            raise ValueError(f"ToNormalisedTensor takes RGB images (put ToRGB() before it); got mode {image.mode!r}")
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # [3, H, W] uint8
        return pixels.to(torch.float32).div_(255).sub_(self._mean).div_(self._std)

    def __repr__(self) -> str:  # stable: the transform's repr is part of feature-cache keys
        return f"ToNormalisedTensor(mean={list(self.mean)}, std={list(self.std)})"


def resolve_spec(preset_or_spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The complete, validated spec ``{size, crop_size, mean, std, interpolation}``.

    ``preset_or_spec``: a preset name (see :data:`PRESETS`), or a mapping with every key of
    :data:`SPEC_KEYS`, or a mapping with ``preset`` plus any keys to override. ``None`` values are ignored.
    """
    if isinstance(preset_or_spec, str):
        return resolve_spec({"preset": preset_or_spec})
    if not isinstance(preset_or_spec, Mapping):
        raise TypeError(f"transform spec must be a preset name or a mapping; got {type(preset_or_spec).__name__}")
    given = {k: v for k, v in preset_or_spec.items() if v is not None}
    unknown = sorted(set(given) - set(SPEC_KEYS) - {"preset"})
    if unknown:
        raise ValueError(f"unknown transform key(s) {unknown}; valid keys: ['preset', {', '.join(map(repr, SPEC_KEYS))}]")
    spec: dict[str, Any] = {}
    if "preset" in given:
        preset = str(given.pop("preset"))
        if preset not in PRESETS:
            raise ValueError(f"unknown transform preset {preset!r}; valid presets: {sorted(PRESETS)}")
        spec.update(PRESETS[preset])
    spec.update(given)
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(
            f"transform spec lacks {missing}; give them or name a base with 'preset' (one of {sorted(PRESETS)})"
        )
    for key in ("size", "crop_size"):
        if isinstance(spec[key], bool) or not isinstance(spec[key], int) or spec[key] <= 0:
            raise ValueError(f"transform key {key!r} must be a positive int; got {spec[key]!r}")
    if spec["crop_size"] > spec["size"]:
        raise ValueError(
            f"transform crop_size={spec['crop_size']} exceeds size={spec['size']} (the resized shorter side); "
            "CenterCrop would pad the image"
        )
    for key in ("mean", "std"):
        values = spec[key]
        if isinstance(values, (str, bytes)) or len(values) != 3:
            raise ValueError(f"transform key {key!r} must hold 3 numbers (R, G, B); got {values!r}")
        spec[key] = tuple(float(v) for v in values)
    if any(v <= 0 for v in spec["std"]):
        raise ValueError(f"transform key 'std' must be positive; got {spec['std']}")
    if spec["interpolation"] not in INTERPOLATIONS:
        raise ValueError(
            f"transform key 'interpolation' must be one of {sorted(INTERPOLATIONS)}; got {spec['interpolation']!r}"
        )
    return {k: spec[k] for k in SPEC_KEYS}


def test_transform(preset_or_spec: str | Mapping[str, Any]) -> T.Compose:
    """OpenOOD v1.5's test transform: PIL image -> float tensor ``[3, crop_size, crop_size]``, normalised.

    The returned ``Compose`` carries the resolved spec as ``.spec``; its ``repr`` is stable across runs.
    """
    spec = resolve_spec(preset_or_spec)
    transform = T.Compose([
        ToRGB(),
        T.Resize(spec["size"], interpolation=INTERPOLATIONS[spec["interpolation"]]),
        T.CenterCrop(spec["crop_size"]),
        ToNormalisedTensor(spec["mean"], spec["std"]),
    ])
    transform.spec = spec  # type: ignore[attr-defined]
    return transform


test_transform.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one

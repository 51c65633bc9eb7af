"""``build_backbone(name, ...)``: every network grood runs, by the name the configs use."""

from __future__ import annotations

import logging
import os
from typing import Callable

from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import load_checkpoint
from grood.backbones.cifar_resnet import ResNet20, ResNet32, ResNet44, ResNet56
from grood.backbones.resnet18_32x32 import ResNet18_32x32
from grood.backbones.torchvision_nets import ResNet18_224x224, ResNet50, SwinT, ViTB16, WeightsSpec

log = logging.getLogger(__name__)

# name -> (class, default number of classes); the torchvision-based classes also take ``weights``.
BACKBONES: dict[str, tuple[Callable[..., SplitNetwork], int]] = {
    "resnet18_32x32": (ResNet18_32x32, 10),
    "resnet18_224x224": (ResNet18_224x224, 200),
    "resnet50": (ResNet50, 1000),
    "vit_b_16": (ViTB16, 1000),
    "swin_t": (SwinT, 1000),
    "resnet20": (ResNet20, 10),
    "resnet32": (ResNet32, 10),
    "resnet44": (ResNet44, 10),
    "resnet56": (ResNet56, 10),
}
TORCHVISION_BACKBONES = ("resnet18_224x224", "resnet50", "vit_b_16", "swin_t")


def backbone_names() -> list[str]:
    """The names :func:`build_backbone` accepts."""
    return list(BACKBONES)


def build_backbone(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    split_block: int | None = None,
    weights: WeightsSpec = None,
) -> SplitNetwork:
    """The network ``name`` with ``num_classes`` outputs, split after ``split_block`` blocks.

    Args:
        name: one of :func:`backbone_names`.
        num_classes: ``C``; None = the network's usual count (10 for CIFAR nets, 200 for
            ``resnet18_224x224``, 1000 for the ImageNet nets).
        checkpoint: a state-dict file loaded with ``strict=True`` (see
            :func:`grood.backbones.checkpoints.load_checkpoint`); when given, ``weights`` is not used.
        split_block: the split point ``k`` (None = the network's default, after the first block); see
            :mod:`grood.backbones.base` for the convention.
        weights: torchvision nets only: a torchvision weight name (``"IMAGENET1K_V1"``), downloaded when
            online, or a local file path; None = random init.

    Returns:
        The network in training mode (``nn.Module``'s default): call ``.eval()`` before extracting features.

    Raises:
        ValueError: unknown name, bad ``num_classes``/``split_block``/``weights``.
        FileNotFoundError: ``checkpoint`` missing. CheckpointMismatchError: ``checkpoint`` does not fit.
        RuntimeError: torchvision weights cannot be downloaded (says where to put the file).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    cls, default_classes = BACKBONES[name]
    if num_classes is None:
        num_classes = default_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r} for backbone {name!r}")
    if weights is not None and checkpoint is not None:
        log.warning("backbone %s: checkpoint %s given, so weights=%s are not loaded", name, checkpoint, weights)
        weights = None
    if name in TORCHVISION_BACKBONES:
        network = cls(num_classes=num_classes, split_block=split_block, weights=weights)
    elif weights is not None:
        raise ValueError(
            f"backbone {name!r} has no torchvision weights (weights={weights!r}); give its checkpoint file as "
            "checkpoint= (config key dataset.checkpoint) and weights=None"
        )
    else:
        network = cls(num_classes=num_classes, split_block=split_block)
    if checkpoint is not None:
        load_checkpoint(network, checkpoint, strict=True)
    return network

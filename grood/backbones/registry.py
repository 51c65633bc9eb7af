"""``build_backbone(name, ...)``: every network grood runs, by the name the configs use.

Besides the shipped networks (:data:`BACKBONES`), ``name="module"`` builds any importable factory
(``target="torchvision.models.resnet50"``, called with ``kwargs``), loads the checkpoint into it and splits it
by layer name with :func:`grood.wrap` (config: ``backbone=module backbone.target=... backbone.early_layer=...``).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, Mapping

from torch import nn

from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import load_checkpoint
from grood.backbones.cifar_resnet import ResNet20, ResNet32, ResNet44, ResNet56
from grood.backbones.resnet18_32x32 import ResNet18_32x32
from grood.backbones.torchvision_nets import ResNet18_224x224, ResNet50, SwinT, ViTB16, WeightsSpec
from grood.backbones.wrap import wrap

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
#: The backbone name of "any importable network, split by layer name" (:func:`build_module_backbone`).
MODULE_BACKBONE = "module"


def backbone_names() -> list[str]:
    """The names :func:`build_backbone` accepts."""
    return [*BACKBONES, MODULE_BACKBONE]


def import_factory(target: str) -> Callable[..., Any]:
    """The callable named by ``target`` (``"package.module.attribute"``, e.g. ``"torchvision.models.resnet50"``)."""
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"backbone.target={target!r}: give an importable dotted name such as "
                         "'torchvision.models.resnet50' (module path, then the factory or class)")
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"backbone.target={target!r}: cannot import module {module_name!r} ({error}); "
                         "check the spelling and that the package is installed") from error
    except Exception as error:  # the module's own code failed while importing  # noqa: BLE001
        raise ValueError(f"backbone.target={target!r}: importing module {module_name!r} raised "
                         f"{type(error).__name__}: {error}; fix that module (or the environment it needs)") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"backbone.target={target!r}: module {module_name!r} has no callable {attribute!r}")
    return factory


def build_module_backbone(
    target: str,
    early_layer: str,
    feature_layer: str | None,
    head_layer: str,
    kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> SplitNetwork:
    """``target(**kwargs)``, its ``checkpoint`` loaded (``strict=True``, the model's own keys), split by layer
    name (:func:`grood.wrap`). The split is checked by tracing the forward (no data runs through it), so a
    bad layer name fails here, listing the names the model can be split at.

    Raises:
        ValueError: ``target`` not importable, raising (any exception, named with the target) or not returning an
            ``nn.Module``, its ``kwargs`` refused, a
            layer name that does not split it (:class:`~grood.backbones.wrap.SplitError` lists the valid
            names), or ``head_layer`` a Linear whose outputs are not ``num_classes``.
        FileNotFoundError / CheckpointMismatchError: the checkpoint is missing or does not fit.
    """
    factory = import_factory(target)
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as error:  # a factory may raise anything: say which call failed  # noqa: BLE001
        raise ValueError(f"backbone.target={target!r} called with backbone.kwargs={dict(kwargs or {})!r} raised "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"backbone.target={target!r} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=True)
    for key, value in (("early_layer", early_layer), ("head_layer", head_layer)):
        if not value:
            raise ValueError(f"backbone=module needs backbone.{key} (a submodule name of {type(model).__name__})")
    network = wrap(model.eval(), early_layer=early_layer, feature_layer=feature_layer, head_layer=head_layer)
    head = model.get_submodule(head_layer)
    if num_classes is not None and isinstance(head, nn.Linear) and head.out_features != int(num_classes):
        raise ValueError(
            f"backbone.head_layer={head_layer!r} of {target} has {head.out_features} outputs but the benchmark has "
            f"{num_classes} classes; set the factory's class count, e.g. backbone.kwargs.num_classes={num_classes}"
        )
    return network.train()


def build_backbone(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    split_block: int | None = None,
    weights: WeightsSpec = None,
    *,
    target: str | None = None,
    early_layer: str | None = None,
    feature_layer: str | None = None,
    head_layer: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> SplitNetwork:
    """The network ``name`` with ``num_classes`` outputs, split after ``split_block`` blocks.

    ``name="module"``: :func:`build_module_backbone` of ``target``, ``kwargs`` and the layer names (which
    only it reads); its split is ``early_layer``, so ``split_block`` and ``weights`` must be None (give
    torchvision weights as ``kwargs={"weights": ...}``).

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
    module_fields = {"target": target, "early_layer": early_layer, "feature_layer": feature_layer,
                     "head_layer": head_layer, "kwargs": kwargs or None}
    if name == MODULE_BACKBONE:
        for key, value in (("split_block", split_block), ("weights", weights)):
            if value is not None:
                raise ValueError(f"backbone=module: backbone.{key}={value!r} is not read (the split is "
                                 "backbone.early_layer; weights go in backbone.kwargs); leave it null")
        if not target:
            raise ValueError("backbone=module needs backbone.target, e.g. torchvision.models.resnet50")
        return build_module_backbone(target, early_layer, feature_layer, head_layer, kwargs=kwargs,
                                     checkpoint=checkpoint, num_classes=num_classes)
    given = sorted(key for key, value in module_fields.items() if value is not None)
    if given:
        raise ValueError(f"backbone {name!r}: {', '.join('backbone.' + key for key in given)} are read only by "
                         "backbone=module; leave them unset")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}")
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

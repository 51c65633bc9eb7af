"""torchvision networks as :class:`SplitNetwork`: ResNet-18 (OpenOOD's ImageNet-200 ``ResNet18_224x224``),
ResNet-50, ViT-B-16 and Swin-T.

Each wrapper registers the torchvision model's own submodules under their torchvision names, so its
state dict has exactly torchvision's keys: torchvision weight files, OpenOOD v1.5's ImageNet-200
ResNet-18 checkpoints (OpenOOD's ``ResNet18_224x224`` subclasses torchvision's ``ResNet``) and OpenOOD's
ViT/Swin wrappers all load with ``strict=True``.

Weights (``weights=``): None (random init), a torchvision weight name of the architecture's enum
(``"IMAGENET1K_V1"``, ``"DEFAULT"``, ``"ResNet50_Weights.IMAGENET1K_V2"``, or the enum member itself),
downloaded by torch.hub into ``$TORCH_HOME/hub/checkpoints`` when not there yet, or a path to a local
state-dict file with torchvision's keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import load_checkpoint

WeightsSpec = str | os.PathLike | WeightsEnum | None


def _weights_enum(arch: str) -> type[WeightsEnum]:
    return torchvision.models.get_model_weights(arch)


def resolve_weights(arch: str, weights: WeightsSpec) -> WeightsEnum | Path | None:
    """``weights`` as a torchvision enum member, a local file path, or None (random init).

    Raises:
        ValueError: ``weights`` is neither a weight name of ``arch``'s enum nor an existing file.
    """
    if weights is None:
        return None
    enum_cls = _weights_enum(arch)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(f"weights {weights!r} are not {arch}'s ({enum_cls.__name__})")
        return weights
    text = str(weights)
    name = text.removeprefix(f"{enum_cls.__name__}.")
    if name in enum_cls.__members__:
        return enum_cls[name]
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise ValueError(
        f"weights={text!r} for {arch} is neither one of torchvision's {enum_cls.__name__} "
        f"({', '.join(enum_cls.__members__)}) nor an existing file"
    )


def _cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def build_torchvision_model(arch: str, num_classes: int, weights: WeightsSpec = None) -> nn.Module:
    """``torchvision.models.get_model(arch)`` with ``num_classes`` outputs and the given weights.

    Raises:
        ValueError: unknown weights, or enum weights whose class count differs from ``num_classes``.
        RuntimeError: the weights cannot be downloaded (offline); says where to put the file.
        FileNotFoundError / CheckpointMismatchError: from loading a local weight file.
    """
    resolved = resolve_weights(arch, weights)
    if not isinstance(resolved, WeightsEnum):
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if resolved is not None:
            load_checkpoint(model, resolved)
        return model
    categories = len(resolved.meta["categories"])
    if num_classes != categories:
        raise ValueError(
            f"torchvision weights {resolved!r} have {categories} classes but num_classes={num_classes}; "
            f"use num_classes={categories}, or weights=None with a checkpoint of your own"
        )
    try:
        return torchvision.models.get_model(arch, weights=resolved)
    except OSError as error:  # urllib's URLError, socket errors: no connection
        raise RuntimeError(
            f"cannot download torchvision weights {resolved!r} from {resolved.url} ({error}). Offline? Copy "
            f"that file to {_cache_path(resolved.url)} (torch.hub's cache; $TORCH_HOME moves it), or set "
            f"weights to the path of a local copy"
        ) from error


def _model_or_build(arch: str, num_classes: int | None, default_num_classes: int, weights: WeightsSpec,
                    model: nn.Module | None) -> nn.Module:
    """``model`` when given (then ``weights`` must be None), else a fresh torchvision ``arch``."""
    if model is None:
        return build_torchvision_model(arch, default_num_classes if num_classes is None else num_classes, weights)
    if weights is not None:
        raise ValueError(f"give either an existing model or weights={weights!r} for {arch}, not both")
    return model


def _assign_modules(target: nn.Module, source: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        module = getattr(source, name)
        # ``target._modules`` directly: a name such as Swin's ``head`` is also a SplitNetwork method.
        target._modules[name] = module


class TorchvisionResNet(SplitNetwork):
    """A torchvision ResNet: stem = conv1/bn1/relu/maxpool, blocks = ``layer1..layer4``."""

    arch: ClassVar[str] = ""
    default_num_classes: ClassVar[int] = 1000
    block_names = ("stem", "layer1", "layer2", "layer3", "layer4")
    _module_names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")

    def __init__(self, num_classes: int | None = None, split_block: int | None = None,
                 weights: WeightsSpec = None, model: nn.Module | None = None) -> None:
        """``model``: an existing torchvision ResNet to wrap (its modules are shared, not copied; then
        ``num_classes`` is the model's own and ``weights`` must be None)."""
        super().__init__()
        model = _model_or_build(self.arch, num_classes, self.default_num_classes, weights, model)
        _assign_modules(self, model, self._module_names)
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer{index + 1}")(h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(h), 1)


class ResNet18_224x224(TorchvisionResNet):
    """OpenOOD v1.5's ImageNet-200 ResNet-18 (torchvision's ResNet-18): ``h_early`` after ``layer1`` is
    ``[B, 64, 56, 56]`` for 224x224 inputs, ``D = 512``."""

    arch = "resnet18"
    default_num_classes = 200


class ResNet50(TorchvisionResNet):
    """torchvision's ResNet-50: ``h_early`` after ``layer1`` is ``[B, 256, 56, 56]``, ``D = 2048``."""

    arch = "resnet50"
    default_num_classes = 1000


class ViTB16(SplitNetwork):
    """torchvision's ViT-B/16: stem = patch projection + class token + positional embedding (+ dropout),
    blocks = the 12 encoder blocks, pooling = final LayerNorm and the class token.

    ``h_early`` after the first block is ``[B, 197, 768]`` tokens (class token first) for 224x224 inputs;
    ``D = 768``. Inputs must be ``image_size`` square (224, or 384 for the SWAG end-to-end weights).
    """

    arch: ClassVar[str] = "vit_b_16"
    default_num_classes: ClassVar[int] = 1000
    block_names = ("embedding",) + tuple(f"encoder_layer_{i}" for i in range(12))

    def __init__(self, num_classes: int | None = None, split_block: int | None = None,
                 weights: WeightsSpec = None, model: nn.Module | None = None) -> None:
        super().__init__()
        model = _model_or_build(self.arch, num_classes, self.default_num_classes, weights, model)
        head_names = [name for name, _ in model.heads.named_children()]
        if len(model.encoder.layers) != self.num_blocks or head_names != ["head"]:
            raise ValueError(f"ViTB16 wraps a ViT-B/16 with 12 encoder layers and a single linear head; got "
                             f"{len(model.encoder.layers)} layers and heads {model.heads}")
        self.image_size: int = model.image_size
        self.patch_size: int = model.patch_size
        self.hidden_dim: int = model.hidden_dim
        self.class_token = model.class_token
        _assign_modules(self, model, ("conv_proj", "encoder", "heads"))
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self.heads.head

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"ViTB16 needs {self.image_size}x{self.image_size} inputs; got {h}x{w}")
        tokens = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)  # [B, P, E]
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)  # [B, 1 + P, E]
        return self.encoder.dropout(tokens + self.encoder.pos_embedding)

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return self.encoder.layers[index](h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.encoder.ln(h)[:, 0]


class SwinT(SplitNetwork):
    """torchvision's Swin-T: stem = patch embedding (``features[0]``), blocks = the 4 stages (stage
    ``i >= 2`` starts with its patch merging), pooling = norm, permute to ``[B, C, H, W]``, average pool,
    flatten. ``h_early`` after the first stage is ``[B, H/4, W/4, 96]`` (channels last); ``D = 768``.
    """

    arch: ClassVar[str] = "swin_t"
    default_num_classes: ClassVar[int] = 1000
    block_names = ("patch_embedding", "stage1", "stage2", "stage3", "stage4")

    def __init__(self, num_classes: int | None = None, split_block: int | None = None,
                 weights: WeightsSpec = None, model: nn.Module | None = None) -> None:
        super().__init__()
        model = _model_or_build(self.arch, num_classes, self.default_num_classes, weights, model)
        if len(model.features) != 2 * self.num_blocks:
            raise ValueError(f"SwinT wraps a 4-stage Swin (8 feature modules); got {len(model.features)}")
        _assign_modules(self, model, ("features", "norm", "permute", "avgpool", "flatten", "head"))
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self._modules["head"]  # the module named ``head`` (torchvision's key), not the method

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[0](x)

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        if index > 0:
            h = self.features[2 * index](h)  # patch merging before stages 2..4
        return self.features[2 * index + 1](h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.avgpool(self.permute(self.norm(h))))


"""CIFAR ResNet-20/32/44/56 (He et al. 2016, section 4.2) in the layout of akamaster/pytorch_resnet_cifar10.

``6n + 2`` layers: a 3x3 conv (16 channels) + BN + ReLU stem, three stages ``layer1..layer3`` of ``n``
basic blocks with 16/32/64 channels (strides 1/2/2), global average pooling and a linear layer named
``linear``. Shortcuts are "option A": identity, and where a block halves the resolution and doubles the
width, the input subsampled by 2 and zero-padded with ``planes // 4`` channels on each side -- no
parameters. ResNet-20 (``n = 3``) has 269,722 parameters.

Checkpoints of that repository are ``{'state_dict', 'best_prec1'}`` with a ``module.`` prefix on every key
(``grood.backbones.checkpoints.load_checkpoint`` strips it); their inputs are normalised with ImageNet's
mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grood.backbones.base import IMAGENET_MEAN, IMAGENET_STD, SplitNetwork


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded from ``C`` to ``C + 2 * pad`` channels."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), mode="constant", value=0.0)


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; identity shortcut, or :class:`PadShortcut` when stride or width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes != 2 * in_planes:
                raise ValueError(f"option-A shortcut needs stride 2 and doubled width; got {in_planes}->{planes}, "
                                 f"stride {stride}")
            self.shortcut: nn.Module = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(SplitNetwork):
    """CIFAR ResNet-(6n+2): ``h_early`` after ``layer1`` is ``[B, 16, 32, 32]``, ``D = 64``."""

    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD
    input_size = 32
    block_names = ("stem", "layer1", "layer2", "layer3")

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1; got {blocks_per_stage}")
        self.blocks_per_stage = blocks_per_stage
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            blocks = [CifarBasicBlock(in_planes, planes, stride)]
            blocks += [CifarBasicBlock(planes, planes, 1) for _ in range(blocks_per_stage - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_planes = planes
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self.linear

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer{index + 1}")(h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


class ResNet20(CifarResNet):
    def __init__(self, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__(3, num_classes=num_classes, split_block=split_block)


class ResNet32(CifarResNet):
    def __init__(self, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__(5, num_classes=num_classes, split_block=split_block)


class ResNet44(CifarResNet):
    def __init__(self, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__(7, num_classes=num_classes, split_block=split_block)


class ResNet56(CifarResNet):
    def __init__(self, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__(9, num_classes=num_classes, split_block=split_block)

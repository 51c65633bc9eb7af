"""OpenOOD v1.5's ResNet-18 for 32x32 inputs (CIFAR-10/100), with OpenOOD's state-dict keys.

Architecture (He et al. 2016, CIFAR variant as in OpenOOD ``openood/networks/resnet18_32x32.py``): a 3x3
stride-1 ``conv1`` + ``bn1`` + ReLU stem (no max-pool), four stages ``layer1..layer4`` of two
:class:`BasicBlock` each (64/128/256/512 channels, strides 1/2/2/2), global average pooling and ``fc``.
A block whose stride or width changes has a projection ``shortcut`` (1x1 conv + BN, keys
``shortcut.0``/``shortcut.1``); the others an empty ``shortcut``. OpenOOD's ``s0/best.ckpt`` files are
plain state dicts with exactly these keys and load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grood.backbones.base import SplitNetwork

# OpenOOD trains its CIFAR-10 ResNet-18 on inputs normalised with these (openood/preprocessors/transform.py).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual connection (projection ``shortcut`` when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18_32x32(SplitNetwork):
    """OpenOOD v1.5's CIFAR ResNet-18: ``h_early`` after ``layer1`` is ``[B, 64, 32, 32]``, ``D = 512``.

    ``input_mean``/``input_std`` are CIFAR-10's (OpenOOD's CIFAR-100 checkpoints expect CIFAR-100's own
    statistics; the data layer's benchmark presets hold both).
    """

    input_mean = CIFAR10_MEAN
    input_std = CIFAR10_STD
    input_size = 32
    block_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_classes: int = 10, split_block: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_planes = 64
        for index, (planes, stride) in enumerate(zip(widths, strides), start=1):
            stage = nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            self.add_module(f"layer{index}", stage)
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer{index + 1}")(h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(h), 1)

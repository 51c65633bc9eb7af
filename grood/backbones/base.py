"""One split interface for every network: ``f = f_clf ∘ f_mid ∘ f_early`` (paper eq. 1).

A :class:`SplitNetwork` is a classifier cut in three:

- ``early(x)``: ``[B, 3, H, W] -> h_early`` -- the stem and the first ``split_block`` blocks. ``h_early``
  keeps the network's own layout: ``[B, C', H', W']`` feature maps for ResNets, ``[B, 1 + P, E]`` tokens
  (class token first) for ViT, ``[B, H', W', C']`` channels-last maps for Swin.
- ``mid(h_early)``: ``h_early -> h_pen [B, D]`` -- the remaining blocks and the pooling, flattened: the
  penultimate features ``f^pen(x)`` every detector reads.
- ``head(h_pen)``: ``[B, D] -> logits [B, C]`` -- the final linear layer ``f^clf``.

so that ``forward(x) == head(mid(early(x)))``.

Split-point convention (``split_block``, an integer ``k``)
-----------------------------------------------------------
Every network is a *stem* followed by ``num_blocks`` *blocks*; ``early`` is the stem plus the first ``k``
blocks, ``mid`` the other ``num_blocks - k`` blocks plus the pooling. Valid values: ``0 .. num_blocks``.

- ResNets (OpenOOD ResNet-18, torchvision ResNet-18/50, CIFAR ResNet-20..56): stem = conv1/bn1/relu
  (+ maxpool for the 224x224 nets); blocks = the residual stages ``layer1``, ``layer2``, ... So ``k = 0`` is
  after the stem, ``k = 1`` after ``layer1`` (the default), ``k = 2`` after ``layer2``, ... ``k`` is the index
  into OpenOOD's ``forward(x, return_feature_list=True)`` list ``[stem, layer1, layer2, layer3, pooled
  layer4]`` for ``k <= 3``.
- ViT-B-16: stem = patch projection + class token + positional embedding; blocks = the 12 encoder blocks;
  default ``k = 1`` (tokens after the first encoder block).
- Swin-T: stem = patch embedding; blocks = the 4 stages (each stage after the first begins with its patch
  merging); default ``k = 1`` (after the first stage).

The default ``k = 1`` is the paper's "at an early layer (after the first block)" (section 5.2). For ResNets
this is the output of the first residual stage ``layer1``, as in the author's GROOD port inside OpenOOD
(``openood/postprocessors/grood.py``: the early maps are ``feature_list[pre_layer_indx]`` and its config
``configs/postprocessors/grood.yaml`` sweeps ``pre_layer_indx_list: [1]``, i.e. ``feature_list[1]`` =
the output of ``layer1``).

Modes and devices
-----------------
A network is built like any ``torch.nn.Module``, in training mode: callers put it in ``eval()`` mode
before extracting features (``grood.features`` and ``grood.method.strategies`` do). Nothing here calls
``.cuda()``; move the network with ``.to(device)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from grood.featureset import LinearHead

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class SplitNetwork(nn.Module, ABC):
    """A classifier ``f = f_clf ∘ f_mid ∘ f_early`` (paper eq. 1) with a configurable split point.

    Subclasses implement :meth:`_stem`, :meth:`_block`, :meth:`_pool` and :attr:`classifier`, and set
    :attr:`block_names`; this class composes them according to :attr:`split_block` (see the module
    docstring for the convention).

    Class attributes:
        input_mean, input_std: the per-channel normalisation the network's weights expect (RGB, inputs in
            ``[0, 1]`` before normalising). The data layer applies it; the network does not.
        input_size: the nominal input side in pixels (32 for CIFAR nets, 224 for ImageNet nets).
        block_names: ``num_blocks + 1`` names; ``block_names[k]`` names what ``early`` ends with at split ``k``.
        default_split_block: the split used when ``split_block`` is None.
    """

    input_mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    input_std: ClassVar[tuple[float, float, float]] = IMAGENET_STD
    input_size: ClassVar[int] = 224
    block_names: ClassVar[tuple[str, ...]] = ()
    default_split_block: ClassVar[int] = 1

    def __init__(self) -> None:
        super().__init__()
        self._split_block = self.default_split_block

    # ------------------------------------------------------------------ what subclasses provide
    @abstractmethod
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images -> the stem's output (block input 0)."""

    @abstractmethod
    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` (``0 .. num_blocks - 1``) on ``h``."""

    @abstractmethod
    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """The last block's output -> penultimate features ``[B, D]`` (pooling, norm, flatten)."""

    @property
    @abstractmethod
    def classifier(self) -> nn.Linear:
        """The final linear layer ``f_clf`` (``[B, D] -> [B, C]``)."""

    # ------------------------------------------------------------------ the split point
    @property
    def num_blocks(self) -> int:
        """Number of blocks after the stem; valid splits are ``0 .. num_blocks``."""
        return len(self.block_names) - 1

    @property
    def split_block(self) -> int:
        """``k``: ``early`` = stem + the first ``k`` blocks (see the module docstring)."""
        return self._split_block

    @split_block.setter
    def split_block(self, value: int | None) -> None:
        self._split_block = self.check_split_block(value)

    def check_split_block(self, value: int | None) -> int:
        """``value`` validated (None -> :attr:`default_split_block`); ValueError listing the valid range."""
        if value is None:
            return self.default_split_block
        valid = ", ".join(f"{k} = after {name}" for k, name in enumerate(self.block_names))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.num_blocks:
            raise ValueError(
                f"split_block={value!r} is not valid for {type(self).__name__}: give an integer in "
                f"0..{self.num_blocks} ({valid}); default {self.default_split_block}"
            )
        return value

    # ------------------------------------------------------------------ eq. 1
    def early(self, x: torch.Tensor) -> torch.Tensor:
        """``f_early``: ``[B, 3, H, W] -> h_early`` (stem + the first ``split_block`` blocks)."""
        h = self._stem(x)
        for index in range(self.split_block):
            h = self._block(index, h)
        return h

    def mid(self, h_early: torch.Tensor) -> torch.Tensor:
        """``f_mid``: ``h_early -> h_pen [B, D]`` (the remaining blocks, then pooling and flattening)."""
        h = h_early
        for index in range(self.split_block, self.num_blocks):
            h = self._block(index, h)
        return self._pool(h)

    def head(self, h_pen: torch.Tensor) -> torch.Tensor:
        """``f_clf``: ``[B, D] -> logits [B, C]``."""
        return self.classifier(h_pen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> logits [B, C]`` = ``head(mid(early(x)))``."""
        return self.head(self.mid(self.early(x)))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, C], h_pen [B, D])`` in one pass."""
        logits, h_pen, _ = self.forward_all(x)
        return logits, h_pen

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, C], h_pen [B, D], h_early [B, *S])`` in one pass."""
        h_early = self.early(x)
        h_pen = self.mid(h_early)
        return self.head(h_pen), h_pen, h_early

    # ------------------------------------------------------------------ the final linear layer
    @property
    def fc_weight(self) -> torch.Tensor:
        """``[C, D]`` weight of the final linear layer (a live parameter)."""
        return self.classifier.weight

    @property
    def fc_bias(self) -> torch.Tensor:
        """``[C]`` bias of the final linear layer (zeros if the layer has none)."""
        bias = self.classifier.bias
        return bias if bias is not None else torch.zeros_like(self.fc_weight[:, 0])

    def linear_head(self) -> LinearHead:
        """A detached copy of the final layer: ``logits = h_pen @ weight.T + bias``."""
        return LinearHead(self.fc_weight.detach().clone(), self.fc_bias.detach().clone())

    @property
    def feature_dim(self) -> int:
        """``D``, the penultimate feature size."""
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes."""
        return self.classifier.out_features

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
                f"split_block={self.split_block} (after {self.block_names[self.split_block]})")

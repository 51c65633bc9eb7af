"""What one forward pass of a network over one dataset split produces, and what every detector reads.

A :class:`FeatureSet` is the unit of the feature cache (``grood.features``) and the input of every
detector (``grood.detectors``). It holds tensors only; it never touches files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureSet:
    """Network outputs for ``N`` samples of one split.

    Attributes:
        logits: ``[N, C]`` float32, the classifier's outputs.
        features: ``[N, D]`` float32, penultimate features ``f^pen(x)`` (flattened).
        labels: ``[N]`` int64, class indices ``0..C-1`` for ID samples, ``-1`` for OOD samples.
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.dim() != 2:
            raise ValueError(f"FeatureSet.features must be [N, D]; got shape {tuple(self.features.shape)}")
        if self.logits.dim() != 2 or self.logits.shape[0] != n:
            raise ValueError(
                f"FeatureSet.logits must be [N, C] with N={n}; got shape {tuple(self.logits.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != n:
            raise ValueError(f"FeatureSet.labels must be [N] with N={n}; got shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def subset(self, index: torch.Tensor) -> "FeatureSet":
        """The rows selected by ``index`` (a bool mask ``[N]`` or integer indices)."""
        return FeatureSet(self.logits[index], self.features[index], self.labels[index])

    def to(self, device: torch.device | str) -> "FeatureSet":
        return FeatureSet(self.logits.to(device), self.features.to(device), self.labels.to(device))


@dataclass
class LinearHead:
    """The network's final linear layer ``logits = features @ weight.T + bias``.

    Attributes:
        weight: ``[C, D]``.
        bias: ``[C]``.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D] -> [N, C]`` logits."""
        return features @ self.weight.T + self.bias

"""Networks split as ``f = f_clf ∘ f_mid ∘ f_early`` (paper eq. 1), checkpoint loading, and the registry.

See :mod:`grood.backbones.base` for the interface and the split-point convention.
"""

from grood.backbones.base import IMAGENET_MEAN, IMAGENET_STD, SplitNetwork
from grood.backbones.checkpoints import (
    CheckpointMismatchError,
    load_checkpoint,
    read_state_dict,
    sha256_of_file,
)
from grood.backbones.cifar_resnet import CifarResNet, ResNet20, ResNet32, ResNet44, ResNet56
from grood.backbones.registry import BACKBONES, backbone_names, build_backbone
from grood.backbones.openood_net import OPENOOD_NETWORKS, as_split_network
from grood.backbones.resnet18_32x32 import ResNet18_32x32
from grood.backbones.torchvision_nets import ResNet18_224x224, ResNet50, SwinT, ViTB16
from grood.backbones.wrap import SplitError, WrappedNetwork, wrap

__all__ = [
    "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "OPENOOD_NETWORKS", "CheckpointMismatchError", "CifarResNet",
    "ResNet18_224x224", "ResNet18_32x32", "ResNet20", "ResNet32", "ResNet44", "ResNet56", "ResNet50", "SplitError",
    "SplitNetwork", "SwinT", "ViTB16", "WrappedNetwork", "as_split_network", "backbone_names", "build_backbone",
    "load_checkpoint", "read_state_dict", "sha256_of_file", "wrap",
]

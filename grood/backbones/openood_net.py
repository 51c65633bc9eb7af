"""Any classifier as a :class:`~grood.backbones.base.SplitNetwork`: OpenOOD v1.5's networks, grood's own,
and any other ``nn.Module`` split by layer name (:func:`grood.wrap`).

:func:`as_split_network` is the one adapter the OpenOOD postprocessor (:mod:`grood.openood_compat`) and the
network-level GROOD (:mod:`grood.on_network`) use. OpenOOD's networks are recognised by class name and
``openood.*`` module, without importing openood (it is not on PyPI).
"""

from __future__ import annotations

from torch import nn

from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import load_state_dict_checked
from grood.backbones.registry import build_backbone
from grood.backbones.wrap import wrap
from grood.device import module_device

__all__ = ["OPENOOD_NETWORKS", "as_split_network"]

#: OpenOOD v1.5 network class -> (grood backbone name, path of its final linear layer).
OPENOOD_NETWORKS: dict[str, tuple[str, str]] = {
    "ResNet18_32x32": ("resnet18_32x32", "fc"),
    "ResNet18_224x224": ("resnet18_224x224", "fc"),
    "ResNet50": ("resnet50", "fc"),
    "ViT_B_16": ("vit_b_16", "heads.head"),
    "Swin_T": ("swin_t", "head"),
}


# --------------------------------------------------------------------------- networks
def _openood_class_name(net: nn.Module) -> str | None:
    """The OpenOOD network class ``net`` is (or derives from), by class name and module; None otherwise."""
    for cls in type(net).__mro__:
        if cls.__module__.split(".")[0] == "openood" and cls.__name__ in OPENOOD_NETWORKS:
            return cls.__name__
    return None


def as_split_network(
    net: nn.Module,
    split_block: int | None = None,
    *,
    early_layer: str | None = None,
    feature_layer: str | None = None,
    head_layer: str | None = None,
) -> SplitNetwork:
    """``net`` as a :class:`~grood.backbones.base.SplitNetwork` (``early`` / ``mid`` / ``head``, paper eq. 1).

    - With ``early_layer`` and ``head_layer`` (and optionally ``feature_layer``): :func:`grood.wrap`
      splits ``net`` at those submodules (any classifier, OpenOOD's too; its parameters are shared).
    - A ``SplitNetwork`` is returned as it is (its ``split_block`` set when ``split_block`` is given).
    - OpenOOD v1.5's ``ResNet18_32x32``, ``ResNet18_224x224``, ``ResNet50``, ``ViT_B_16`` and ``Swin_T``
      (recognised by class name and ``openood.*`` module, without importing openood) become the matching
      grood backbone with the same number of classes, a **copy** of the network's weights loaded with
      ``strict=True`` (the state-dict keys are the same: OpenOOD's CIFAR ResNet-18 layout for the first,
      torchvision's for the others), on the network's device, in eval mode.
    - ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers are looked through.

    Raises:
        TypeError: any other network without layer names; the message lists what is supported.
        ValueError: only one of ``early_layer`` / ``head_layer``, or layer names for a SplitNetwork.
        grood.backbones.wrap.SplitError: the layer names do not split ``net`` (lists the valid names).
        CheckpointMismatchError: the OpenOOD network's weights do not fit (e.g. a ViT with another image size).
    """
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module
    names = {"early_layer": early_layer, "feature_layer": feature_layer, "head_layer": head_layer}
    if isinstance(net, SplitNetwork):
        if any(value is not None for value in names.values()):
            raise ValueError(f"{type(net).__name__} is already a grood SplitNetwork; layer names "
                             f"{ {k: v for k, v in names.items() if v is not None} } are for other networks")
        if split_block is not None:
            net.split_block = split_block
        return net
    if early_layer is not None or head_layer is not None or feature_layer is not None:
        if early_layer is None or head_layer is None:
            raise ValueError(f"splitting {type(net).__name__} by layer name needs early_layer and head_layer "
                             f"(feature_layer is optional); got {names}")
        network = wrap(net, early_layer, feature_layer, head_layer)
        if split_block is not None:
            network.split_block = split_block
        return network.eval()
    class_name = _openood_class_name(net)
    if class_name is None:
        raise TypeError(
            f"GROOD cannot split {type(net).__module__}.{type(net).__name__} into early / mid / head without layer "
            f"names. Supported without them: grood.backbones.SplitNetwork subclasses and OpenOOD v1.5's "
            f"{', '.join(OPENOOD_NETWORKS)}. For another network, give early_layer, feature_layer and head_layer "
            "(e.g. 'layer1', 'avgpool', 'fc' for a torchvision ResNet; see grood.wrap)"
        )
    backbone, classifier_path = OPENOOD_NETWORKS[class_name]
    classifier = net.get_submodule(classifier_path)
    network = build_backbone(backbone, num_classes=int(classifier.out_features), split_block=split_block)
    load_state_dict_checked(network, net.state_dict(), source=f"OpenOOD network {class_name}", strict=True)
    return network.to(module_device(net)).eval()

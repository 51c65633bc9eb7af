"""GROOD as an OpenOOD v1.5 postprocessor: ``Evaluator(net, id_name, postprocessor=GROODPostprocessor())``.

OpenOOD's contract (``openood/postprocessors/base_postprocessor.py`` and
``openood/evaluation_api/evaluator.py``):

- ``Evaluator`` calls ``postprocessor.setup(net, id_loader_dict, ood_loader_dict)`` once, with
  ``id_loader_dict = {'train', 'val', 'test'}`` DataLoaders and ``ood_loader_dict = {'val': DataLoader,
  'near': {...}, 'far': {...}}``; batches are dicts with ``'data' [B, 3, H, W]`` and ``'label' [B]``.
- ``inference(net, loader, progress)`` returns numpy ``(pred [N] int, conf [N] float, label [N] int)``,
  ``conf`` higher = more in-distribution; it calls ``postprocess(net, data) -> (pred [B], conf [B])``.
- When ``APS_mode`` is true and ``hyperparam_search_done`` false, the evaluator loops over the cartesian
  product of ``args_dict``'s value lists and calls ``set_hyperparam([v1, v2, ...])`` with one value per
  key **in the order of** ``args_dict``'s keys, scores ID val and OOD val, and keeps the best AUROC.

What this module adds over OpenOOD's base class, on purpose:

- No ``.cuda()``: everything runs on the device of the network's parameters (or ``device=``).
- The network is adapted once to grood's split interface (:func:`as_split_network`): OpenOOD's
  ``ResNet18_32x32``, ``ResNet18_224x224``, ``ResNet50``, ``ViT_B_16`` and ``Swin_T`` become the matching
  :mod:`grood.backbones` network with the same weights (strict state-dict load).
- The training set is read once; its penultimate features, logits and labels are kept, so a changed
  hyper-parameter re-fits only what it needs (``k`` re-uses the index; a prototype parameter
  recomputes the OOD prototype and the training gradients; an index parameter rebuilds the index).
- ``set_hyperparam`` maps list positions to ``args_dict``'s keys explicitly, and also takes a dict of
  named parameters (recommended).

The method's maths is not here: eq. 7-9 live in :mod:`grood.ood_prototypes` /
:mod:`grood.method.prototypes`, eq. 5-6 in :class:`grood.method.detector.GROOD`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision.transforms import Normalize
from torchvision.transforms.v2 import Normalize as NormalizeV2

from grood import ood_prototypes
from grood.backbones.base import SplitNetwork
from grood.backbones.checkpoints import load_state_dict_checked
from grood.backbones.registry import build_backbone
from grood.device import default_device, resolve_device
from grood.features import SplitOutputs, forward_pass
from grood.method.detector import FIT_ON, GROOD, NotFittedError
from grood.method.neighbours import INDEX_KINDS
from grood.method.prototypes import class_prototypes
from grood.progress import track
from grood.resources import loader_workers

log = logging.getLogger(__name__)

try:  # OpenOOD is not on PyPI; when it is installed, be a real OpenOOD postprocessor.
    from openood.postprocessors import BasePostprocessor as _OpenOODBasePostprocessor

    OPENOOD_AVAILABLE = True
except ImportError:
    _OpenOODBasePostprocessor = None
    OPENOOD_AVAILABLE = False

__all__ = [
    "DEFAULTS", "OPENOOD_AVAILABLE", "OPENOOD_NETWORKS", "PROTOTYPES", "SWEEPABLE", "BasePostprocessor",
    "FallbackBasePostprocessor", "GROODPostprocessor", "OpenOODImages", "as_split_network", "find_normalization",
    "run_inference",
]

#: OOD-prototype strategies the postprocessor offers (see :meth:`GROODPostprocessor.setup`).
PROTOTYPES = ("mixup", "mean", "uniform", "val_ood")
#: Images of ``ood_loader_dict['val']`` behind the "val_ood" prototype (appendix A.2: about 100).
VAL_OOD_IMAGES = 100
#: Parameters ``set_hyperparam`` / a sweep may change, in the order ``get_hyperparam`` lists them.
SWEEPABLE = ("prototype", "mixup_lambda", "num_mixup_images", "split_block", "seed", "fit_on", "index",
             "index_params", "k")
#: Every named parameter of :class:`GROODPostprocessor` and its default.
DEFAULTS: dict[str, Any] = {
    "prototype": "mixup", "mixup_lambda": 0.5, "num_mixup_images": None, "index": "exact", "index_params": None,
    "k": 1, "fit_on": "all", "split_block": None, "batch_size": 128, "device": None, "seed": 0, "progress": True,
}
#: Parameters each prototype strategy depends on (a change recomputes the prototype).
_PROTOTYPE_INPUTS = {
    "mixup": {"mixup_lambda", "num_mixup_images", "seed", "split_block"},
    "uniform": {"seed"},
    "val_ood": {"seed"},
    "mean": set(),
}
#: Parameters of the GROOD fit itself (a change recomputes the training gradients and rebuilds the index).
_INDEX_INPUTS = {"fit_on", "index", "index_params"}

#: OpenOOD v1.5 network class -> (grood backbone name, path of its final linear layer).
OPENOOD_NETWORKS: dict[str, tuple[str, str]] = {
    "ResNet18_32x32": ("resnet18_32x32", "fc"),
    "ResNet18_224x224": ("resnet18_224x224", "fc"),
    "ResNet50": ("resnet50", "fc"),
    "ViT_B_16": ("vit_b_16", "heads.head"),
    "Swin_T": ("swin_t", "head"),
}


class _Unset:
    """Marks a named parameter the caller did not give (so OpenOOD's config may supply it)."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


# --------------------------------------------------------------------------- devices and batches
def _module_device(net: nn.Module) -> torch.device:
    """The device of ``net``'s first parameter (or buffer); :func:`default_device` for a module without any."""
    for tensor in net.parameters():
        return tensor.device
    for tensor in net.buffers():
        return tensor.device
    return default_device()


def _batch_data_label(batch: Any, where: str) -> tuple[torch.Tensor, Any]:
    """``(batch['data'], batch['label'])`` of an OpenOOD batch, or a TypeError saying what was found."""
    if not isinstance(batch, Mapping) or "data" not in batch or "label" not in batch:
        found = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"{where}: OpenOOD batches are dicts with keys 'data' [B, 3, H, W] and 'label' [B]; got {found}. "
            "Use OpenOOD's ImglistDataset, or a dataset whose items are {'data': image, 'label': class}"
        )
    return batch["data"], batch["label"]


def run_inference(
    postprocess: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    net: nn.Module,
    data_loader: Iterable,
    device: torch.device,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenOOD's ``inference`` loop on ``device`` (no ``.cuda()``).

    Returns:
        ``pred [N]`` int, ``conf [N]`` float64 (higher = more ID), ``label [N]`` int: the dtypes of
        OpenOOD's ``BasePostprocessor.inference``.
    """
    preds, confs, labels = [], [], []
    for batch in track(data_loader, "GROOD inference", progress):
        data, label = _batch_data_label(batch, "inference")
        pred, conf = postprocess(net, data.to(device))
        preds.append(pred.detach().cpu().reshape(-1))
        confs.append(conf.detach().cpu().reshape(-1))
        labels.append(torch.as_tensor(label).cpu().reshape(-1))
    if not preds:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=int)
    return (torch.cat(preds).numpy().astype(int), torch.cat(confs).double().numpy(),
            torch.cat(labels).numpy().astype(int))


class FallbackBasePostprocessor:
    """OpenOOD v1.5's ``BasePostprocessor`` contract, for when ``openood`` is not installed.

    Same methods and return types; ``inference`` runs on the device of ``net``'s parameters instead of
    calling ``.cuda()``. ``postprocess`` is MSP: ``(argmax softmax, max softmax)``.
    """

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def setup(self, net: nn.Module, id_loader_dict: Mapping[str, Any], ood_loader_dict: Mapping[str, Any]) -> None:
        pass

    @torch.no_grad()
    def postprocess(self, net: nn.Module, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf, pred = torch.softmax(net(data), dim=1).max(dim=1)
        return pred, conf

    def inference(self, net: nn.Module, data_loader: Iterable, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return run_inference(self.postprocess, net, data_loader, _module_device(net), progress)


#: OpenOOD's ``BasePostprocessor`` when ``openood`` imports, else :class:`FallbackBasePostprocessor`.
BasePostprocessor: type = _OpenOODBasePostprocessor if OPENOOD_AVAILABLE else FallbackBasePostprocessor


# --------------------------------------------------------------------------- data
class OpenOODImages(Dataset):
    """An OpenOOD dataset (items are dicts with ``'data'`` and ``'label'``) as ``(image, label)`` pairs,
    the item format of :func:`grood.features.forward_pass` and :mod:`grood.ood_prototypes`."""

    def __init__(self, dataset: Any, name: str) -> None:
        map_style = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        if isinstance(dataset, IterableDataset) or not map_style:
            raise TypeError(
                f"{name}: GROOD reads the training images by index, so the DataLoader must wrap a map-style dataset "
                f"(with __getitem__ and __len__); got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = _batch_data_label(self.dataset[index], f"{self.name} item {index}")
        return data, int(label)


def _loader_dataset(loaders: Mapping[str, Any] | None, key: str, name: str, required: bool) -> OpenOODImages | None:
    """``loaders[key].dataset`` wrapped as :class:`OpenOODImages`; None (or an error when ``required``) if absent."""
    loader = loaders.get(key) if isinstance(loaders, Mapping) else None
    if loader is None:
        if not required:
            return None
        found = sorted(loaders) if isinstance(loaders, Mapping) else type(loaders).__name__
        raise ValueError(f"{name}[{key!r}] is missing (found {found}); OpenOOD's Evaluator passes it to setup()")
    if not isinstance(loader, DataLoader):
        raise TypeError(f"{name}[{key!r}] must be a torch DataLoader; got {type(loader).__name__}")
    return OpenOODImages(loader.dataset, f"{name}[{key!r}]")


def _normalize_of(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if isinstance(transform, (Normalize, NormalizeV2)):
        return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
    return None


def find_normalization(obj: Any, depth: int = 5) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the first torchvision ``Normalize`` found in a dataset's transforms, or None.

    Follows ``dataset``, ``preprocessor``, ``transform``, ``transform_image`` and ``transforms`` (OpenOOD's
    ``ImglistDataset.preprocessor.transform.transforms[-1]``), and sequences, at most ``depth`` levels deep.
    """
    found = _normalize_of(obj)
    if found is not None or depth == 0 or obj is None:
        return found
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        names = ("dataset", "preprocessor", "transform_image", "transform", "transforms")
        children = [getattr(obj, name, None) for name in names]
    for child in children:
        if child is not None and child is not obj:
            found = find_normalization(child, depth - 1)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- networks
def _openood_class_name(net: nn.Module) -> str | None:
    """The OpenOOD network class ``net`` is (or derives from), by class name and module; None otherwise."""
    for cls in type(net).__mro__:
        if cls.__module__.split(".")[0] == "openood" and cls.__name__ in OPENOOD_NETWORKS:
            return cls.__name__
    return None


def as_split_network(net: nn.Module, split_block: int | None = None) -> SplitNetwork:
    """``net`` as a :class:`~grood.backbones.base.SplitNetwork` (``early`` / ``mid`` / ``head``, paper eq. 1).

    - A ``SplitNetwork`` is returned as it is (its ``split_block`` set when ``split_block`` is given).
    - OpenOOD v1.5's ``ResNet18_32x32``, ``ResNet18_224x224``, ``ResNet50``, ``ViT_B_16`` and ``Swin_T``
      (recognised by class name and ``openood.*`` module, without importing openood) become the matching
      grood backbone with the same number of classes, a **copy** of the network's weights loaded with
      ``strict=True`` (the state-dict keys are the same: OpenOOD's CIFAR ResNet-18 layout for the first,
      torchvision's for the others), on the network's device, in eval mode.
    - ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers are looked through.

    Raises:
        TypeError: any other network; the message lists what is supported.
        CheckpointMismatchError: the OpenOOD network's weights do not fit (e.g. a ViT with another image size).
    """
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module
    if isinstance(net, SplitNetwork):
        if split_block is not None:
            net.split_block = split_block
        return net
    class_name = _openood_class_name(net)
    if class_name is None:
        raise TypeError(
            f"GROOD cannot split {type(net).__module__}.{type(net).__name__} into early / mid / head. Supported: "
            f"grood.backbones.SplitNetwork subclasses and OpenOOD v1.5's {', '.join(OPENOOD_NETWORKS)}. For another "
            "network, wrap it in a grood.backbones.SplitNetwork subclass (implement _stem, _block, _pool and "
            "classifier; see grood/backbones/base.py) and pass that network"
        )
    backbone, classifier_path = OPENOOD_NETWORKS[class_name]
    classifier = net.get_submodule(classifier_path)
    network = build_backbone(backbone, num_classes=int(classifier.out_features), split_block=split_block)
    load_state_dict_checked(network, net.state_dict(), source=f"OpenOOD network {class_name}", strict=True)
    return network.to(_module_device(net)).eval()


# --------------------------------------------------------------------------- parameters
def _check_params(params: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first parameter whose value cannot work."""

    def bad(name: str, expected: str) -> ValueError:
        return ValueError(f"GROODPostprocessor parameter {name}={params[name]!r}: expected {expected}")

    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if params["prototype"] not in PROTOTYPES:
        raise bad("prototype", f"one of {', '.join(PROTOTYPES)}")
    lam = params["mixup_lambda"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 1.0:
        raise bad("mixup_lambda", "a number in [0, 1] (eq. 9's λ)")
    if params["num_mixup_images"] is not None and not (is_int(params["num_mixup_images"])
                                                       and params["num_mixup_images"] >= 1):
        raise bad("num_mixup_images", "None (every training image) or an integer >= 1")
    if params["index"] not in INDEX_KINDS:
        raise bad("index", f"one of {', '.join(INDEX_KINDS)}")
    if params["index_params"] is not None and not isinstance(params["index_params"], Mapping):
        raise bad("index_params", "None or a dict of index arguments, e.g. {'nlist': 256, 'nprobe': 8}")
    if not is_int(params["k"]) or params["k"] < 1:
        raise bad("k", "an integer >= 1")
    if params["fit_on"] not in FIT_ON:
        raise bad("fit_on", f"one of {', '.join(FIT_ON)}")
    if params["split_block"] is not None and not (is_int(params["split_block"]) and params["split_block"] >= 0):
        raise bad("split_block", "None (the network's default) or an integer >= 0")
    if not is_int(params["batch_size"]) or params["batch_size"] < 1:
        raise bad("batch_size", "an integer >= 1")
    if not is_int(params["seed"]):
        raise bad("seed", "an integer")
    if not isinstance(params["progress"], bool):
        raise bad("progress", "True or False")
    if params["device"] is not None:
        try:
            resolve_device(params["device"])
        except (RuntimeError, TypeError) as error:
            raise bad("device", f"None, 'auto', 'cpu', 'cuda' or 'cuda:N' ({error})") from error


def _config_section(config: Any) -> Mapping[str, Any]:
    """``config['postprocessor']`` of an OpenOOD config (a dict subclass), or {} when absent."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be OpenOOD's Config (a dict) or None; got {type(config).__name__}")
    section = config.get("postprocessor") or {}
    if not isinstance(section, Mapping):
        raise TypeError(f"config['postprocessor'] must be a mapping; got {type(section).__name__}")
    return section


def _config_args(section: Mapping[str, Any]) -> dict[str, Any]:
    args = dict(section.get("postprocessor_args") or {})
    unknown = sorted(set(args) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"config['postprocessor']['postprocessor_args'] has unknown key(s) {unknown}; GROODPostprocessor "
            f"takes {', '.join(DEFAULTS)}"
        )
    return args


def _sweep_name(name: str, where: str) -> str:
    """A sweep key as a parameter name: OpenOOD's ``<name>_list`` spelling is accepted."""
    key = name[: -len("_list")] if name.endswith("_list") and name not in SWEEPABLE else name
    if key not in SWEEPABLE:
        raise ValueError(f"{where}: {name!r} cannot be swept; sweepable parameters: {', '.join(SWEEPABLE)}")
    return key


# --------------------------------------------------------------------------- the postprocessor
class GROODPostprocessor(BasePostprocessor):
    """GROOD (paper Algorithms 1 and 2) behind OpenOOD v1.5's postprocessor interface.

    ``conf`` is GROOD's score: minus the eq. 6 distance from a sample's eq. 5 gradient to the nearest
    (``k``-th nearest) training gradient, **higher = more in-distribution** (OpenOOD's convention);
    ``pred`` is the classifier's argmax.

    Args:
        config: OpenOOD's config object, or None. Read: ``config.postprocessor.postprocessor_args``
            (values for the named parameters below), ``.postprocessor_sweep`` (a sweep; OpenOOD's
            ``k_list`` spelling is accepted) and ``.APS_mode``. Named parameters win over the config.
        prototype: the OOD prototype (eq. 8) strategy: ``"mixup"`` (eq. 9, the paper's default),
            ``"mean"`` (mean of the class prototypes), ``"uniform"`` (uniform-noise images, the 100 of
            1000 with the lowest energy) or ``"val_ood"`` (100 images of ``ood_loader_dict['val']``).
        mixup_lambda: eq. 9's λ.
        num_mixup_images: training images mixed for eq. 9 (None = all; fewer: a seeded class-balanced sample).
        index: nearest-neighbour index of eq. 6: ``"exact"`` (FAISS flat), ``"ivf"`` (appendix A.4) or ``"torch"``.
        index_params: the index's arguments, e.g. ``{"nlist": 256, "nprobe": 8}`` for ``"ivf"``, or
            ``{"norm_pruning": True}`` for ``"torch"`` (exact, skips gradients out of reach by norm).
        k: score with the ``k``-th nearest training gradient (Fig. 5).
        fit_on: index the gradients of ``"all"`` training images or of the ``"correct"``-ly classified ones.
        split_block: where ``f_early`` ends (None = the network's default, after the first block).
        batch_size: images per batch in the passes this postprocessor runs itself (training set, mixup,
            uniform noise, val OOD); OpenOOD's loaders keep theirs for inference.
        device: where the network and GROOD run; None = the device of the network's parameters.
        seed: seeds the mixup image sample, the uniform noise and the val-OOD image sample.
        progress: show progress bars.
        sweep: ``{name: [values, ...]}`` for OpenOOD's automatic parameter search, e.g.
            ``{"k": [1, 2, 5], "mixup_lambda": [0.3, 0.5, 0.7]}``; sets ``APS_mode``.

    Attributes:
        params: the current value of every named parameter (change them with :meth:`set_hyperparam`).
        args_dict: the sweep, ``{name: [values]}`` (OpenOOD reads it in APS mode).
        APS_mode, hyperparam_search_done: OpenOOD's automatic-parameter-search flags.
        network: the :class:`SplitNetwork` this postprocessor runs (after :meth:`setup`).
        ood_prototype: ``[D]`` the OOD prototype ``p_ood`` (after :meth:`setup`).
        detector: the fitted :class:`grood.method.detector.GROOD` (after :meth:`setup`).
        train_outputs: the kept training-set pass: logits ``[N, C]``, features ``[N, D]``, labels ``[N]``
            and, for the mixup prototype, per-class early-layer sums.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        prototype: str = _UNSET,
        mixup_lambda: float = _UNSET,
        num_mixup_images: int | None = _UNSET,
        index: str = _UNSET,
        index_params: Mapping[str, Any] | None = _UNSET,
        k: int = _UNSET,
        fit_on: str = _UNSET,
        split_block: int | None = _UNSET,
        batch_size: int = _UNSET,
        device: str | torch.device | None = _UNSET,
        seed: int = _UNSET,
        progress: bool = _UNSET,
        sweep: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__(config)
        given = {
            "prototype": prototype, "mixup_lambda": mixup_lambda, "num_mixup_images": num_mixup_images,
            "index": index, "index_params": index_params, "k": k, "fit_on": fit_on, "split_block": split_block,
            "batch_size": batch_size, "device": device, "seed": seed, "progress": progress,
        }
        section = _config_section(config)
        params = {**DEFAULTS, **_config_args(section), **{n: v for n, v in given.items() if v is not _UNSET}}
        _check_params(params)
        self.params: dict[str, Any] = params

        if sweep is not None:
            raw_sweep, where, aps = sweep, "sweep", True
        else:
            raw_sweep = section.get("postprocessor_sweep") or {}
            where = "config['postprocessor']['postprocessor_sweep']"
            aps = bool(section.get("APS_mode", bool(raw_sweep)))
        self.args_dict: dict[str, list[Any]] = self._check_sweep(raw_sweep, where)
        if aps and not self.args_dict:
            raise ValueError(f"APS mode is on but {where} is empty; give {{name: [values, ...]}} or turn APS_mode off")
        self.APS_mode: bool = aps
        self.hyperparam_search_done: bool = False

        self.network: SplitNetwork | None = None
        self.device: torch.device | None = None
        self.ood_prototype: torch.Tensor | None = None
        self.detector: GROOD | None = None
        self.train_outputs: SplitOutputs | None = None
        self._source_net: nn.Module | None = None
        self._train_images: OpenOODImages | None = None
        self._val_ood_images: OpenOODImages | None = None
        self._num_workers = 0
        self._early_split: int | None = None  # split_block behind train_outputs' early sums

    def _check_sweep(self, sweep: Mapping[str, Sequence[Any]], where: str) -> dict[str, list[Any]]:
        if not isinstance(sweep, Mapping):
            raise TypeError(f"{where} must be a dict {{name: [values, ...]}}; got {type(sweep).__name__}")
        checked: dict[str, list[Any]] = {}
        for name, values in sweep.items():
            key = _sweep_name(str(name), where)
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ValueError(f"{where}[{name!r}] must be a list of candidate values; got {values!r}")
            values = list(values)
            if not values:
                raise ValueError(f"{where}[{name!r}] is empty; give at least one candidate value")
            for value in values:
                _check_params({**self.params, key: value})
            checked[key] = values
        return checked

    # ------------------------------------------------------------------ OpenOOD: setup
    def setup(self, net: nn.Module, id_loader_dict: Mapping[str, Any], ood_loader_dict: Mapping[str, Any]) -> None:
        """Adapt ``net``, read ``id_loader_dict['train']`` once, build the OOD prototype and fit GROOD.

        The pass over the training set runs over its dataset in index order (``batch_size`` images per
        batch, the loader's ``num_workers``), whatever the loader's shuffling, and keeps logits,
        penultimate features, labels and (for "mixup") per-class sums of the early feature maps.
        "mixup" then runs the network once more over the (sampled) training images (eq. 9);
        "val_ood" reads 100 images of ``ood_loader_dict['val']``; "uniform" makes its own noise images.
        """
        self._train_images = _loader_dataset(id_loader_dict, "train", "id_loader_dict", required=True)
        self._val_ood_images = _loader_dataset(ood_loader_dict, "val", "ood_loader_dict", required=False)
        self._num_workers = loader_workers(int(getattr(id_loader_dict["train"], "num_workers", 0)))
        self.device = (resolve_device(self.params["device"]) if self.params["device"] is not None
                       else _module_device(net))
        self.network = as_split_network(net, self.params["split_block"]).to(self.device).eval()
        self._source_net = net
        self.train_outputs = None
        self.ood_prototype = None
        self.detector = None
        self._early_split = None
        self._refit(changed=set(SWEEPABLE))

    def _mixup_may_be_needed(self) -> bool:
        return self.params["prototype"] == "mixup" or "mixup" in self.args_dict.get("prototype", [])

    def _refit(self, changed: set[str]) -> None:
        """Bring the training pass, the OOD prototype and the GROOD fit up to date with ``self.params``,
        redoing only what the parameters in ``changed`` (and missing state) require."""
        strategy = self.params["prototype"]
        needs_early = strategy == "mixup" and (
            self.train_outputs is None or self.train_outputs.early_sums is None
            or self._early_split != self.network.split_block)
        redo_pass = self.train_outputs is None or needs_early
        if redo_pass:
            self._extract_train(accumulate_early=self._mixup_may_be_needed())
        redo_prototype = (self.ood_prototype is None or needs_early or "prototype" in changed
                          or bool(changed & _PROTOTYPE_INPUTS[strategy]))
        if redo_prototype:
            self.ood_prototype = self._compute_ood_prototype()
        if self.detector is None or redo_prototype or changed & _INDEX_INPUTS:
            self._fit_detector()
        elif "k" in changed:
            self._set_k(self.params["k"])

    def _extract_train(self, accumulate_early: bool) -> None:
        """One pass over the training images: logits, penultimate features, labels (+ early-layer sums)."""
        loader = DataLoader(self._train_images, batch_size=self.params["batch_size"], shuffle=False,
                            num_workers=self._num_workers, pin_memory=self.device.type == "cuda")
        self.train_outputs = forward_pass(
            self.network, loader, num_classes=self.network.num_classes, accumulate_early=accumulate_early,
            device=self.device, progress=self.params["progress"], description="GROOD: training set",
        )
        self._early_split = self.network.split_block if accumulate_early else None

    def _compute_ood_prototype(self) -> torch.Tensor:
        """``[D]`` the OOD prototype of ``params['prototype']`` (eq. 8 over the strategy's candidates)."""
        train = self.train_outputs.features
        protos = class_prototypes(train.features, train.labels, self.network.num_classes)
        strategy, seed, batch_size = self.params["prototype"], self.params["seed"], self.params["batch_size"]
        if strategy == "mean":
            return ood_prototypes.mean_prototype(protos)
        if strategy == "mixup":
            candidates = ood_prototypes.mixup_features(
                self.network, self._train_images, train.logits, self.train_outputs.early_prototypes(),
                mixup_lambda=float(self.params["mixup_lambda"]), num_images=self.params["num_mixup_images"],
                train_labels=train.labels, seed=seed, batch_size=batch_size, num_workers=self._num_workers,
                device=self.device, progress=self.params["progress"],
            )
        elif strategy == "uniform":
            mean, std = self._normalization()
            candidates = ood_prototypes.uniform_noise_features(
                self.network, image_shape=tuple(self._train_images[0][0].shape), mean=mean, std=std, seed=seed,
                batch_size=batch_size, device=self.device,
            )
        else:  # "val_ood"
            candidates = self._val_ood_features()
        return ood_prototypes.finish_prototype(candidates, protos)

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The training images' normalisation, for the uniform-noise images (else the network's own)."""
        found = find_normalization(self._train_images.dataset)
        if found is not None:
            return found
        mean, std = tuple(self.network.input_mean), tuple(self.network.input_std)
        log.warning("prototype='uniform': no torchvision Normalize found in id_loader_dict['train']'s dataset; "
                    "normalising the noise images with %s's mean %s and std %s",
                    type(self.network).__name__, mean, std)
        return mean, std

    def _val_ood_features(self) -> torch.Tensor:
        """``[M, D]`` penultimate features of a seeded sample of ``VAL_OOD_IMAGES`` OOD validation images."""
        if self._val_ood_images is None:
            raise ValueError(
                "prototype='val_ood' needs OOD validation images, ood_loader_dict['val'] (OpenOOD's Evaluator "
                "passes them), but setup() got none; choose prototype='mixup', 'mean' or 'uniform'"
            )
        count = len(self._val_ood_images)
        if count == 0:
            raise ValueError("prototype='val_ood': ood_loader_dict['val'] holds no image")
        generator = torch.Generator().manual_seed(int(self.params["seed"]))
        rows = torch.randperm(count, generator=generator)[:VAL_OOD_IMAGES].sort().values
        loader = DataLoader(Subset(self._val_ood_images, rows.tolist()), batch_size=self.params["batch_size"],
                            num_workers=self._num_workers)
        outputs = forward_pass(self.network, loader, device=self.device, progress=self.params["progress"],
                               description="GROOD: val OOD prototype")
        return outputs.features.features

    def _fit_detector(self) -> None:
        """Algorithm 1 on the kept training features: class prototypes, eq. 5 gradients, eq. 6 index."""
        train = self.train_outputs.features
        detector = GROOD(index=self.params["index"], k=int(self.params["k"]),
                         index_params=dict(self.params["index_params"] or {}), fit_on=self.params["fit_on"],
                         device=self.device, progress=self.params["progress"])
        detector.fit(train.features, train.labels, ood_prototype=self.ood_prototype,
                     num_classes=self.network.num_classes, train_predictions=train.logits.argmax(dim=1))
        detector.progress = False  # no bar per inference batch
        self.detector = detector

    def _set_k(self, k: int) -> None:
        if k > self.detector.num_indexed:
            raise ValueError(f"k={k} exceeds the {self.detector.num_indexed} indexed training gradients; lower k")
        self.detector.k = int(k)

    # ------------------------------------------------------------------ OpenOOD: scoring
    def _check_ready(self, net: nn.Module) -> None:
        if self.detector is None:
            raise NotFittedError("GROODPostprocessor is not set up: call setup(net, id_loader_dict, ood_loader_dict) "
                                 "first (OpenOOD's Evaluator does it)")
        if net is not self._source_net and net is not self.network:
            raise ValueError(
                f"this GROODPostprocessor was set up with another network ({type(self._source_net).__name__} at "
                f"{id(self._source_net):#x}) than the one given ({type(net).__name__} at {id(net):#x}); call "
                "setup() with this network first"
            )

    @torch.no_grad()
    def postprocess(self, net: nn.Module, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``data [B, 3, H, W]`` -> ``(pred [B]`` classifier argmax, ``conf [B]`` GROOD score, higher = ID``)``,
        both on ``data``'s device."""
        self._check_ready(net)
        logits, features = self.network.forward_features(data.to(self.device))
        pred = logits.argmax(dim=1)
        conf = self.detector.score(features.float())
        return pred.to(data.device), conf.to(data.device)

    def inference(self, net: nn.Module, data_loader: Iterable, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """OpenOOD's ``inference`` on this postprocessor's device: numpy ``pred [N]`` int, ``conf [N]``
        float64 (higher = more ID), ``label [N]`` int."""
        self._check_ready(net)
        return run_inference(self.postprocess, net, data_loader, self.device,
                             progress=progress and self.params["progress"])

    # ------------------------------------------------------------------ OpenOOD: parameter search
    def set_hyperparam(self, hyperparam: Sequence[Any] | Mapping[str, Any]) -> None:
        """Change parameters and re-fit what they need.

        Args:
            hyperparam: a dict ``{name: value}`` of any of :data:`SWEEPABLE` (recommended), or, as
                OpenOOD's evaluator passes it, a list with one value per key of :attr:`args_dict`, in
                that dict's key order.

        ``k`` re-uses the index; ``prototype``, ``mixup_lambda``, ``num_mixup_images``, ``seed`` and
        ``split_block`` recompute the OOD prototype (when the current strategy uses them; a new
        ``split_block`` also re-reads the training set for the mixup's early prototypes), then the training
        gradients and the index; ``fit_on``, ``index`` and ``index_params`` recompute the training gradients
        and rebuild the index. Before :meth:`setup` the values are only stored.
        """
        if isinstance(hyperparam, Mapping):
            updates = {str(name): value for name, value in hyperparam.items()}
            for name in updates:
                if name not in SWEEPABLE:
                    raise ValueError(f"set_hyperparam: unknown parameter {name!r}; valid: {', '.join(SWEEPABLE)}")
        elif isinstance(hyperparam, Sequence) and not isinstance(hyperparam, (str, bytes)):
            names = list(self.args_dict)
            if not names:
                raise ValueError("set_hyperparam got a list, but args_dict is empty so its positions mean nothing; "
                                 "pass a dict {name: value}")
            if len(hyperparam) != len(names):
                raise ValueError(f"set_hyperparam got {len(hyperparam)} values for the {len(names)} keys of "
                                 f"args_dict {names}; give one value per key, in that order")
            updates = dict(zip(names, hyperparam))
        else:
            raise TypeError(f"set_hyperparam takes a dict {{name: value}} or a list ordered like args_dict's keys; "
                            f"got {type(hyperparam).__name__}")
        new_params = {**self.params, **updates}
        _check_params(new_params)
        changed = {name for name in updates if updates[name] != self.params[name]}
        if self.network is not None and "split_block" in changed:
            self.network.split_block = new_params["split_block"]  # validates against the network's blocks
        self.params = new_params
        if self.detector is not None and changed:
            self._refit(changed)

    def get_hyperparam(self) -> dict[str, Any]:
        """``{name: value}`` of the swept parameters (every sweepable one when there is no sweep)."""
        names = list(self.args_dict) or list(SWEEPABLE)
        return {name: self.params[name] for name in names}

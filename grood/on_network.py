"""GROOD on a network (``grood.GROOD``): built from a model, fitted from a DataLoader, scoring images.

::

    detector = grood.GROOD(model, early_layer="layer1", feature_layer="avgpool", head_layer="fc")
    detector.fit(train_loader)           # (x, y) batches, OpenOOD's dicts, or a Dataset
    scores = detector.score(images)      # [N], higher = more in-distribution

This is the **network-level** GROOD: it runs the network (the training pass, the paper's mixup OOD
prototype, eq. 9, and the images it scores) and fits the **feature-level** GROOD,
:class:`grood.method.detector.GROOD` (tensors only), on the penultimate features.

Sign conventions (one per interface, never mixed):

- grood's own methods, :meth:`GROOD.score` and :meth:`GROOD.score_features`: **higher = more
  in-distribution** (minus the eq. 6 distance; OpenOOD's convention, the one of every grood detector).
- pytorch-ood's methods, :meth:`GROOD.predict`, :meth:`GROOD.predict_features` and calling the detector:
  **higher = more OOD**, exactly ``-score``. When ``pytorch_ood`` imports, :class:`GROOD` is a
  ``pytorch_ood.api.FeaturesDetector`` (so a ``pytorch_ood.api.Detector``), and pytorch-ood's metrics
  and evaluation loops run it unchanged; without it, the same class on a plain base.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from grood.backbones.base import SplitNetwork
from grood.backbones.openood_net import as_split_network
from grood.device import module_device, resolve_device
from grood.featureset import FeatureSet
from grood.features import forward_pass
from grood.io import atomic_directory, atomic_file
from grood.method.detector import GROOD as FeatureGROOD
from grood.method.detector import NotFittedError
from grood.method.prototypes import class_prototypes
from grood.method.strategies import FILTER_PARAMS, SINGLE_PROTOTYPE, STRATEGIES, build_ood_prototype, strategy_params
from grood.prototype_inputs import ImageItems, TrainingPass, is_map_style, prototype_inputs, read_batch

try:  # pytorch-ood's detector API, when installed: GROOD is then one of its detectors
    from pytorch_ood.api import FeaturesDetector as _DetectorBase

    PYTORCH_OOD_AVAILABLE = True
except ImportError:  # pragma: no cover - pytorch-ood is a dependency of the checkout's environment
    PYTORCH_OOD_AVAILABLE = False

    class _DetectorBase:  # type: ignore[no-redef]
        """The plain base without pytorch-ood: calling the detector is :meth:`predict`, as there."""

        def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.predict(*args, **kwargs)


__all__ = ["GROOD", "NetworkMismatchError", "PYTORCH_OOD_AVAILABLE", "network_identity"]

SAVE_FORMAT = "grood.GROOD"
SAVE_VERSION = 1
_NETWORK_FILE = "network.json"
_DETECTOR_DIR = "detector"


class NetworkMismatchError(ValueError):
    """A saved detector was loaded onto another network (class, layer names or weights)."""


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def network_identity(model: nn.Module, layers: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the network a detector is fitted on: its class (module and name), the layer names
    (and split) it is cut at, and the sha256 of its ``state_dict`` (every tensor's name, dtype, shape and
    bytes, in key order)."""
    model = _unwrapped(model)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}", "layers": dict(layers),
            "state_dict_sha256": digest.hexdigest()}


class _Batches:
    """A re-iterable of ``(images [B, 3, H, W], labels [B])`` over the caller's data, labels checked as they
    come: integers in ``0..num_classes-1`` (pytorch-ood marks OOD samples with labels < 0; GROOD fits on ID
    data only). Not map-style, so the mixup reads it as batches (see :class:`TrainingPass`)."""

    def __init__(self, data: Iterable, num_classes: int, where: str) -> None:
        self.data, self.num_classes, self.where = data, num_classes, where
        self.image_shape: tuple[int, ...] | None = None  # of the first image, once iterated

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for position, batch in enumerate(self.data):
            images, labels = read_batch(batch, f"{self.where}, batch {position}")
            self.image_shape = self.image_shape or tuple(images.shape[1:])
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.dim() != 1:
                raise ValueError(f"{self.where}, batch {position}: labels must be a 1-D integer tensor [B]; got "
                                 f"dtype {labels.dtype}, shape {tuple(labels.shape)}")
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if bad.numel():
                raise ValueError(
                    f"{self.where}, batch {position}: label(s) {sorted(set(bad.tolist()))[:5]} outside "
                    f"0..{self.num_classes - 1} (the network has {self.num_classes} classes); GROOD fits on labelled ID training data only "
                    "(pytorch-ood marks OOD samples with labels < 0: leave them out)")
            yield images, labels


def _as_loader(data: Any, batch_size: int, where: str) -> Iterable:
    """A torch Dataset becomes a DataLoader (in order); a DataLoader or any iterable of batches is used as it is."""
    if isinstance(data, torch.Tensor):
        raise TypeError(f"{where}: give (images, labels) batches (a DataLoader, a list of pairs) or a Dataset, not a "
                        "tensor (labels are needed)")
    if isinstance(data, Dataset):  # items, not batches: batched here (an iterable-style one needs its DataLoader)
        if not is_map_style(data):
            raise TypeError(f"{where}: {type(data).__name__} is an iterable-style dataset of items: give a DataLoader "
                            "over it (batches), or a map-style Dataset")
        return DataLoader(ImageItems(data, where), batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TypeError(f"{where}: expected a DataLoader, an iterable of (images, labels) batches or a Dataset; got "
                        f"{type(data).__name__}")
    return data


def _as_items(data: Any, where: str) -> ImageItems:
    """Validation data read by row: a map-style Dataset, or a DataLoader over one (its dataset)."""
    return ImageItems(data.dataset if isinstance(data, DataLoader) else data, where)


class GROOD(_DetectorBase):
    """GROOD on a network (network-level; the feature-level detector is :class:`grood.method.detector.GROOD`).

    Scores: :meth:`score` / :meth:`score_features` **higher = more in-distribution**; pytorch-ood's
    :meth:`predict` / :meth:`predict_features` / ``detector(x)`` **higher = more OOD** (= ``-score``).

    Args:
        model: any classifier ``nn.Module`` with ``early_layer`` / ``head_layer`` (and ``feature_layer``) names
            (split by :func:`grood.wrap`), a grood backbone (:class:`~grood.backbones.base.SplitNetwork`,
            ``split_block`` chooses its early layer), or one of OpenOOD v1.5's networks
            (:func:`grood.backbones.openood_net.as_split_network`). Put in eval mode; its weights are not copied
            (except an OpenOOD network's, into the matching grood backbone).
        prototype: the OOD-prototype strategy (:data:`grood.method.strategies.STRATEGIES`): ``"mixup"`` (the
            paper's, eq. 9, default), ``"uniform"``, ``"val_ood"``, ``"corrupted"`` or ``"mean"``.
        prototype_params: that strategy's parameters (e.g. ``{"mixup_lambda": 0.5, "num_images": 1000}``) and the
            proximity filter's (``filter_quantile``, ``min_keep``); missing = the strategy's defaults.
        normalization: ``(mean, std)`` per channel of your images: required by the strategies that make images
            ("uniform", "corrupted" with ``source="synthetic"``).
        index, k, index_params, fit_on: the feature-level GROOD's (eq. 6's index, the ``k``-th neighbour, ...).
        batch_size: images per batch in the passes this detector runs itself.
        seed: seeds the strategies' samples. device: None = the model's device. progress: progress bars.
    """

    requires_fit = True

    def __init__(
        self,
        model: nn.Module,
        *,
        early_layer: str | None = None,
        feature_layer: str | None = None,
        head_layer: str | None = None,
        split_block: int | None = None,
        prototype: str = "mixup",
        prototype_params: Mapping[str, Any] | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        index: str = "exact",
        k: int = 1,
        index_params: Mapping[str, Any] | None = None,
        fit_on: str = "all",
        batch_size: int = 128,
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"GROOD(model, ...): model must be a torch.nn.Module; got {type(model).__name__}")
        if prototype not in SINGLE_PROTOTYPE:
            raise ValueError(f"prototype={prototype!r}: expected one of {', '.join(SINGLE_PROTOTYPE)}" + (
                " (an oracle needs the OOD test sets; grood's pipeline runs it)" if prototype in STRATEGIES else ""))
        given = dict(prototype_params or {})
        unread = sorted(set(given) - set(STRATEGIES[prototype].params) - set(FILTER_PARAMS))
        if unread:
            raise ValueError(f"prototype_params {unread} are not parameters of prototype={prototype!r}; it reads "
                             f"{', '.join([*STRATEGIES[prototype].params, *FILTER_PARAMS])}")
        self.prototype_params = strategy_params(prototype, given)  # checked, with the defaults filled in
        self.prototype = prototype
        makes_images = prototype == "uniform" or (prototype == "corrupted"
                                                  and self.prototype_params["source"] == "synthetic")
        if makes_images and normalization is None:
            raise ValueError(f"prototype={prototype!r} makes its own images and must normalise them like yours: pass "
                             "normalization=(mean, std)")
        self.normalization = None if normalization is None else (tuple(map(float, normalization[0])),
                                                                 tuple(map(float, normalization[1])))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.batch_size, self.seed, self.progress = batch_size, int(seed), bool(progress)
        self.layers = {"early_layer": early_layer, "feature_layer": feature_layer, "head_layer": head_layer,
                       "split_block": split_block}
        self.model = model
        self._device = resolve_device(device) if device is not None else module_device(model)
        self.network: SplitNetwork = as_split_network(
            model, split_block, early_layer=early_layer, feature_layer=feature_layer, head_layer=head_layer,
        ).to(self._device).eval()
        self.detector = FeatureGROOD(index=index, k=k, index_params=dict(index_params or {}), fit_on=fit_on,
                                     device=self._device, progress=self.progress)
        self.detector.check_index(self.network.feature_dim)  # before any forward pass
        self.ood_prototype: torch.Tensor | None = None

    # ------------------------------------------------------------------ devices (pytorch-ood's Detector.device)
    @property
    def device(self) -> torch.device:
        """Where the network and the feature-level GROOD run."""
        return self._device

    def to(self, device: str | torch.device) -> "GROOD":
        """Move the network and the fitted state to ``device``."""
        self._device = resolve_device(device)
        self.network.to(self._device)
        if self.detector.is_fitted:
            with tempfile.TemporaryDirectory() as folder:
                self.detector.save(Path(folder) / "state")
                self.detector = FeatureGROOD.load(Path(folder) / "state", device=self._device, progress=self.progress)
        else:
            self.detector.device = self._device
        return self

    # ------------------------------------------------------------------ fit
    def fit(self, data: Any, *, val_ood: Any = None, id_validation: Any = None, corrupted_id: Any = None) -> "GROOD":
        """Fit on the ID training data: class prototypes (eq. 7), the OOD prototype, training gradients (eq. 5).

        Args:
            data: the labelled ID training data: a DataLoader (read as you built it; use your test-time
                transform), any re-iterable of ``(images [B, 3, H, W], labels [B])`` batches or of OpenOOD's
                ``{"data", "label"}`` dicts, or a map-style Dataset of such items (read in order,
                ``batch_size`` per batch). Labels: integers in ``0..C-1``, every class present. The mixup
                (eq. 9) iterates it a second time; a mixup sample (``num_images``) needs the same order both
                times (``shuffle=False``).
            val_ood: OOD validation images (prototype "val_ood"); id_validation: ID validation images
                ("corrupted", source "synthetic"); corrupted_id: real corrupted ID images ("corrupted", source
                "real"): each a map-style Dataset or a DataLoader over one, items ``(image, label)`` or dicts.
        Returns:
            ``self``.
        """
        loader = _as_loader(data, self.batch_size, "GROOD.fit data")
        if self.prototype == "mixup" and isinstance(loader, Iterator):
            raise TypeError("GROOD.fit with the mixup prototype (eq. 9) reads the training data twice: give a "
                            "DataLoader, a list of batches or a Dataset, not a one-shot iterator")
        num_classes = self.network.num_classes
        batches = _Batches(loader, num_classes, "GROOD.fit data")
        outputs = forward_pass(self.network, batches, num_classes=num_classes,
                               accumulate_early=self.prototype == "mixup", device=self._device,
                               progress=self.progress, description="GROOD: training data")
        train = outputs.features
        protos = class_prototypes(train.features, train.labels, num_classes)
        advice = {"val_ood": "pass val_ood= (OOD validation images) to fit()",
                  "id_validation": "pass id_validation= (ID validation images) to fit()",
                  "corrupted_id": "pass corrupted_id= (real corrupted ID images) to fit(), or "
                                  "prototype_params={'source': 'synthetic'} with id_validation="}
        items = {name: None if value is None else _as_items(value, f"GROOD.fit {name}")
                 for name, value in (("val_ood", val_ood), ("id_validation", id_validation),
                                     ("corrupted_id", corrupted_id))}
        inputs = prototype_inputs(
            protos, network=self.network,
            training=lambda: TrainingPass(batches, train.logits, train.labels, outputs.early_prototypes()),
            image_shape=lambda: batches.image_shape,
            normalization=None if self.normalization is None else (lambda: self.normalization),
            id_validation=_with_labels(items["id_validation"]), corrupted_id=_with_labels(items["corrupted_id"]),
            val_ood=None if items["val_ood"] is None else (lambda: items["val_ood"]),
            seed=self.seed, batch_size=self.batch_size, device=self._device, progress=self.progress, advice=advice,
        )
        self.ood_prototype = build_ood_prototype(self.prototype, inputs, self.prototype_params)
        self.detector.fit(train, ood_prototype=self.ood_prototype, class_prototypes=protos, num_classes=num_classes)
        return self

    def fit_features(self, x: torch.Tensor, y: torch.Tensor, ood_prototype: torch.Tensor | None = None) -> "GROOD":
        """pytorch-ood's ``fit_features``: fit on penultimate features ``x [N, D]`` and labels ``y [N]``.

        Features alone cannot give the mixup prototype (it runs the network): pass ``ood_prototype [D]``, or
        construct with ``prototype="mean"``; else :meth:`fit` (the network runs).
        """
        num_classes = self.network.num_classes
        x, y = x.detach().float().cpu(), torch.as_tensor(y).cpu()
        if (y < 0).any():
            raise ValueError("fit_features: labels < 0 (pytorch-ood's OOD marker); GROOD fits on ID training data "
                             "only: leave the OOD rows out")
        protos = class_prototypes(x, y, num_classes)
        if ood_prototype is None:
            hint = ("fit_features(x, y) has penultimate features only: call fit(loader) so that the network runs, "
                    "pass ood_prototype=, or construct with prototype='mean'")
            inputs = prototype_inputs(protos, seed=self.seed, advice={name: hint for name in (
                "training", "network", "val_ood", "id_validation", "corrupted_id", "normalization", "image_shape")})
            ood_prototype = build_ood_prototype(self.prototype, inputs, self.prototype_params)
        self.ood_prototype = ood_prototype
        self.detector.fit(x, y, ood_prototype=ood_prototype, class_prototypes=protos, num_classes=num_classes)
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def features(self, data: Any) -> torch.Tensor:
        """``[N, D]`` penultimate features of ``data``: a tensor batch of images ``[N, 3, H, W]``, a DataLoader,
        an iterable of batches (labels ignored) or a Dataset."""
        self.network.eval()
        if isinstance(data, torch.Tensor):
            chunks = [data[start:start + self.batch_size] for start in range(0, data.shape[0], self.batch_size)]
        else:
            chunks = (read_batch(batch, "GROOD: images to score")[0]
                      for batch in _as_loader(data, self.batch_size, "GROOD: images to score"))
        outputs = [self.network.mid(self.network.early(chunk.to(self._device))).float() for chunk in chunks]
        if not outputs:
            raise ValueError("GROOD: no image to score")
        return torch.cat(outputs)

    def _check_fitted(self) -> None:
        if not self.detector.is_fitted:
            raise NotFittedError("this GROOD detector is not fitted: call fit(train_loader) first")

    def score(self, data: Any) -> torch.Tensor:
        """``[N]`` float32 GROOD scores, **higher = more in-distribution** (minus the eq. 6 distance of the
        eq. 5 gradient to the nearest training gradient), for images (see :meth:`features`)."""
        self._check_fitted()
        return self.detector.score(self.features(data))

    def score_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]`` scores of penultimate features ``x [N, D]``, **higher = more in-distribution**."""
        self._check_fitted()
        return self.detector.score(x)

    def predict_class(self, data: Any) -> torch.Tensor:
        """``[N]`` int64: the class of the nearest class prototype (the paper's NCP classifier), for images."""
        self._check_fitted()
        return self.detector.predict(self.features(data))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """pytorch-ood's outlier score of images ``x [B, 3, H, W]``: ``[B]``, **higher = more OOD** (``-score``)."""
        return -self.score(x)

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """pytorch-ood's outlier score of features ``x [B, D]``: ``[B]``, **higher = more OOD**
        (``-score_features``)."""
        return -self.score_features(x)

    # ------------------------------------------------------------------ persistence
    def identity(self) -> dict[str, Any]:
        """:func:`network_identity` of this detector's model and layer names."""
        return network_identity(self.model, self.layers)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the fitted detector to ``directory``: ``network.json`` (the network's identity and these
        settings) and ``detector/`` (the feature-level GROOD's save: json, tensors, index; no pickle).
        Written beside its target and swapped into place; an existing directory is replaced only if it
        holds a save of this kind (or nothing)."""
        self._check_fitted()
        target = Path(directory)
        if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                        and not (target / _NETWORK_FILE).is_file())):
            raise FileExistsError(f"{target} exists and is not a grood.GROOD save: refusing to replace it")
        meta = {"format": SAVE_FORMAT, "version": SAVE_VERSION, "network": self.identity(),
                "settings": {"prototype": self.prototype, "prototype_params": self.prototype_params,
                             "normalization": self.normalization, "batch_size": self.batch_size, "seed": self.seed}}
        with atomic_directory(target) as tmp:
            self.detector.save(tmp / _DETECTOR_DIR)
            with atomic_file(tmp / _NETWORK_FILE) as path:
                path.write_text(json.dumps(meta, indent=2, default=list) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: nn.Module, *, device: str | torch.device | None = None,
             progress: bool = False, **layers: Any) -> "GROOD":
        """The detector :meth:`save` wrote, on ``model``, cut at the recorded layer names.

        Args:
            layers: ``early_layer``, ``feature_layer``, ``head_layer``, ``split_block``: optional; each one given
                must be the recorded one.
        Raises:
            NetworkMismatchError: ``model`` is not the network the detector was fitted on (another class, other
                weights: the sha256 of its state_dict differs, or other layer names).
        """
        directory = Path(directory)
        path = directory / _NETWORK_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a directory written by grood.GROOD.save()")
        meta = json.loads(path.read_text())
        if meta.get("format") != SAVE_FORMAT or meta.get("version") != SAVE_VERSION:
            raise ValueError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; this code reads "
                             f"{SAVE_FORMAT!r} version {SAVE_VERSION}")
        recorded = meta["network"]
        unknown = sorted(set(layers) - set(recorded["layers"]))
        if unknown:
            raise TypeError(f"GROOD.load got unexpected keyword argument(s) {unknown}; layer names: "
                            f"{', '.join(recorded['layers'])}")
        other = {name: value for name, value in layers.items() if value != recorded["layers"][name]}
        if other:
            raise NetworkMismatchError(f"{directory} was fitted on the network cut at {recorded['layers']}; got "
                                       f"{other}. A fitted GROOD works only on the network (and layers) it was "
                                       "fitted on")
        found = network_identity(model, recorded["layers"])
        for key, what in (("class", "class"), ("state_dict_sha256", "weights (sha256 of the state_dict)")):
            if found[key] != recorded[key]:
                raise NetworkMismatchError(
                    f"{directory} was fitted on another network: its {what} {recorded[key]!r} != the given model's "
                    f"{found[key]!r}. A fitted GROOD works only on the network it was fitted on: load it onto that "
                    "network, or fit a new one")
        settings = meta["settings"]
        normalization = settings["normalization"]
        detector = cls(model, **recorded["layers"], prototype=settings["prototype"],
                       prototype_params=settings["prototype_params"], batch_size=settings["batch_size"],
                       seed=settings["seed"], normalization=None if normalization is None else tuple(normalization),
                       device=device, progress=progress)
        detector.detector = FeatureGROOD.load(directory / _DETECTOR_DIR, device=detector.device, progress=progress)
        detector.ood_prototype = detector.detector.ood_prototype
        if detector.detector.dim != detector.network.feature_dim:
            raise NetworkMismatchError(f"{directory}: fitted on {detector.detector.dim}-d features, but the network "
                                       f"gives {detector.network.feature_dim}-d ones")
        return detector


def _with_labels(items: ImageItems | None) -> Any:
    """``() -> (items, labels [N])`` for the strategies that sample by class, or None."""
    return None if items is None else (lambda: (items, items.labels()))

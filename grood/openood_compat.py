"""GROOD as an OpenOOD v1.5 postprocessor: ``Evaluator(net, id_name, postprocessor=GROODPostprocessor())``.

A thin adapter over grood's one GROOD: ``setup`` builds the OOD prototype with the strategy registry
(:func:`grood.method.strategies.build_ood_prototype`) and fits :class:`grood.method.detector.GROOD`;
``postprocess`` scores with it; ``set_hyperparam`` re-fits what a changed parameter needs.

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
- Plain loaders too: batches (and dataset items) may be ``(images, labels)`` pairs as well as OpenOOD's dicts.
- Any network (:func:`grood.backbones.openood_net.as_split_network`): OpenOOD's five, a grood
  :class:`~grood.backbones.base.SplitNetwork`, or any classifier split by layer name (:func:`grood.wrap`).
- The training set is read once; its penultimate features, logits and labels are kept, so a changed
  hyper-parameter re-fits only what it needs (``k`` re-uses the index; a prototype parameter
  recomputes the OOD prototype and the training gradients; an index parameter rebuilds the index).
- ``set_hyperparam`` maps list positions to ``args_dict``'s keys explicitly, and also takes a dict of
  named parameters (recommended).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from grood.backbones.base import SplitNetwork
from grood.backbones.openood_net import as_split_network
from grood.device import module_device, resolve_device
from grood.features import SplitOutputs, forward_pass
from grood.method.detector import GROOD, NotFittedError
from grood.method.prototypes import class_prototypes
from grood.method.strategies import (
    FILTER_PARAMS, SINGLE_PROTOTYPE, STRATEGIES, STRATEGY_PARAMS, build_ood_prototype, strategy_params,
)
from grood.prototype_inputs import ImageItems, TrainingPass, find_normalization, prototype_inputs, read_batch
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
    "DEFAULTS", "OPENOOD_AVAILABLE", "PROTOTYPES", "SWEEPABLE", "BasePostprocessor", "FallbackBasePostprocessor",
    "GROODPostprocessor", "find_normalization", "run_inference",
]

#: The strategies offered: not the oracles (their images must be held out of the scored sets; OpenOOD cannot).
PROTOTYPES = SINGLE_PROTOTYPE


def _shared_default(name: str) -> Any:
    """A strategy parameter's default where every strategy that reads it agrees (the filter's: its own),
    else None (= each strategy's own default, e.g. ``num_images``)."""
    if name in FILTER_PARAMS:
        return FILTER_PARAMS[name]
    defaults = {repr(s.params[name]): s.params[name] for s in STRATEGIES.values() if name in s.params}
    return next(iter(defaults.values())) if len(defaults) == 1 else None


#: Every named parameter of :class:`GROODPostprocessor` and its default.
DEFAULTS: dict[str, Any] = {
    "prototype": "mixup", **{name: _shared_default(name) for name in STRATEGY_PARAMS},
    "index": "exact", "index_params": None, "k": 1, "fit_on": "all", "split_block": None,
    "early_layer": None, "feature_layer": None, "head_layer": None,
    "batch_size": 128, "device": None, "seed": 0, "progress": True,
}
#: Parameters ``set_hyperparam`` / a sweep may change, in the order ``get_hyperparam`` lists them.
SWEEPABLE = ("prototype", *STRATEGY_PARAMS, "split_block", "seed", "fit_on", "index", "index_params", "k")
#: Parameters of the GROOD fit itself (a change recomputes the training gradients and rebuilds the index).
_INDEX_INPUTS = {"fit_on", "index", "index_params"}


class _Unset:
    """Marks a named parameter the caller did not give (so OpenOOD's config may supply it)."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


# --------------------------------------------------------------------------- batches
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
        data, label = read_batch(batch, "inference")
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
        return run_inference(self.postprocess, net, data_loader, module_device(net), progress)


#: OpenOOD's ``BasePostprocessor`` when ``openood`` imports, else :class:`FallbackBasePostprocessor`.
BasePostprocessor: type = _OpenOODBasePostprocessor if OPENOOD_AVAILABLE else FallbackBasePostprocessor


# --------------------------------------------------------------------------- data
def _loader_dataset(loaders: Mapping[str, Any] | None, key: str, name: str, required: bool) -> ImageItems | None:
    """``loaders[key].dataset`` (items: ``(image, label)`` pairs or OpenOOD's dicts) as
    :class:`~grood.prototype_inputs.ImageItems`; None (or an error when ``required``) if absent."""
    loader = loaders.get(key) if isinstance(loaders, Mapping) else None
    if loader is None:
        if not required:
            return None
        found = sorted(loaders) if isinstance(loaders, Mapping) else type(loaders).__name__
        raise ValueError(f"{name}[{key!r}] is missing (found {found}); OpenOOD's Evaluator passes it to setup()")
    if not isinstance(loader, DataLoader):
        raise TypeError(f"{name}[{key!r}] must be a torch DataLoader; got {type(loader).__name__}")
    return ImageItems(loader.dataset, f"{name}[{key!r}]")


# --------------------------------------------------------------------------- parameters
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_params(params: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first parameter whose value cannot work. GROOD's own parameters are
    checked by :meth:`GROOD.check_params`, the prototype's by :func:`strategy_params`; the rest here."""

    def bad(name: str, expected: str) -> ValueError:
        return ValueError(f"GROODPostprocessor parameter {name}={params[name]!r}: expected {expected}")

    if params["prototype"] not in PROTOTYPES:
        oracle = params["prototype"] in STRATEGIES
        raise bad("prototype", f"one of {', '.join(PROTOTYPES)}" + (
            " (an oracle prototype needs its images held out of the scored OOD set, which OpenOOD's Evaluator "
            "cannot do; grood's pipeline runs it: prototype=local_oracle)" if oracle else ""))
    try:
        strategy_params(params["prototype"], {name: params[name] for name in STRATEGY_PARAMS})
        GROOD.check_params(index=params["index"], k=params["k"], index_params=params["index_params"],
                           fit_on=params["fit_on"], batch_size=params["batch_size"])
    except ValueError as error:
        raise ValueError(f"GROODPostprocessor: {error}") from error
    if params["split_block"] is not None and not (_is_int(params["split_block"]) and params["split_block"] >= 0):
        raise bad("split_block", "None (the network's default) or an integer >= 0")
    for name in ("early_layer", "feature_layer", "head_layer"):
        if params[name] is not None and not isinstance(params[name], str):
            raise bad(name, "None or a submodule name such as 'layer1'")
    if not _is_int(params["seed"]):
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
        prototype: the OOD-prototype strategy (:mod:`grood.method.strategies`): ``"mixup"`` (eq. 9, the
            paper's default), ``"uniform"``, ``"val_ood"`` (images of ``ood_loader_dict['val']``),
            ``"corrupted"`` (of ``id_loader_dict['val']``, ``source="synthetic"``: OpenOOD passes no real
            corrupted images) or ``"mean"``.
        mixup_lambda, num_images, keep, corruptions, source, filter_quantile, min_keep: the strategies'
            parameters (each reads its own; None = its default); ``filter_quantile``: section 5.2's filter.
        index: eq. 6's nearest-neighbour index: ``"exact"`` (the fastest exact search), ``"faiss_flat"``,
            ``"ivf"`` (appendix A.4), ``"torch"`` or ``"faiss_ivf"`` (FAISS IndexIVFFlat, the author's cell
            rule). The author's OpenOOD configuration
            (``method=grood_openood`` in the pipeline): ``prototype="val_ood", num_images=200, fit_on="correct",
            index="faiss_ivf"``.
        index_params: the index's arguments, e.g. ``{"nlist": 256, "nprobe": 8}`` for ``"ivf"``, or
            ``{"norm_pruning": True}`` for ``"torch"`` (exact, skips gradients out of reach by norm).
        k: score with the ``k``-th nearest training gradient (Fig. 5).
        fit_on: index the gradients of ``"all"`` training images or of the ``"correct"``-ly classified ones.
        split_block: where ``f_early`` ends (None = the network's default, after the first block).
        early_layer, feature_layer, head_layer: split a network that is neither a grood SplitNetwork nor
            one of OpenOOD's five by these submodule names (:func:`grood.wrap`).
        batch_size: images per batch in the passes this postprocessor runs itself (training set, mixup,
            uniform noise, validation images); OpenOOD's loaders keep theirs for inference.
        device: where the network and GROOD run; None = the device of the network's parameters.
        seed: seeds the strategies' samples (mixup images, noise, validation images).
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
        mixup_lambda: float | None = _UNSET,
        num_images: int | None = _UNSET,
        keep: int | None = _UNSET,
        corruptions: Sequence[str] | None = _UNSET,
        source: str | None = _UNSET,
        filter_quantile: float | None = _UNSET,
        min_keep: int | None = _UNSET,
        index: str = _UNSET,
        index_params: Mapping[str, Any] | None = _UNSET,
        k: int = _UNSET,
        fit_on: str = _UNSET,
        split_block: int | None = _UNSET,
        early_layer: str | None = _UNSET,
        feature_layer: str | None = _UNSET,
        head_layer: str | None = _UNSET,
        batch_size: int = _UNSET,
        device: str | torch.device | None = _UNSET,
        seed: int = _UNSET,
        progress: bool = _UNSET,
        sweep: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__(config)
        named = {name: value for name, value in locals().items() if name in DEFAULTS and value is not _UNSET}
        section = _config_section(config)
        params = {**DEFAULTS, **_config_args(section), **named}
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
        self._loaders: dict[str, ImageItems | None] = {}
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
        The strategy then reads what it needs: "mixup" runs the network once more over the (sampled)
        training images (eq. 9), "val_ood" over ``num_images`` images of ``ood_loader_dict['val']``,
        "corrupted" over corrupted images of ``id_loader_dict['val']`` (whose labels it reads item by
        item), "uniform" over its own noise images.
        """
        self._loaders = {
            "train": _loader_dataset(id_loader_dict, "train", "id_loader_dict", required=True),
            "id_val": _loader_dataset(id_loader_dict, "val", "id_loader_dict", required=False),
            "ood_val": _loader_dataset(ood_loader_dict, "val", "ood_loader_dict", required=False),
        }
        self._num_workers = loader_workers(int(getattr(id_loader_dict["train"], "num_workers", 0)))
        self.device = (resolve_device(self.params["device"]) if self.params["device"] is not None
                       else module_device(net))
        network = as_split_network(
            net, self.params["split_block"], early_layer=self.params["early_layer"],
            feature_layer=self.params["feature_layer"], head_layer=self.params["head_layer"],
        )
        self._new_detector().check_index(network.feature_dim)  # before any forward pass: e.g. scan='int8' on CUDA
        self.network = network.to(self.device).eval()
        self._source_net = net
        self.train_outputs = None
        self.ood_prototype = None
        self.detector = None
        self._early_split = None
        self._refit(changed=set(SWEEPABLE))

    def _mixup_may_be_needed(self) -> bool:
        return self.params["prototype"] == "mixup" or "mixup" in self.args_dict.get("prototype", [])

    def _prototype_depends_on(self, strategy: str) -> set[str]:
        """The parameters whose change recomputes the OOD prototype of ``strategy``."""
        spec = STRATEGIES[strategy]
        return ({"prototype", *spec.params, "filter_quantile", "min_keep"} | ({"seed"} if spec.uses_seed else set())
                | ({"split_block"} if strategy == "mixup" else set()))

    def _refit(self, changed: set[str]) -> None:
        """Bring the training pass, the OOD prototype and the GROOD fit up to date with ``self.params``,
        redoing only what the parameters in ``changed`` (and missing state) require."""
        strategy = self.params["prototype"]
        needs_early = strategy == "mixup" and (
            self.train_outputs is None or self.train_outputs.early_sums is None
            or self._early_split != self.network.split_block)
        if self.train_outputs is None or needs_early:
            self._extract_train(accumulate_early=self._mixup_may_be_needed())
        redo_prototype = (self.ood_prototype is None or needs_early
                          or bool(changed & self._prototype_depends_on(strategy)))
        if redo_prototype:
            self.ood_prototype = self._compute_ood_prototype()
        if self.detector is None or redo_prototype or changed & _INDEX_INPUTS:
            self._fit_detector()
        elif "k" in changed:
            self._set_k(self.params["k"])

    def _extract_train(self, accumulate_early: bool) -> None:
        """One pass over the training images: logits, penultimate features, labels (+ early-layer sums)."""
        loader = DataLoader(self._loaders["train"], batch_size=self.params["batch_size"], shuffle=False,
                            num_workers=self._num_workers, pin_memory=self.device.type == "cuda")
        self.train_outputs = forward_pass(
            self.network, loader, num_classes=self.network.num_classes, accumulate_early=accumulate_early,
            device=self.device, progress=self.params["progress"], description="GROOD: training set",
        )
        self._early_split = self.network.split_block if accumulate_early else None

    def _compute_ood_prototype(self) -> torch.Tensor:
        """``[D]`` the OOD prototype of ``params['prototype']``, by the strategy registry."""
        train = self.train_outputs.features
        run = dict(batch_size=self.params["batch_size"], num_workers=self._num_workers, device=self.device,
                   progress=self.params["progress"])
        ood_val, id_val = self._loaders["ood_val"], self._loaders["id_val"]
        inputs = prototype_inputs(
            class_prototypes(train.features, train.labels, self.network.num_classes),
            network=self.network,
            training=lambda: TrainingPass(self._loaders["train"], train.logits, train.labels,
                                          self.train_outputs.early_prototypes()),
            image_shape=lambda: tuple(self._loaders["train"][0][0].shape),
            normalization=self._normalization,
            id_validation=None if id_val is None else (lambda: (id_val, id_val.labels())),
            val_ood=None if ood_val is None else (lambda: ood_val),
            seed=int(self.params["seed"]), **run,
            advice={
                "val_ood": "it needs OOD validation images, ood_loader_dict['val'] (OpenOOD's Evaluator passes them), "
                           "but setup() got none; choose prototype='mixup', 'mean' or 'uniform'",
                "corrupted_id": "OpenOOD's setup() passes no real corrupted ID images (CIFAR-10-C, ...); set "
                                "source='synthetic' to corrupt id_loader_dict['val'] in code",
                "id_validation": "it needs ID validation images, id_loader_dict['val'] (OpenOOD's Evaluator passes "
                                 "them), but setup() got none; choose prototype='mixup', 'mean' or 'uniform'",
            },
        )
        return build_ood_prototype(self.params["prototype"], inputs,
                                   {name: self.params[name] for name in STRATEGY_PARAMS})

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The training images' normalisation, for images grood makes itself (else the network's own)."""
        found = find_normalization(self._loaders["train"].dataset)
        if found is not None:
            return found
        mean, std = tuple(self.network.input_mean), tuple(self.network.input_std)
        log.warning("prototype=%r: no torchvision Normalize found in id_loader_dict['train']'s dataset; "
                    "normalising the images grood makes with %s's mean %s and std %s",
                    self.params["prototype"], type(self.network).__name__, mean, std)
        return mean, std

    def _fit_detector(self) -> None:
        """Algorithm 1 on the kept training features: class prototypes, eq. 5 gradients, eq. 6 index."""
        detector = self._new_detector()
        detector.fit(self.train_outputs.features, ood_prototype=self.ood_prototype)
        detector.progress = False  # no bar per inference batch
        self.detector = detector

    def _new_detector(self) -> GROOD:
        """An unfitted GROOD detector with this postprocessor's parameters, on its device."""
        return GROOD(index=self.params["index"], k=int(self.params["k"]),
                     index_params=dict(self.params["index_params"] or {}), fit_on=self.params["fit_on"],
                     device=self.device, progress=self.params["progress"])

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

        ``k`` re-uses the index; ``prototype``, a parameter the current strategy reads, ``seed`` (for the
        strategies that sample) and ``split_block`` (mixup; a new one also re-reads the training set for
        the early prototypes) recompute the OOD prototype, then the training gradients and the index;
        ``fit_on``, ``index`` and ``index_params`` recompute the training gradients and rebuild the index.
        Before :meth:`setup` the values are only stored.
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


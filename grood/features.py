"""The one forward pass per (network, dataset split), and its on-disk cache.

Every detector reads the same network outputs, so the network runs once per split: one pass gives
logits ``[N, C]``, penultimate features ``[N, D]`` and labels ``[N]`` (a
:class:`~grood.featureset.FeatureSet`) and, for the ID training split, the per-class sums of the
early-layer feature maps that GROOD's mixup prototype needs (paper eq. 7 at ``l = early``). Early maps
are accumulated on the fly and never stored for the whole split.

Cache entries are keyed by everything that changes the outputs (checkpoint hash, image-list hash,
transform, backbone and split settings); writes are atomic, so a killed run leaves either the old
state or a complete entry, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from grood.device import resolve_device
from grood.featureset import FeatureSet
from grood.io import atomic_write, write_json
from grood.method.prototypes import ClassMeanAccumulator
from grood.progress import track
from grood.resources import loader_workers

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass
class SplitOutputs:
    """What one pass over one split produces.

    Attributes:
        features: logits ``[N, C]``, penultimate features ``[N, D]``, labels ``[N]``.
        early_sums: ``[C, *S]`` float64 per-class sums of early feature maps (train split only), else None.
        early_counts: ``[C]`` int64 samples per class behind ``early_sums``, else None.
    """

    features: FeatureSet
    early_sums: torch.Tensor | None = None
    early_counts: torch.Tensor | None = None

    def early_prototypes(self) -> torch.Tensor:
        """``[C, *S]`` class prototypes at the early layer (eq. 7, ``l = early``)."""
        if self.early_sums is None or self.early_counts is None:
            raise ValueError(
                "these outputs carry no early-layer class sums; extract the ID training split with "
                "accumulate_early=True"
            )
        empty = (self.early_counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"no training sample for class(es) {empty}: their early-layer prototype is undefined")
        shape = (-1,) + (1,) * (self.early_sums.dim() - 1)
        return (self.early_sums / self.early_counts.to(self.early_sums.dtype).view(shape)).float()


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable hex key for the settings ``parts`` (JSON-serialisable values only)."""
    try:
        text = json.dumps(dict(parts), sort_keys=True, default=str)
    except TypeError as error:  # pragma: no cover - default=str makes this unreachable in practice
        raise ValueError(f"cache key parts must be JSON-serialisable: {error}") from error
    return hashlib.sha256(f"v{CACHE_FORMAT_VERSION}:{text}".encode()).hexdigest()[:32]


class FeatureCache:
    """A folder of cached :class:`SplitOutputs`, one ``<key>.pt`` file per entry."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> SplitOutputs | None:
        """The entry for ``key``, or None when absent or unreadable (it is then recomputed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            features = FeatureSet(blob["logits"], blob["features"], blob["labels"])
        except Exception as error:  # a corrupt entry is recomputed, with a visible warning
            log.warning("feature cache entry %s is unreadable (%s); recomputing it", path, error)
            return None
        return SplitOutputs(features, blob.get("early_sums"), blob.get("early_counts"))

    def save(self, key: str, outputs: SplitOutputs, parts: Mapping[str, Any] | None = None) -> Path:
        """Write the entry atomically (temporary file in the same folder, then ``os.replace``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        blob = {
            "logits": outputs.features.logits.cpu(),
            "features": outputs.features.features.cpu(),
            "labels": outputs.features.labels.cpu(),
            "early_sums": None if outputs.early_sums is None else outputs.early_sums.cpu(),
            "early_counts": None if outputs.early_counts is None else outputs.early_counts.cpu(),
        }
        path = self.path(key)
        with atomic_write(path, "wb") as handle:
            torch.save(blob, handle)
        if parts is not None:
            write_json(self.root / f"{key}.json", dict(parts))
        return path


    def prototype_path(self, key: str) -> Path:
        return self.root / "prototypes" / f"{key}.pt"

    def load_prototype(self, key: str) -> torch.Tensor | None:
        """The cached OOD prototype ``[D]`` for ``key``, or None when absent or unreadable (recomputed)."""
        path = self.prototype_path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["prototype"]
        except Exception as error:  # a corrupt entry is recomputed, with a visible warning
            log.warning("prototype cache entry %s is unreadable (%s); recomputing it", path, error)
            return None

    def save_prototype(self, key: str, prototype: torch.Tensor, parts: Mapping[str, Any]) -> Path:
        """Write an OOD prototype ``[D]`` atomically, with the settings that determined it beside it."""
        path = self.prototype_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as handle:
            torch.save({"prototype": prototype.detach().cpu()}, handle)
        write_json(path.with_suffix(".json"), dict(parts))
        return path


@torch.no_grad()
def forward_pass(
    network: torch.nn.Module,
    loader: DataLoader,
    *,
    num_classes: int | None = None,
    accumulate_early: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "forward pass",
) -> SplitOutputs:
    """Run ``network`` (a :class:`grood.backbones.base.SplitNetwork`) once over ``loader``.

    Args:
        network: exposes ``early``, ``mid`` and ``head`` (paper eq. 1); put in eval mode here.
        loader: yields ``(images [B, 3, H, W], labels [B])``.
        num_classes: ``C``; required with ``accumulate_early``.
        accumulate_early: also sum the early feature maps per true label (ID training split).
    Returns:
        :class:`SplitOutputs` on the CPU.
    """
    if accumulate_early and num_classes is None:
        raise ValueError("forward_pass(accumulate_early=True) needs num_classes")
    device = resolve_device(device)
    network = network.to(device).eval()
    logits, features, labels = [], [], []
    accumulator: ClassMeanAccumulator | None = None
    for images, batch_labels in track(loader, description, progress):
        images = images.to(device, non_blocking=True)
        h_early = network.early(images)
        h_pen = network.mid(h_early)
        logits.append(network.head(h_pen).float().cpu())
        features.append(h_pen.float().cpu())
        labels.append(torch.as_tensor(batch_labels).long().cpu())
        if accumulate_early:
            if accumulator is None:
                accumulator = ClassMeanAccumulator(num_classes, tuple(h_early.shape[1:]), device=device)
            accumulator.update(h_early, torch.as_tensor(batch_labels).to(device))
    if not features:
        raise ValueError(f"{description}: the data loader yielded no batch (empty image list?)")
    outputs = SplitOutputs(FeatureSet(torch.cat(logits), torch.cat(features), torch.cat(labels)))
    if accumulator is not None:
        outputs.early_sums = accumulator.sums.cpu()
        outputs.early_counts = accumulator.counts.cpu()
    return outputs


def extract_split(
    network: torch.nn.Module,
    dataset: Dataset,
    *,
    cache: FeatureCache | None,
    key_parts: Mapping[str, Any],
    num_classes: int | None = None,
    accumulate_early: bool = False,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "forward pass",
) -> SplitOutputs:
    """Cached :func:`forward_pass`: a second call with the same ``key_parts`` does not touch the network.

    ``key_parts`` must name everything that changes the outputs: checkpoint hash, image-list hash,
    transform, backbone name and split. ``accumulate_early`` is added to the key automatically.
    """
    parts = {**dict(key_parts), "accumulate_early": bool(accumulate_early)}
    key = cache_key(parts)
    if cache is not None:
        cached = cache.load(key)
        if cached is not None:
            log.info("%s: reusing cached features %s", description, cache.path(key))
            return cached
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=loader_workers(num_workers),
        pin_memory=resolve_device(device).type == "cuda",
    )
    outputs = forward_pass(
        network,
        loader,
        num_classes=num_classes,
        accumulate_early=accumulate_early,
        device=device,
        progress=progress,
        description=description,
    )
    if cache is not None:
        cache.save(key, outputs, parts)
    return outputs

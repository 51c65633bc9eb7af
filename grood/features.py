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
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from grood.device import resolve_device
from grood.feature_store import (ArraySpec, CacheSpaceError, EntryLayout, ShardedEntry, check_free_space, free_bytes,
                                 is_no_space, no_space_message)
from grood.featureset import FeatureSet
from grood.io import atomic_write, write_json
from grood.method.prototypes import PresentClassSums
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


#: Default batches per cache shard (config key ``cache.shard_batches``): a shard holds
#: ``shard_batches * batch_size`` rows, written to disk as soon as they are computed.
DEFAULT_SHARD_BATCHES = 64
_ROW_ARRAYS = ("logits", "features", "labels")
#: A shard's own arrays with early-layer sums: ``early_classes [K]`` (the classes among its rows), ``early_sums
#: [K, *S]`` float64 and ``early_counts [K]`` int64 (rows of ``early_classes``).
_EARLY_ARRAYS = ("early_classes", "early_sums", "early_counts")


class FeatureCache:
    """A folder of cached :class:`SplitOutputs`: one :class:`~grood.feature_store.ShardedEntry` folder per key
    (``.npy`` arrays, memory-mapped on load, sha256 per shard), and OOD prototypes under ``prototypes/``.

    What is stored, and at which precision: every split's logits ``[N, C]`` and features ``[N, D]`` as float32
    (what the network's pass produces; every split's logits are read: the ID accuracy and every logit-based
    baseline read the test and OOD sets', GROOD's predictions and OpenMax's class means the training set's,
    ReAct and the parameter search the validation sets'; float16 would change the scores), labels ``[N]`` as
    int64, and for the training split each shard's float64 early-layer class sums and int64 counts, of the
    classes among that shard's rows only (``early_classes [K]``, ``early_sums [K, *S]``, ``early_counts [K]``).

    Entries whose shards hold dense early-layer sums ``[C, *S]`` (the layout before this one) are not read: the
    log says so and the entry is extracted again.

    Entries of the old format (``<key>.pt``, a torch file that can execute code on load) are never loaded:
    the entry is recomputed in this format, with a note.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The entry's folder."""
        return self.root / key

    def entry(self, key: str) -> ShardedEntry:
        return ShardedEntry(self.path(key))

    def _note_legacy(self, legacy: Path) -> None:
        if legacy.exists():
            log.warning("%s is a cache entry of the old torch format: it is never loaded (a torch file can "
                        "execute code on load) and is recomputed as %s; delete the .pt file to free its space",
                        legacy, legacy.with_suffix(""))

    def load(self, key: str, early: bool = True) -> SplitOutputs | None:
        """The complete entry for ``key`` as memory-mapped, read-only tensors, after every shard's checksum
        is verified; None when absent, incomplete or damaged (a damaged shard is reported and only it is
        recomputed). ``early=False``: leave an entry's early-layer class sums unread (``early_sums`` None;
        their dense ``[C, *S]`` float64 sum is GBs at ImageNet size)."""
        entry = self.entry(key)
        layout = entry.layout()
        if layout is None:
            self._note_legacy(self.root / f"{key}.pt")
            return None
        problems = entry.verify(layout)
        if problems:
            log.warning("feature cache entry %s is damaged; recomputing what does not match:\n  %s",
                        entry.folder, "\n  ".join(problems))
            if any("unreadable" in p or "entry.json says" in p for p in problems):
                shutil.rmtree(entry.folder, ignore_errors=True)
            return None
        if len(entry.complete_shards(layout)) < layout.num_shards:
            return None
        arrays = entry.open_arrays(layout)
        outputs = SplitOutputs(FeatureSet(arrays["logits"], arrays["features"], arrays["labels"]))
        if early and "early_sums" in layout.own_arrays:
            outputs.early_sums, outputs.early_counts = _early_class_sums(entry, layout)
        return outputs

    def save(self, key: str, outputs: SplitOutputs, parts: Mapping[str, Any] | None = None) -> Path:
        """Write in-memory ``outputs`` as one complete entry of one shard (checked for space first); of the
        early-layer sums ``[C, *S]``, the rows of the classes with samples are stored."""
        features = outputs.features
        early: dict[str, np.ndarray] = {}
        early_shape = None
        if outputs.early_sums is not None:
            counts = outputs.early_counts.cpu()
            classes = (counts != 0).nonzero().flatten()
            early = {"early_classes": classes.numpy(), "early_sums": outputs.early_sums.cpu()[classes].numpy(),
                     "early_counts": counts[classes].numpy()}
            early_shape = (int(counts.shape[0]), tuple(outputs.early_sums.shape[1:]))
        layout = _layout(len(features), len(features), features.num_classes, features.dim, early_shape)
        needed = layout.shard_bytes(0, len(early.get("early_classes", ())))
        entry = self.entry(key)
        check_free_space(self.root, needed, f"feature cache entry {key}")
        with _space_errors(self.root, needed, f"feature cache entry {key}"):
            entry.create(layout, parts or {})
            entry.write_shard(layout, 0, {name: getattr(features, name).cpu().numpy() for name in _ROW_ARRAYS},
                              early)
        return entry.folder

    def prototype_path(self, key: str) -> Path:
        return self.root / "prototypes" / f"{key}.npy"

    def load_prototype(self, key: str) -> torch.Tensor | None:
        """The cached OOD prototype ``[D]`` for ``key``, or None when absent, unreadable or not matching its
        checksum (it is then recomputed, with a warning)."""
        path = self.prototype_path(key)
        record_path = path.with_suffix(".json")
        if not path.exists() or not record_path.exists():
            self._note_legacy(path.with_suffix(".pt"))
            return None
        try:
            expected = json.loads(record_path.read_text()).get("sha256")
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # a corrupt entry is recomputed, with a visible warning
            log.warning("prototype cache entry %s is unreadable (%s); recomputing it", path, error)
            return None
        if hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != expected:
            log.warning("prototype cache entry %s does not match its sha256 checksum (%s); recomputing it",
                        path, record_path.name)
            return None
        return torch.from_numpy(array)

    def save_prototype(self, key: str, prototype: torch.Tensor, parts: Mapping[str, Any]) -> Path:
        """Write an OOD prototype ``[D]`` atomically (``.npy``), then its record: the settings that determined
        it and its sha256 (the record is written last: a prototype without one is never read)."""
        path = self.prototype_path(key)
        array = np.ascontiguousarray(prototype.detach().cpu().numpy())
        with _space_errors(path.parent, array.nbytes, f"OOD prototype {key}"):
            with atomic_write(path, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            write_json(path.with_suffix(".json"), {"parts": dict(parts),
                                                   "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
        return path


def _layout(rows: int, shard_rows: int, num_classes: int, dim: int,
            early: tuple[int, tuple[int, ...]] | None) -> EntryLayout:
    """The entry layout of a split of ``rows`` samples (see :class:`FeatureCache` for what is stored);
    ``early``: ``(C, S)`` of the early-layer class sums, or None."""
    arrays = {"logits": ArraySpec((num_classes,), "float32"), "features": ArraySpec((dim,), "float32"),
              "labels": ArraySpec((), "int64")}
    if early is None:
        return EntryLayout(rows, shard_rows, arrays, {})
    own = {"early_classes": ArraySpec((), "int64"), "early_sums": ArraySpec(tuple(early[1]), "float64"),
           "early_counts": ArraySpec((), "int64")}
    return EntryLayout(rows, shard_rows, arrays, own, num_classes=int(early[0]))


def _early_class_sums(entry: ShardedEntry, layout: EntryLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, *S]`` float64 early-layer sums and ``[C]`` int64 counts of the whole split, from every shard's
    ``K`` classes.

    Added shard by shard in shard order (the same bits whichever process computed which shard), and the same
    bits as adding dense ``[C, *S]`` per-shard sums: a class gets the same additions in the same order, and
    the zeros of a shard without the class change no bit (a sum that starts at +0.0 is never -0.0).
    """
    spec = layout.own_arrays["early_sums"]
    sums = torch.zeros((layout.num_classes, *spec.row_shape), dtype=torch.float64)
    counts = torch.zeros(layout.num_classes, dtype=torch.long)
    for shard in range(layout.num_shards):
        own = {name: torch.from_numpy(array) for name, array in entry.own_arrays(layout, shard).items()}
        classes = own["early_classes"]
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= layout.num_classes
                                or torch.unique(classes).numel() != classes.numel()):
            raise ValueError(f"feature cache entry {entry.folder}: {entry.own_array_path(shard, 'early_classes')} "
                             f"holds {classes.tolist()[:10]}, not distinct classes in 0..{layout.num_classes - 1}; "
                             "delete the entry folder to extract it again")
        sums.index_add_(0, classes, own["early_sums"])
        counts.index_add_(0, classes, own["early_counts"])
    return sums, counts


def _own_rows_estimate(dataset: Dataset, layout: EntryLayout, shard: int) -> int:
    """``K``, the early-layer class rows shard ``shard`` will store: the distinct labels among its rows when
    ``dataset`` has a ``labels`` attribute ``[N]`` (as :class:`~grood.data.imagelist.ImageListDataset`),
    else the bound ``min(C, rows of the shard)``; 0 without early-layer sums."""
    if not layout.own_arrays:
        return 0
    start, stop = layout.shard_range(shard)
    bound = min(layout.num_classes, stop - start)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, (torch.Tensor, np.ndarray, Sequence)) and len(labels) == len(dataset):
        return min(bound, int(np.unique(np.asarray(labels[start:stop])).size))
    return bound


@contextmanager
def _space_errors(folder: Path, needed: int, what: str) -> Iterator[None]:
    """Turn a full disk's ``OSError`` (ENOSPC, EDQUOT) into one :class:`CacheSpaceError` line."""
    try:
        yield
    except OSError as error:
        if isinstance(error, CacheSpaceError) or not is_no_space(error):
            raise
        raise CacheSpaceError(no_space_message(folder, needed, free_bytes(folder), what)) from None


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
        :class:`SplitOutputs` on the CPU (early-layer sums ``[C, *S]``, zero for a class without samples).
    """
    features, early = forward_pass_sparse(network, loader, num_classes=num_classes,
                                          accumulate_early=accumulate_early, device=device, progress=progress,
                                          description=description)
    outputs = SplitOutputs(features)
    if early is not None:
        outputs.early_sums, outputs.early_counts = early.dense(device="cpu")
    return outputs


@torch.no_grad()
def forward_pass_sparse(
    network: torch.nn.Module,
    loader: DataLoader,
    *,
    num_classes: int | None = None,
    accumulate_early: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "forward pass",
) -> tuple[FeatureSet, PresentClassSums | None]:
    """:func:`forward_pass` with the early-layer sums of the classes present only: what a cache shard stores.

    Returns:
        the :class:`~grood.featureset.FeatureSet` on the CPU, and with ``accumulate_early`` a
        :class:`~grood.method.prototypes.PresentClassSums` (``classes [K]``, ``sums [K, *S]``, ``counts [K]``,
        on ``device``), else None.
    """
    if accumulate_early and num_classes is None:
        raise ValueError("forward_pass(accumulate_early=True) needs num_classes")
    device = resolve_device(device)
    network = network.to(device).eval()
    logits, features, labels = [], [], []
    accumulator: PresentClassSums | None = None
    for images, batch_labels in track(loader, description, progress):
        images = images.to(device, non_blocking=True)
        h_early = network.early(images)
        h_pen = network.mid(h_early)
        logits.append(network.head(h_pen).float().cpu())
        features.append(h_pen.float().cpu())
        labels.append(torch.as_tensor(batch_labels).long().cpu())
        if accumulate_early:
            if accumulator is None:
                accumulator = PresentClassSums(num_classes, tuple(h_early.shape[1:]), device=device)
            accumulator.update(h_early, torch.as_tensor(batch_labels).to(device))
    if not features:
        raise ValueError(f"{description}: the data loader yielded no batch (empty image list?)")
    return FeatureSet(torch.cat(logits), torch.cat(features), torch.cat(labels)), accumulator


@dataclass(frozen=True)
class ShardJobs:
    """Which cache shards of a split this process computes: shard ``s`` when ``s % count == index``
    (``count`` processes, ranks of ``torchrun`` or tasks of an array job, share every split disjointly)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard job index {self.index} must be in 0..{self.count - 1}")

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    def describe(self) -> str:
        return f"job {self.index} of {self.count}"


def extract_shards(
    network: torch.nn.Module,
    dataset: Dataset,
    *,
    cache: FeatureCache,
    key_parts: Mapping[str, Any],
    num_classes: int | None = None,
    accumulate_early: bool = False,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "forward pass",
    shard_batches: int = DEFAULT_SHARD_BATCHES,
    jobs: ShardJobs = ShardJobs(),
) -> bool:
    """Compute the shards of the entry for ``key_parts`` that ``jobs`` owns and that are not complete yet,
    each written to the cache as soon as it is computed. Returns True when the entry is complete.

    Shard ``s`` holds rows ``[s * R, (s + 1) * R)`` with ``R = shard_batches * batch_size``: its batches are
    those of one pass over the whole split, so the outputs do not depend on how the shards are shared out.
    Before the first shard, the free space the remaining shards need is checked (:class:`CacheSpaceError`):
    their rows, and their early-layer sums of the classes among their rows (known from a ``labels`` attribute
    of ``dataset``, else bounded by ``min(C, rows per shard)``).
    """
    parts = {**dict(key_parts), "accumulate_early": bool(accumulate_early)}
    key = cache_key(parts)
    entry = cache.entry(key)
    rows, shard_rows = len(dataset), int(shard_batches) * int(batch_size)
    if rows == 0:
        raise ValueError(f"{description}: the split is empty (empty image list?)")
    layout = entry.layout()
    if layout is not None and (layout.rows, layout.shard_rows) != (rows, shard_rows):
        layout = None  # started with another batch size: replaced (entry.create says so)
    num_shards = -(-rows // shard_rows)
    done = entry.complete_shards(layout) if layout is not None else set()
    todo = [shard for shard in range(num_shards) if jobs.owns(shard) and shard not in done]
    if todo:
        if layout is None:  # the arrays' shapes, from one image
            probe, early = forward_pass_sparse(network, DataLoader(Subset(dataset, [0]), batch_size=1),
                                               num_classes=num_classes, accumulate_early=accumulate_early,
                                               device=device, progress=False, description=f"{description} (array shapes)")
            layout = _layout(rows, shard_rows, probe.num_classes, probe.dim,
                             None if early is None else (early.num_classes, early.feature_shape))
        own_rows = {shard: _own_rows_estimate(dataset, layout, shard) for shard in todo}
        needed = sum(layout.shard_bytes(shard, own_rows[shard]) for shard in todo)
        what = f"{description} ({len(todo)} of {num_shards} shards of entry {key})"
        check_free_space(cache.root, needed, what)
        if done:
            log.info("%s: resuming feature cache entry %s at %d of %d complete shards", description, entry.folder,
                     len(done), num_shards)
        with _space_errors(cache.root, needed, what):
            layout = entry.create(layout, parts)
        for shard in todo:
            start, stop = layout.shard_range(shard)
            loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, shuffle=False,
                                num_workers=loader_workers(num_workers),
                                pin_memory=resolve_device(device).type == "cuda")
            features, early = forward_pass_sparse(network, loader, num_classes=num_classes,
                                                  accumulate_early=accumulate_early, device=device, progress=progress,
                                                  description=f"{description} [shard {shard + 1}/{num_shards}]")
            own = {} if early is None else {"early_classes": early.classes.cpu().numpy(),
                                            "early_sums": early.sums.cpu().numpy(),
                                            "early_counts": early.counts.cpu().numpy()}
            remaining = sum(layout.shard_bytes(s, own_rows[s]) for s in todo[todo.index(shard):])
            with _space_errors(cache.root, remaining, what):
                entry.write_shard(layout, shard, {name: getattr(features, name).numpy() for name in _ROW_ARRAYS},
                                  own, worker=jobs.describe())
    return layout is not None and len(entry.complete_shards(layout)) == layout.num_shards


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
    shard_batches: int = DEFAULT_SHARD_BATCHES,
) -> SplitOutputs:
    """Cached :func:`forward_pass`: a second call with the same ``key_parts`` does not touch the network.

    ``key_parts`` must name everything that changes the outputs: checkpoint hash, image-list hash,
    transform, backbone name and split. ``accumulate_early`` is added to the key automatically. With a
    cache, the split is computed shard by shard (:func:`extract_shards`; an interrupted pass resumes at its
    last complete shard) and returned memory-mapped from the cache (:meth:`FeatureCache.load`).
    """
    parts = {**dict(key_parts), "accumulate_early": bool(accumulate_early)}
    key = cache_key(parts)
    if cache is None:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(num_workers),
                            pin_memory=resolve_device(device).type == "cuda")
        return forward_pass(network, loader, num_classes=num_classes, accumulate_early=accumulate_early,
                            device=device, progress=progress, description=description)
    cached = cache.load(key)
    if cached is not None:
        log.info("%s: reusing cached features %s", description, cache.path(key))
        return cached
    extract_shards(network, dataset, cache=cache, key_parts=key_parts, num_classes=num_classes,
                   accumulate_early=accumulate_early, batch_size=batch_size, num_workers=num_workers, device=device,
                   progress=progress, description=description, shard_batches=shard_batches)
    outputs = cache.load(key)
    if outputs is None:
        raise RuntimeError(f"{description}: feature cache entry {cache.path(key)} was just written but does not "
                           "verify (see the warning above); is another process writing to it?")
    return outputs

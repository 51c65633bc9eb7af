"""The feature cache's on-disk format: ``.npy`` arrays, memory-mapped on load, filled shard by shard.

One entry is a folder named by its key::

    <key>/entry.json              the layout: rows N, shard_rows, every array's shape and dtype, the key parts
    <key>/features.npy            [N, D] float32 }  created at full size before the first shard (sparse), the
    <key>/logits.npy              [N, C] float32 }  rows of each shard written in place (``os.pwrite`` of
    <key>/labels.npy              [N] int64      }  disjoint byte ranges: several processes may fill one entry)
    <key>/shards/00003.json       shard 3 is complete: its rows, K and the sha256 of its bytes in every array
    <key>/shards/00003.<name>.npy a shard's own small arrays ``[K, *row_shape]``, ``K`` rows chosen per shard
                                  (the early-layer class sums of the K classes among that shard's rows)

Why ``.npy`` (and not safetensors): ``np.load(..., allow_pickle=False)`` refuses object arrays, so loading an
entry cannot execute code (a torch file can); ``np.load(mmap_mode="r")`` maps it, so a warm run reads
``[N, D]`` rows from the page cache instead of holding the split in memory; and its header has a fixed size,
so an array can be created at its full size before extraction and filled by row range while extraction runs,
from several processes at once. numpy is already a dependency; safetensors would add one and writes a file
in one piece.

A shard is complete when its record exists (written last, atomically, after its rows are on disk); an entry
is complete when every shard is. :meth:`ShardedEntry.verify` re-hashes every shard's bytes: a shard whose
bytes no longer match (overwritten in place) is reported, naming the entry, shard and array, and its record
removed so that only that shard is computed again. A killed extraction leaves complete shards and at most
one shard without a record (never read); a rerun computes only the shards without records.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from grood.io import atomic_write, write_json

log = logging.getLogger(__name__)

#: Version of the entry layout written in ``entry.json``; an entry of another version is recomputed.
STORE_FORMAT = 2
_READ_CHUNK = 16 * 2**20  # bytes hashed at a time: verification never holds a split in memory
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CacheSpaceError(OSError):
    """The cache folder lacks the free space an entry needs; the one-line message names the folder, the space
    needed and the space free."""


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num_bytes) < 1000 or unit == "TB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"  # pragma: no cover


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def no_space_message(folder: Path, needed: int, free: int, what: str) -> str:
    return (f"not enough free space in the feature cache folder {folder}: {what} needs {_size(needed)}, "
            f"{_size(free)} free; free space there or set paths.cache_dir to a folder on a larger disk")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`CacheSpaceError` (one line) when ``folder``'s disk has less than ``needed`` bytes free."""
    free = free_bytes(folder)
    if free < needed:
        raise CacheSpaceError(no_space_message(folder, needed, free, what))


@dataclass(frozen=True)
class ArraySpec:
    """One array of an entry: ``[rows, *row_shape]`` of ``dtype`` (a numpy dtype name)."""

    row_shape: tuple[int, ...]
    dtype: str

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class EntryLayout:
    """Rows ``0..rows-1`` in shards of ``shard_rows`` (the last one shorter); ``arrays``: name -> spec of the
    row-indexed arrays; ``own_arrays``: name -> spec of the small arrays each shard stores on its own, each
    ``[K, *row_shape]`` with ``K`` chosen per shard (the same for all of one shard's own arrays, written in its
    record); ``num_classes``: ``C``, the classes the rows of the own arrays belong to (0 without own arrays).

    The entry of a split with early-layer class sums has own arrays ``early_classes [K]``, ``early_sums
    [K, *S]`` and ``early_counts [K]``: only the ``K`` classes among the shard's rows (a few at ImageNet size
    when the image list is sorted by class, instead of ``C = 1000`` maps of ``[256, 56, 56]`` float64: 6.4 GB)."""

    rows: int
    shard_rows: int
    arrays: Mapping[str, ArraySpec]
    own_arrays: Mapping[str, ArraySpec]
    num_classes: int = 0

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.rows // self.shard_rows))

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(self.rows, start + self.shard_rows)

    def shard_bytes(self, shard: int, own_rows: int = 0) -> int:
        """Bytes shard ``shard`` writes: its rows of every array and ``own_rows`` (``K``) rows of each own array."""
        start, stop = self.shard_range(shard)
        return ((stop - start) * sum(spec.row_bytes for spec in self.arrays.values())
                + own_rows * sum(spec.row_bytes for spec in self.own_arrays.values()))

    def to_json(self) -> dict[str, Any]:
        def specs(arrays: Mapping[str, ArraySpec]) -> dict[str, Any]:
            return {name: {"row_shape": list(s.row_shape), "dtype": s.dtype} for name, s in arrays.items()}

        blob = {"format": STORE_FORMAT, "rows": self.rows, "shard_rows": self.shard_rows,
                "arrays": specs(self.arrays), "own_arrays": specs(self.own_arrays), "num_classes": self.num_classes}
        if not self.own_arrays:  # what the whole-array layout wrote: an entry without own arrays reads in both
            blob["shard_arrays"] = {}
        return blob

    @classmethod
    def from_json(cls, blob: Mapping[str, Any]) -> "EntryLayout":
        def specs(arrays: Mapping[str, Any]) -> dict[str, ArraySpec]:
            return {name: ArraySpec(tuple(int(n) for n in s["row_shape"]), str(s["dtype"])) for name, s in arrays.items()}

        if blob.get("format") != STORE_FORMAT:
            raise ValueError(f"format {blob.get('format')!r}, this grood writes {STORE_FORMAT}")
        if blob.get("shard_arrays"):
            raise ValueError(
                f"its per-shard arrays {sorted(blob['shard_arrays'])} are in the old dense layout (early-layer class "
                "sums [C, *S] of every class in every shard, GBs per shard at ImageNet size), which this grood no "
                "longer reads: it stores the classes present in each shard only; delete the entry folder to free "
                "its space, or let it be re-extracted")
        return cls(int(blob["rows"]), int(blob["shard_rows"]), specs(blob["arrays"]), specs(blob.get("own_arrays", {})),
                   int(blob.get("num_classes", 0)))


def _sha256_of_range(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(_READ_CHUNK, length))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
    return digest.hexdigest()


def _data_offset(path: Path) -> int:
    """Byte offset of the data in the ``.npy`` file ``path`` (after its header)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        reader(handle)
        return handle.tell()


def _bytes_of(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


class ShardedEntry:
    """One entry folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    # ------------------------------------------------------------------ layout
    def layout(self) -> EntryLayout | None:
        """The entry's layout, or None when the folder holds no readable ``entry.json`` of this format."""
        path = self.folder / "entry.json"
        if not path.is_file():
            return None
        try:
            return EntryLayout.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("feature cache entry %s: entry.json unusable (%s); the entry is recomputed", self.folder, error)
            return None

    def array_path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def record_path(self, shard: int) -> Path:
        return self.folder / "shards" / f"{shard:05d}.json"

    def own_array_path(self, shard: int, name: str) -> Path:
        return self.folder / "shards" / f"{shard:05d}.{name}.npy"

    def create(self, layout: EntryLayout, parts: Mapping[str, Any]) -> EntryLayout:
        """Create the entry with ``layout`` unless it exists; returns the layout in force.

        The folder is built aside (``entry.json`` and every array at full size, sparse) and renamed into
        place, so a concurrent creator (another rank) either wins or finds a complete folder. An existing
        entry of another layout (e.g. started with another batch size) is removed first, with a log line.
        """
        existing = self.layout()
        if existing == layout:
            return existing
        if existing is not None or self.folder.exists():
            log.warning("feature cache entry %s was started with another layout (%s); its shards are discarded",
                        self.folder, None if existing is None else existing.to_json())
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp", dir=self.folder.parent))
        try:
            for name, spec in layout.arrays.items():  # header, then the data's full size as a hole (sparse)
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(spec.dtype)), "fortran_order": False,
                          "shape": (layout.rows, *spec.row_shape)}
                with open(temporary / f"{name}.npy", "wb") as handle:
                    np.lib.format.write_array_header_1_0(handle, header)
                    handle.truncate(handle.tell() + layout.rows * spec.row_bytes)
            (temporary / "shards").mkdir()
            write_json(temporary / "entry.json", {**layout.to_json(), "parts": dict(parts)})
            try:
                os.rename(temporary, self.folder)
            except OSError:
                if self.layout() != layout:  # not a concurrent creator's identical entry
                    raise
                shutil.rmtree(temporary, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return layout

    # ------------------------------------------------------------------ shards
    def complete_shards(self, layout: EntryLayout) -> set[int]:
        return {shard for shard in range(layout.num_shards) if self.record_path(shard).is_file()}

    def write_shard(self, layout: EntryLayout, shard: int, arrays: Mapping[str, np.ndarray],
                    own_arrays: Mapping[str, np.ndarray], worker: str = "") -> None:
        """Write shard ``shard``'s rows of every array in place, its own small arrays, then its record.

        ``arrays``: name -> ``[rows of the shard, *row_shape]``; ``own_arrays``: name -> ``[K, *row_shape]``, the
        same ``K`` for all (recorded as ``own_rows``)."""
        start, stop = layout.shard_range(shard)
        own_rows = _own_rows(self.folder, shard, layout, own_arrays)
        checksums: dict[str, str] = {}
        for name, spec in layout.arrays.items():
            array = np.asarray(arrays[name], dtype=spec.dtype)
            if array.shape != (stop - start, *spec.row_shape):
                raise ValueError(f"shard {shard} of {self.folder}: {name} has shape {array.shape}, expected "
                                 f"{(stop - start, *spec.row_shape)}")
            payload = _bytes_of(array)
            path = self.array_path(name)
            descriptor = os.open(path, os.O_WRONLY)
            try:
                offset = _data_offset(path) + start * spec.row_bytes
                written = 0
                while written < len(payload):
                    written += os.pwrite(descriptor, payload[written:], offset + written)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            checksums[name] = hashlib.sha256(payload).hexdigest()
        for name, spec in layout.own_arrays.items():
            array = np.ascontiguousarray(np.asarray(own_arrays[name], dtype=spec.dtype))
            with atomic_write(self.own_array_path(shard, name), "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            checksums[name] = hashlib.sha256(_bytes_of(array)).hexdigest()
        write_json(self.record_path(shard), {"rows": [start, stop], "own_rows": own_rows, "sha256": checksums,
                                             "worker": worker})

    def read_record(self, shard: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(shard).read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ reading
    def verify(self, layout: EntryLayout) -> list[str]:
        """Re-hash every complete shard; each mismatch is returned (naming entry, shard, array) and that
        shard's record removed, so that only it is computed again."""
        problems: list[str] = []
        offsets = {}
        for name, spec in layout.arrays.items():
            path = self.array_path(name)
            try:
                header = np.load(path, mmap_mode="r", allow_pickle=False)
                offsets[name] = _data_offset(path)
            except (OSError, ValueError) as error:
                return [f"{path} is unreadable ({error})"]
            if header.shape != (layout.rows, *spec.row_shape) or header.dtype != np.dtype(spec.dtype):
                return [f"{path} holds {header.dtype} {header.shape}, entry.json says {spec.dtype} "
                        f"{(layout.rows, *spec.row_shape)}"]
        for shard in sorted(self.complete_shards(layout)):
            start, stop = layout.shard_range(shard)
            record = self.read_record(shard)
            bad: list[str] = []
            if record is None or record.get("rows") != [start, stop]:
                bad.append("its record")
            else:
                for name, spec in layout.arrays.items():
                    got = _sha256_of_range(self.array_path(name), offsets[name] + start * spec.row_bytes,
                                           (stop - start) * spec.row_bytes)
                    if got != record["sha256"].get(name):
                        bad.append(f"{name}.npy")
                own_rows = record.get("own_rows")
                for name, spec in layout.own_arrays.items():
                    try:
                        array = np.load(self.own_array_path(shard, name), allow_pickle=False)
                        got = hashlib.sha256(_bytes_of(array)).hexdigest()
                        if array.shape != (own_rows, *spec.row_shape) or array.dtype != np.dtype(spec.dtype):
                            got = None
                    except (OSError, ValueError):
                        got = None
                    if got != record["sha256"].get(name):
                        bad.append(f"{self.own_array_path(shard, name).name}")
            if bad:
                problems.append(f"shard {shard} (rows {start}-{stop - 1}): {', '.join(bad)} does not match its "
                                "sha256 checksum")
                self.record_path(shard).unlink(missing_ok=True)
        return problems

    def open_arrays(self, layout: EntryLayout) -> dict[str, torch.Tensor]:
        """Every row-indexed array as a read-only memory-mapped tensor ``[N, *row_shape]`` (no copy)."""
        tensors = {}
        for name in layout.arrays:
            mapped = np.load(self.array_path(name), mmap_mode="r", allow_pickle=False)
            with warnings.catch_warnings():  # read-only on purpose: no consumer writes to cached features
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensors[name] = torch.from_numpy(mapped)
        return tensors

    def own_arrays(self, layout: EntryLayout, shard: int) -> dict[str, np.ndarray]:
        """Shard ``shard``'s own arrays, name -> ``[K, *row_shape]`` (read whole: they are small)."""
        return {name: np.load(self.own_array_path(shard, name), allow_pickle=False) for name in layout.own_arrays}


def _own_rows(folder: Path, shard: int, layout: EntryLayout, own_arrays: Mapping[str, np.ndarray]) -> int:
    """``K``, the rows of every own array of a shard, after checking each one's shape against ``layout``."""
    shapes = {name: tuple(np.shape(own_arrays[name])) for name in layout.own_arrays}
    rows = {shape[0] for shape in shapes.values() if shape}
    for name, spec in layout.own_arrays.items():
        if not shapes[name] or shapes[name][1:] != spec.row_shape or len(rows) != 1:
            raise ValueError(f"shard {shard} of {folder}: own arrays of shapes {shapes}; each must be "
                             f"[K, *row_shape] with the same K ({name}: row_shape {spec.row_shape})")
    return rows.pop() if rows else 0


def is_no_space(error: BaseException) -> bool:
    """True for an ``OSError`` of a full disk or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in _NO_SPACE

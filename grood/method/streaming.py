"""Reading ``[N, D]`` inputs a chunk of rows at a time, memory-mapped ones included.

The feature cache may hand the detectors read-only memory-mapped tensors (``torch.from_numpy`` over
``np.load(..., mmap_mode="r")``): an ImageNet-1k training split is 1,281,167 x 2048 float32, 10.5 GB.
Nothing here writes into an input or copies more than one chunk of it. A mapped file's pages that a chunk
read stay in the process's resident set (and count in its peak RSS) until the mapping goes, although the
kernel could drop them at any time (and a page fault maps the cached pages around it as well, 64 KB on
Linux): :class:`RowReader` hands back all of the map's pages after each read (``madvise(MADV_DONTNEED)``, which for
a file-backed mapping only unmaps them: a later read faults them in again from the page cache), so
streaming a split over and over keeps the resident set at one chunk.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator

import torch

#: Rows per chunk of the streaming helpers when the caller gives none.
DEFAULT_CHUNK_ROWS = 8192
#: Scattered rows of a memory map read between two releases of its pages (each maps up to 64 KB around it).
TAKE_BATCH = 2048

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc: ctypes.CDLL | None = None


def _file_backed_ranges() -> list[tuple[int, int]]:
    """``(start, end)`` address ranges of this process's file-backed mappings (``/proc/self/maps``)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[4] != "0" and fields[5].strip().startswith("/"):
                start, end = fields[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def is_file_mapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory lies in a file mapping (a memory-mapped ``.npy`` or safetensors file)."""
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return False
    address = tensor.data_ptr()
    return any(start <= address < end for start, end in _file_backed_ranges())


def release_pages(tensor: torch.Tensor) -> None:
    """Drop from the resident set the whole pages of a **file-mapped** CPU tensor ``tensor`` (its data is
    untouched: the pages are read again from the file on the next access). Call only on file mappings:
    :func:`is_file_mapped` decides (for anonymous memory ``MADV_DONTNEED`` would zero the pages)."""
    global _libc
    if tensor.numel() == 0:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()  # contiguous rows: the chunk's byte range
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the range only
    if last > first:
        _libc.madvise(first, last - first, _MADV_DONTNEED)


class RowReader:
    """Row chunks of ``source [N, D]`` (any dtype, possibly a read-only file mapping) as copies in ``dtype``
    (float32 by default) on ``device``; a file mapping's pages are released after each chunk is copied (see :func:`release_pages`).

    ``reader.rows(slice)`` reads consecutive rows, ``reader.take(indices [M])`` scattered ones (sorted
    first, so that each page is faulted in once).
    """

    def __init__(self, source: torch.Tensor, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype
        self.mapped = is_file_mapped(source) and source.is_contiguous()

    def rows(self, rows: slice) -> torch.Tensor:
        """``[B, D]`` copy of ``source[rows]`` in ``dtype`` (never a view of the source)."""
        out = self.source[rows].to(device=self.device, dtype=self.dtype, copy=True)
        if self.mapped:
            release_pages(self.source)  # the whole map: the kernel maps pages around each fault too
        return out

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` copy of ``source[indices]`` in ``dtype`` (``indices [M]`` int64, any order)."""
        indices = indices.to("cpu", torch.long)
        if not self.mapped:
            return self.source[indices].to(device=self.device, dtype=self.dtype)
        # a batch of rows at a time, released after each: every row faults in the cached pages around it
        # (64 KB), so one gather of many scattered rows would map gigabytes of the file at once
        out = torch.empty((indices.shape[0], *self.source.shape[1:]), dtype=self.dtype, device=self.device)
        for start in range(0, indices.shape[0], TAKE_BATCH):
            part = indices[start : start + TAKE_BATCH]
            out[start : start + part.shape[0]] = self.source[part].to(device=self.device, dtype=self.dtype)
            release_pages(self.source)
        return out

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, source[rows] in dtype)`` over all rows, ``chunk_rows`` at a time."""
        count = self.source.shape[0]
        for start in range(0, count, chunk_rows):
            rows = slice(start, min(start + chunk_rows, count))
            yield rows, self.rows(rows)


def argmax_rows(logits: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """``[N]`` int64 ``logits.argmax(dim=1)`` of ``logits [N, C]``, read a chunk of rows at a time."""
    reader = RowReader(logits)
    out = torch.empty(logits.shape[0], dtype=torch.long)
    for rows, chunk in reader.chunks(chunk_rows):
        out[rows] = chunk.argmax(dim=1)
    return out.to(logits.device)

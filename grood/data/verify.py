"""Every listed image opened and fully decoded before the first forward pass, once per file version.

:func:`verify_images` decodes each listed file (in parallel threads, as many as the run's loader workers:
Pillow decodes outside the GIL), so a corrupt JPEG, a 0-byte file, a folder listed as an image or an image
mode grood refuses (:mod:`grood.data.imagemodes`) stops the run before any feature is extracted, with every
such file of every list in one report (list, line, path, what is wrong, what to do).

What was verified is remembered beside the feature cache, in ``<cache_dir>/verified_images/``: one
``.npz`` file per (images folder, list file), written atomically, holding for each verified entry its list
path, size, modification time (ns) and image mode. A rerun decodes only the entries whose path, size or
modification time differ from the record (a replaced image, a new line): a warm rerun decodes nothing. The
record also depends on the Pillow version and on ``allow_truncated``: another one verifies anew.

The record is what the fingerprint ``(size, mtime_ns)`` says, as the feature cache's ``cache.verify=stat``:
a file rewritten with its size and modification time put back is not decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import PIL
from PIL import Image

from grood.data.imagelist import ImageListDataset, ImageListError, problems_error, truncated_images_allowed
from grood.data.imagemodes import check_mode, treatment
from grood.io import atomic_write
from grood.resources import loader_workers

log = logging.getLogger(__name__)

#: The folder under the run's ``cache_dir`` that holds the records.
VERIFIED_DIR = "verified_images"
#: Bump when what "verified" means changes (the decode or mode rules): every record is then redone.
RECORD_VERSION = 1
#: Files listed per mode in ``run.json``.
FIRST_FILES = 5
_CHUNK = 256  # entries per thread task


def decode_image(path: str) -> str:
    """Open ``path`` and decode every pixel; returns the image's effective mode (checked convertible).

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: the file is not a usable image.
    """
    with Image.open(path) as image:
        image.load()
        return check_mode(image)


def _problem(path: str, error: BaseException) -> str:
    """What is wrong with ``path`` and what to do, from the error decoding it raised."""
    if os.path.isdir(path):
        return f"{path} is a folder, not an image file; fix the path or delete the line"
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return f"{path} is empty (0 bytes); replace the file (re-download it) or delete the line"
    if isinstance(error, ValueError) and "image mode" in str(error):
        return f"{path}: {error}"
    return (f"cannot decode image {path} ({type(error).__name__}: {error}); replace the file (re-download it) "
            "or delete the line")


def _decode_chunk(paths: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """``(mode, None)`` or ``(None, problem)`` per path."""
    results: list[tuple[str | None, str | None]] = []
    for path in paths:
        try:
            results.append((decode_image(path), None))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            results.append((None, _problem(path, error)))
    return results


def record_path(record_dir: str | os.PathLike, dataset: ImageListDataset) -> Path:
    """The record file of ``dataset``: keyed by its resolved images folder and list file, the Pillow version,
    ``allow_truncated`` and :data:`RECORD_VERSION`."""
    key = "\0".join([os.path.realpath(dataset.images_dir), os.path.realpath(dataset.imglist_path),
                     PIL.__version__, str(dataset.allow_truncated), str(RECORD_VERSION)])
    name = f"{dataset.imglist_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    return Path(record_dir) / name


def _load_record(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as record:
            loaded = {key: record[key] for key in ("relative", "size", "mtime_ns", "mode")}
    except (OSError, ValueError, KeyError) as error:  # unreadable: verify anew (and rewrite it)
        log.warning("image verification record %s is unreadable (%s): the images are decoded again", path, error)
        return None
    return loaded


def _verified(dataset: ImageListDataset, record: dict[str, np.ndarray] | None) -> np.ndarray:
    """``[N]`` modes (bytes) of the entries the record verifies at their current size and mtime, ``b""`` else."""
    sizes, mtimes = dataset.file_stats()
    modes = np.full(len(dataset), b"", dtype=object)
    if record is None or len(record["relative"]) == 0:
        return modes
    relative = dataset.relative_paths_array()
    if len(record["relative"]) == len(relative) and np.array_equal(record["relative"], relative):
        order = np.arange(len(relative))  # the same list as last time: compare element by element
        found = np.ones(len(relative), dtype=bool)
    else:
        where = {bytes(path): i for i, path in enumerate(record["relative"])}
        order = np.array([where.get(bytes(path), -1) for path in relative], dtype=np.int64)
        found = order >= 0
    same = found & (record["size"][order] == sizes) & (record["mtime_ns"][order] == mtimes) & (sizes >= 0)
    modes[same] = record["mode"][order[same]]
    return modes


def verify_images(
    datasets: Mapping[str, ImageListDataset], record_dir: str | os.PathLike, num_workers: int,
) -> dict[str, Any]:
    """Decode every listed image of ``datasets`` not already verified in ``record_dir``; remember them.

    Args:
        datasets: split -> its list's dataset (existence already checked).
        record_dir: where the records live (``<cache_dir>/verified_images``).
        num_workers: the run's loader workers: the decoding threads (clamped by
            :func:`grood.resources.loader_workers`; 0 decodes in this thread).

    Returns:
        What ``run.json`` records as ``input_images``: ``images`` (listed entries), ``decoded`` (decoded now),
        ``reused`` (verified by an earlier run), ``seconds``, and ``modes``: per image mode that is not
        standard, its ``treatment``, the number of ``images`` and the ``first`` few ``"<list>:<line> <path>"``.

    Raises:
        ImageListError: every file that cannot be decoded or has a refused mode, of every list, at once.
    """
    started = time.perf_counter()
    workers = loader_workers(num_workers)
    by_list: dict[str, list[str]] = {}
    modes_of: dict[str, np.ndarray] = {}
    decoded = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, dataset in datasets.items():
            record_file = record_path(record_dir, dataset)
            modes = _verified(dataset, _load_record(record_file))
            todo = np.flatnonzero(modes == b"").tolist()
            chunks = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
            with truncated_images_allowed(dataset.allow_truncated):
                jobs = [[dataset.path(i) for i in chunk] for chunk in chunks]
                results = pool.map(_decode_chunk, jobs) if workers > 0 else map(_decode_chunk, jobs)
                problems = []
                for chunk, chunk_results in zip(chunks, results):
                    for index, (mode, problem) in zip(chunk, chunk_results):
                        if mode is not None:
                            modes[index] = mode.encode()
                        else:
                            problems.append(f"{dataset.imglist_path}, line {dataset.line_number(index)}: {problem}")
            decoded += len(todo)
            if todo:
                _write_record(record_file, dataset, modes)
            if problems:
                by_list[str(dataset.imglist_path)] = problems
            modes_of[split] = modes
    if by_list:
        errors = [problems_error(name, f"image list {name}: {len(problems)} listed file(s) cannot be read as images",
                                 problems) for name, problems in by_list.items()]
        total = sum(len(problems) for problems in by_list.values())
        raise ImageListError(
            f"{total} listed image(s) cannot be used (every listed file is decoded before the first forward pass):\n"
            + "\n".join(str(error) for error in errors),
            [problem for error in errors for problem in error.problems],
        )
    record = {
        "images": sum(len(dataset) for dataset in datasets.values()),
        "decoded": decoded,
        "reused": sum(len(dataset) for dataset in datasets.values()) - decoded,
        "seconds": round(time.perf_counter() - started, 3),
        "modes": _mode_census(datasets, modes_of),
    }
    log.info("listed images verified: %d decoded now, %d verified by an earlier run (%s), %.1f s",
             record["decoded"], record["reused"], record_dir, record["seconds"])
    for mode, entry in record["modes"].items():
        log.warning("%d listed image(s) of mode %s: %s (first: %s)", entry["images"], mode, entry["treatment"],
                    entry["first"][0])
    return record


def _write_record(path: Path, dataset: ImageListDataset, modes: np.ndarray) -> None:
    """Atomically write the entries of ``dataset`` verified so far (mode set)."""
    keep = np.flatnonzero(modes != b"")
    sizes, mtimes = dataset.file_stats()
    with atomic_write(path, "wb") as handle:
        np.savez(handle, relative=dataset.relative_paths_array()[keep], size=sizes[keep], mtime_ns=mtimes[keep],
                 mode=np.array([bytes(mode) for mode in modes[keep]], dtype=np.bytes_).reshape(-1))


def _mode_census(datasets: Mapping[str, ImageListDataset], modes_of: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per image mode that is not standard: its treatment, how many images, the first few files."""
    counts: Counter[str] = Counter()
    first: dict[str, list[str]] = {}
    for split, dataset in datasets.items():
        values, counted = np.unique(modes_of[split].astype(np.bytes_), return_counts=True)
        for value, count in zip(values, counted):
            mode = value.decode()
            if treatment(mode) is None:
                continue
            counts[mode] += int(count)
            shown = first.setdefault(mode, [])
            for index in np.flatnonzero(modes_of[split] == value)[: FIRST_FILES - len(shown)]:
                shown.append(f"{dataset.imglist_path}:{dataset.line_number(index)} {dataset.path(index)}")
    return {mode: {"treatment": treatment(mode), "images": counts[mode], "first": first[mode]}
            for mode in sorted(counts)}

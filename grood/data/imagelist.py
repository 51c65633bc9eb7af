"""OpenOOD image lists: a text file of ``relative/path label`` lines, read as a torch ``Dataset``.

A line names one image, relative to the images folder (``<data_root>/images_classic`` or
``images_largescale``), and its integer label: the class index ``0..C-1`` in an ID list, ``-1`` in an OOD
list. The list is parsed and checked when the dataset is built, so a bad list fails before any network
runs, with the list file, line number and offending path or value in the message.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import posixpath
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset

from grood.data.imagemodes import to_rgb
from grood.io import atomic_write
from grood.resources import loader_workers


class ImageListError(ValueError):
    """An image list that cannot be used: malformed lines, missing images, labels out of range.

    Attributes:
        problems: every problem found, one line each (``"<list>, line <n>: <what> ; <what to do>"``); the
            message shows the first :data:`SHOWN_PROBLEMS` of each list.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class ImageLoadError(RuntimeError):
    """An image named by a list that exists but cannot be decoded."""


#: Problems of one list the error message shows; all of them go to a file (:func:`problems_error`).
SHOWN_PROBLEMS = 10
#: Where the full problem list of a long report is written (one file per list, replaced on each run).
PROBLEMS_DIR = Path(tempfile.gettempdir()) / "grood-input-problems"

_LINE_FORMAT = "'<relative/image/path> <integer label>' (-1 for OOD lists)"


def problems_error(subject: str | os.PathLike, header: str, problems: Sequence[str], hint: str = "") -> ImageListError:
    """One :class:`ImageListError` for every problem of ``subject`` (a list file): ``header``, the first
    :data:`SHOWN_PROBLEMS` problems, and, when there are more, the file (under :data:`PROBLEMS_DIR`) that
    holds them all. ``hint``: a last line saying what to do."""
    shown = [f"  {problem}" for problem in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        name = Path(subject).name
        report = PROBLEMS_DIR / f"{name}-{hashlib.sha256(str(subject).encode()).hexdigest()[:8]}.txt"
        with atomic_write(report) as handle:
            handle.write(f"{header}\n" + "".join(f"{problem}\n" for problem in problems))
        shown.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more; all {len(problems)} in {report}")
    return ImageListError("\n".join([header, *shown, *([hint] if hint else [])]), problems)


def _path_problem(path: str) -> str | None:
    """What is wrong with the path of a line (None: nothing): an invisible character, an absolute path, a
    ``..`` component."""
    if not path.isprintable():
        hidden = sorted({f"U+{ord(char):04X}" for char in path if not char.isprintable()})
        return f"path {path!r} holds invisible character(s) {', '.join(hidden)}; delete them"
    if os.path.isabs(path) or path.startswith(("/", "\\")):
        return f"path {path!r} is absolute; list paths must be relative to the images folder"
    if ".." in path.replace("\\", "/").split("/"):
        return (f"path {path!r} has a '..' component, which leaves the images folder; list paths must name "
                "files inside it (move the image under the images folder, or delete the line)")
    return None


def parse_image_list(imglist_path: str | os.PathLike, num_classes: int | None = None) -> tuple[list[str], list[int], list[int]]:
    """Parse an OpenOOD image list, checking every line.

    Args:
        imglist_path: the list file (UTF-8).
        num_classes: for an ID list, ``C``: every label must lie in ``0..C-1``. ``None`` for OOD lists
            (labels are kept as written; OpenOOD writes ``-1``).

    Returns:
        ``(relative_paths, labels, line_numbers)``, one entry per non-blank line, in file order.

    Raises:
        ImageListError: every bad line at once (malformed, label not an integer or out of range, absolute
            path, a ``..`` component, a byte-order mark or invisible character, not UTF-8, listed again),
            each naming the list, the 1-based line number, the offending text and what to do.
    """
    imglist_path = Path(imglist_path)
    if not imglist_path.is_file():
        raise ImageListError(f"image list {imglist_path} does not exist; check the data root and the list name")
    paths: list[str] = []
    labels: list[int] = []
    line_numbers: list[int] = []
    first_line: dict[str, int] = {}
    problems: list[str] = []
    kinds: Counter[str] = Counter()

    def bad(kind: str, number: int, text: str) -> None:
        kinds[kind] += 1
        problems.append(f"{imglist_path}, line {number}: {text}")

    with open(imglist_path, "rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if number == 1 and raw_bytes.startswith(codecs.BOM_UTF8):
                bad("byte-order mark", number,
                    f"the list starts with a UTF-8 byte-order mark (bytes EF BB BF), which would be read as part of "
                    f"the first path ({raw_bytes[3:].decode('utf-8', 'replace').strip()!r}); re-save the list "
                    "without it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' <list>")
                continue
            try:
                line = raw_bytes.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                bad("not UTF-8", number, f"line {raw_bytes.strip()!r} is not UTF-8 text ({error.reason} at byte "
                                         f"{error.start}); re-save the list as UTF-8")
                continue
            if not line:
                continue
            tokens = line.split(maxsplit=1)
            if len(tokens) != 2:
                bad("malformed", number, f"malformed line {line!r}; expected {_LINE_FORMAT} (fix or delete the line)")
                continue
            path, label_text = tokens
            try:
                label = int(label_text)
            except ValueError:
                bad("label not an integer", number,
                    f"label {label_text!r} of {path!r} is not an integer; expected {_LINE_FORMAT}")
                continue
            problem = _path_problem(path)
            if problem is not None:
                bad("bad path", number, problem)
                continue
            if num_classes is not None and not 0 <= label < num_classes:
                bad("label out of range", number,
                    f"label {label} of {path!r} is outside 0..{num_classes - 1} for an ID list of {num_classes} "
                    "classes; fix the label, or check that this list belongs to this benchmark")
                continue
            key = posixpath.normpath(path) if ("/." in path or "//" in path or path.startswith(".")) else path
            if key in first_line:
                bad("listed again", number,
                    f"image {path!r} is listed again (first at line {first_line[key]}); a duplicate counts one "
                    "image twice in every metric: delete one of the two lines")
                continue
            first_line[key] = number
            paths.append(path)
            labels.append(label)
            line_numbers.append(number)
    if problems:
        counts = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        raise problems_error(imglist_path, f"image list {imglist_path}: {len(problems)} bad line(s) ({counts})",
                             problems)
    if not paths:
        raise ImageListError(f"image list {imglist_path} holds no entries; expected '<relative/path> <label>' lines")
    return paths, labels, line_numbers


@contextmanager
def truncated_images_allowed(allowed: bool) -> Iterator[None]:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


class ImageListDataset(Dataset):
    """Images of an OpenOOD image list: item ``i`` is ``(transform(RGB image), label)``.

    Args:
        images_dir: folder the list's paths are relative to (``<data_root>/images_classic`` ...).
        imglist_path: the list file.
        transform: PIL image -> tensor (e.g. :func:`grood.data.test_transform`); ``None`` returns the PIL image.
        num_classes: ``C`` for an ID list (labels checked against ``0..C-1``); ``None`` for an OOD list.
        check_files: check at construction that every image file exists (one ``os.path.exists`` per line).
        allow_truncated: decode truncated images as far as they go (OpenOOD's setting) instead of failing.

    Attributes:
        labels: ``[N]`` int64 labels (-1 = OOD).
        list_sha256: sha256 of the parsed entries (``"path label\\n"`` per entry), a stable cache key that
            ignores blank lines, line endings and surrounding spaces.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        imglist_path: str | os.PathLike,
        transform: Callable | None = None,
        num_classes: int | None = None,
        check_files: bool = True,
        allow_truncated: bool = False,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.imglist_path = Path(imglist_path)
        self.transform = transform
        self.num_classes = num_classes
        self.allow_truncated = allow_truncated
        paths, labels, line_numbers = parse_image_list(self.imglist_path, num_classes)
        if not self.images_dir.is_dir():
            raise ImageListError(
                f"images folder {self.images_dir} (for list {self.imglist_path}) does not exist; "
                "check the data root or fetch the images (grood download data)"
            )
        digest = hashlib.sha256()
        for path, label in zip(paths, labels):
            digest.update(f"{path} {label}\n".encode())
        self.list_sha256 = digest.hexdigest()
        # numpy byte arrays instead of lists of str: DataLoader workers fork without copying them.
        self._relative = np.array([p.encode() for p in paths], dtype=np.bytes_)
        self._line_numbers = np.asarray(line_numbers, dtype=np.int64)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        if check_files:
            self._check_files()

    def file_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sizes, mtimes_ns)`` int64 ``[N]`` of the listed files (-1 where a file does not exist), one
        ``os.stat`` each, computed once (numpy arrays: forked loader workers do not copy them)."""
        if getattr(self, "_sizes", None) is None:
            root = str(self.images_dir)
            sizes = np.full(len(self._relative), -1, dtype=np.int64)
            mtimes = np.full(len(self._relative), -1, dtype=np.int64)
            for i, rel in enumerate(self._relative):
                try:
                    stat = os.stat(os.path.join(root, rel.decode()))
                except FileNotFoundError:
                    continue
                sizes[i], mtimes[i] = stat.st_size, stat.st_mtime_ns
            self._sizes, self._mtimes = sizes, mtimes
        return self._sizes, self._mtimes

    def files_fingerprint(self, mode: str = "stat") -> str:
        """sha256 over what the listed files hold: per file its list path and, with ``mode="stat"``, its size
        and modification time (ns); with ``mode="content"``, the sha256 of its bytes. A replaced image, or
        another root whose lists have the same text, gives another fingerprint.

        Raises:
            ImageListError: a listed file is missing.
            ValueError: unknown ``mode``.
        """
        if mode not in ("stat", "content"):
            raise ValueError(f"files_fingerprint mode must be 'stat' or 'content'; got {mode!r}")
        self._check_files()
        sizes, mtimes = self.file_stats()
        digest = hashlib.sha256(f"{mode}\n".encode())
        for i, relative in enumerate(self._relative):
            digest.update(bytes(relative) + b"\0")
            if mode == "stat":
                digest.update(f"{sizes[i]} {mtimes[i]}\n".encode())
            else:
                content = hashlib.sha256()
                with open(self.path(i), "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        content.update(block)
                digest.update(content.digest())
        return digest.hexdigest()

    def _check_files(self) -> None:
        missing = np.flatnonzero(self.file_stats()[0] < 0).tolist()
        if not missing:
            return
        first = missing[0]
        raise problems_error(
            self.imglist_path,
            f"{self.imglist_path}: {len(missing)} of {len(self)} image file(s) missing under {self.images_dir}, "
            f"first at line {self._line_numbers[first]}: {self.path(first)}",
            [f"line {self._line_numbers[i]}: {self.path(i)}" for i in missing],
            "fetch the images (grood download data) or fix the list / data root",
        )

    def __len__(self) -> int:
        return len(self._relative)

    def relative_paths_array(self) -> np.ndarray:
        """``[N]`` the list's paths as a numpy bytes array (UTF-8), in list order."""
        return self._relative

    def relative_path(self, index: int) -> str:
        """The list's path of item ``index`` (relative to ``images_dir``)."""
        return self._relative[index].decode()

    def path(self, index: int) -> str:
        """The full image path of item ``index``."""
        return os.path.join(str(self.images_dir), self.relative_path(index))

    @property
    def paths(self) -> list[str]:
        """Full image paths, in list order."""
        return [self.path(i) for i in range(len(self))]

    def line_number(self, index: int) -> int:
        """1-based line of item ``index`` in the list file."""
        return int(self._line_numbers[index])

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB PIL image (:func:`grood.data.imagemodes.to_rgb`: 16-bit images scaled by
        value); an unreadable file or a refused mode raises :class:`ImageLoadError`."""
        path = self.path(index)
        try:
            with truncated_images_allowed(self.allow_truncated), Image.open(path) as image:
                return to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's corrupt-data errors
            raise ImageLoadError(
                f"{self.imglist_path}, line {self.line_number(index)}: cannot read image {path} "
                f"({type(error).__name__}: {error}); replace the file (re-download it) or remove the line"
            ) from error

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageListDataset({self.imglist_path}, n={len(self)}, images_dir={self.images_dir})"


def build_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = False, seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` in list order (``shuffle=False``) or in a seeded, reproducible shuffled order.

    Pins memory when CUDA is available; never drops the last partial batch.
    """
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=loader_workers(num_workers),
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=False,
    )

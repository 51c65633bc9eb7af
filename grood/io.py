"""Atomic file and directory writes: a killed run leaves the old content or the complete new one, never half.

A leaf module (no grood imports), used by every layer including :mod:`grood.method`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success ``os.replace`` it onto ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb'; got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Atomically write ``payload`` as indented JSON (non-JSON values written with ``str``)."""
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it takes ``path``'s place.

    If ``path`` already exists it is first renamed aside and deleted only after the new directory is
    in place, so a failure at any point leaves either the old or the new directory (never a mix of
    files). The caller is responsible for checking that replacing an existing ``path`` is intended.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def package_data_dir(package: str, name: str) -> Path:
    """The folder ``name`` shipped inside ``package`` (``importlib.resources``), as a file-system path.

    Works for a checkout, an editable install and a wheel (files unpacked into site-packages). Raises
    ``FileNotFoundError`` naming the folder when it is missing (a build that left the package data out).
    """
    import importlib.resources

    folder = importlib.resources.files(package) / name
    if not isinstance(folder, Path):  # e.g. a zipped install: grood reads its data as files
        raise FileNotFoundError(f"{package}/{name}: package data not on the file system ({folder!r}); "
                                "install grood from a wheel or a checkout")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: grood's package data folder is missing; reinstall grood "
                                "(the wheel must include it: see [tool.setuptools.package-data] in pyproject.toml)")
    return folder

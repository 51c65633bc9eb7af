"""Installing and checking archives: safe extraction into a temporary folder, the record of every unpacked
file (size, sha256), the move into place (never over an existing file), and :func:`verify` of what is
installed against the manifest (see :mod:`grood.data.download`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from grood.data.download_resources import DownloadError, Resource, read_manifest


# ---------------------------------------------------------------------------- manifest and extraction

def _safe_members(names: Iterable[str], archive: Path) -> None:
    for name in names:
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(f"archive {archive} holds an unsafe path {name!r}; not extracting it")


def _extract(archive: Path, kind: str, into: Path) -> None:
    """Extract; a zip's members are CRC-checked by ``zipfile`` as they are read (a mismatch raises)."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as handle:
            _safe_members(handle.namelist(), archive)
            handle.extractall(into)
    elif kind == "tar":
        with tarfile.open(archive) as handle:
            if hasattr(tarfile, "data_filter"):
                handle.extractall(into, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                _safe_members(handle.getnames(), archive)
                handle.extractall(into)
    else:
        raise ValueError(f"unknown archive kind {kind!r}")


def _merge(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; where ``target`` exists, move only what it lacks (never overwrite)."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    if source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _merge(child, target / child.name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def install_archive(resource: Resource) -> dict[str, dict]:
    """Extract ``resource.archive`` and move its members into ``resource.install_dir`` (no overwrite).

    Returns the files it unpacked: path relative to ``install_dir`` (``/``-separated) -> ``{"bytes",
    "sha256"}`` of the archive's version (where a file already existed, it was kept, and :func:`verify`
    reports the difference).
    """
    assert resource.install_dir is not None
    resource.install_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{resource.name}.extract-", dir=resource.install_dir))
    try:
        try:
            _extract(resource.archive, resource.kind, scratch)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise DownloadError(
                f"archive {resource.archive} is damaged ({error}); delete it and rerun to download it again"
            ) from error
        top = [p for p in scratch.iterdir() if p.name != "__MACOSX"]
        root = scratch
        if not all((scratch / m).exists() for m in resource.members) and len(top) == 1 and top[0].is_dir() \
                and all((top[0] / m).exists() for m in resource.members):
            root = top[0]  # one extra top-level folder around the members
        missing = [m for m in resource.members if not (root / m).exists()]
        if missing and resource.wrap and len(resource.members) == 1:
            wrapped = scratch / f".{resource.members[0]}.wrapped"
            wrapped.mkdir()
            for item in top:
                os.replace(item, wrapped / item.name)
            root, missing = scratch, []
            os.replace(wrapped, scratch / resource.members[0])
        if missing:
            raise DownloadError(
                f"archive {resource.archive} lacks {missing} (its top level holds {sorted(p.name for p in top)}); "
                f"it is not the archive {resource.name} should be: delete it and rerun"
            )
        files: dict[str, dict] = {}
        for member in resource.members:
            member_root = root / member
            found = [member_root] if member_root.is_file() else sorted(member_root.rglob("*"))
            for path in found:
                if path.is_file() and not path.is_symlink():
                    files[path.relative_to(root).as_posix()] = _file_record(path)
        for member in resource.members:
            _merge(root / member, resource.install_dir / member)
        return files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)



# ---------------------------------------------------------------------------- verifying what is installed
@dataclass(frozen=True)
class Problem:
    """One installed file that differs from its manifest record."""

    archive: str
    path: Path
    problem: str  # "missing", "size ...", "modified ..."

    def __str__(self) -> str:
        return f"{self.problem}: {self.path} (from {self.archive})"


def verify(manifest_path: str | os.PathLike, log=None) -> tuple[int, list[Problem]]:
    """Check every file recorded in ``manifest_path`` (size, then sha256); return (files checked, problems).

    Raises:
        DownloadError: no manifest there, or an entry without a file list (installed by an older grood).
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise DownloadError(f"no download manifest at {manifest_path}: nothing was installed there by grood")
    checked, problems = 0, []
    for archive, entry in read_manifest(manifest_path).items():
        if "files" not in entry or "install_dir" not in entry:
            raise DownloadError(f"{manifest_path}: entry {archive!r} lists no files (recorded by an older grood); "
                                "reinstall it: delete the entry and rerun the download")
        root = Path(os.path.normpath(manifest_path.parent / entry["install_dir"]))
        if log is not None:
            log(f"verifying {archive}: {len(entry['files'])} files in {root}")
        for relative, record in entry["files"].items():
            path = root / relative
            checked += 1
            if not path.is_file():
                problems.append(Problem(archive, path, "missing"))
            elif path.stat().st_size != record["bytes"]:
                problems.append(Problem(archive, path, f"size {path.stat().st_size} bytes, recorded {record['bytes']}"))
            elif _sha256(path) != record["sha256"]:
                recorded = record["sha256"][:12]
                problems.append(Problem(archive, path, f"modified (sha256 differs from the recorded {recorded}…)"))
    return checked, problems

"""What a download is: a :class:`Resource` (one file, or an archive and the folders it installs), the errors
of fetching one, and the ``manifest.json`` that records what was installed (see :mod:`grood.data.download`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


MANIFEST = "manifest.json"


class DownloadError(RuntimeError):
    """A download that could not complete; the message says what to do."""


class OfflineError(DownloadError):
    """A needed host is unreachable; the message lists every file needed and where to put it."""


class ChecksumError(DownloadError):
    """A downloaded file whose checksum differs from the known or recorded one."""


def gdrive_url(file_id: str) -> str:
    """The URL ``gdown.download(id=...)`` starts from (what the connectivity probe checks)."""
    return f"https://drive.google.com/uc?id={file_id}"


def gdrive_page(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


@dataclass(frozen=True)
class Resource:
    """One file to fetch and, for an archive, the folders it installs.

    Attributes:
        name: short name (``cifar10``, ``benchmark_imglist``, ``cifar10_res18_v1.5`` ...).
        url: where to download it from (Google Drive: the URL gdown starts from).
        archive: where the downloaded file is kept (for ``kind="file"``: the final file). Its folder holds
            the ``manifest.json`` that records it.
        kind: ``"zip"``, ``"tar"`` or ``"file"``.
        install_dir: archives: the folder the members are moved into.
        members: archives: top-level names the archive must provide in ``install_dir``.
        wrap: an archive whose top level lacks ``members[0]`` is taken to hold that folder's contents
            (OpenOOD extracts ``<name>.zip`` *into* ``images_*/<name>/``).
        markers: files that must exist besides the archive's recorded files (e.g. the image lists a
            benchmark needs from ``benchmark_imglist.zip``).
        sha256, md5, sha256_prefix: known checksums (any subset).
        page: a web page a person can download it from.
        gdrive_id: Google Drive file id: downloaded with gdown.
    """

    name: str
    url: str
    archive: Path
    kind: str
    install_dir: Path | None = None
    members: tuple[str, ...] = ()
    wrap: bool = False
    markers: tuple[Path, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    sha256_prefix: str | None = None
    page: str | None = None
    gdrive_id: str | None = None

    @property
    def manifest_path(self) -> Path:
        return self.archive.parent / MANIFEST

    def targets(self) -> list[Path]:
        """What the resource provides, for messages: the file, or the members (and markers) it installs."""
        if self.kind == "file":
            return [self.archive]
        assert self.install_dir is not None
        return [self.install_dir / member for member in self.members] + list(self.markers)

    def present(self) -> bool:
        """Installed: see step 1 of the module docstring (the manifest, its files, the markers)."""
        if self.kind == "file":
            return self.archive.is_file()
        entry = read_manifest(self.manifest_path).get(self.archive.name)
        if not entry or "files" not in entry:
            return False
        root = (self.manifest_path.parent / entry["install_dir"]).resolve()
        assert self.install_dir is not None
        if root != self.install_dir.resolve():
            return False  # installed into another folder
        if not all((root / member).exists() for member in self.members):
            return False
        return (all((root / relative).is_file() for relative in entry["files"])
                and all(marker.is_file() for marker in self.markers))



def read_manifest(path: Path) -> dict:
    """A downloads folder's ``manifest.json``: archive file name -> entry (see :func:`install`); {} if none."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DownloadError(f"download manifest {path} is not valid JSON ({error}); fix or delete it") from None
    if not isinstance(manifest, dict):
        raise DownloadError(f"download manifest {path} must hold a JSON object; fix or delete it")
    return manifest


"""Fetch OpenOOD v1.5 data and checkpoints: resumable, atomic downloads, installs recorded in a manifest.

Sources are those of OpenOOD's own ``scripts/download/download.py`` (Google Drive file ids) and
``openood/evaluation_api/datasets.py`` (which archives each benchmark needs), plus torchvision's ImageNet
weights and its CIFAR archives (URLs and checksums read from torchvision itself).

How one resource is installed:

1. Skip it when it is installed: the downloads folder's ``manifest.json`` lists the archive as installed
   into this folder, every file it unpacked still exists, and so do the resource's markers (a plain file
   resource, e.g. torchvision weights: when the file exists). A folder that merely exists, or holds files
   placed by hand (the ILSVRC training images inside ``images_largescale/imagenet_1k/``), does not count.
2. Otherwise download it: Google Drive files with ``gdown`` (as OpenOOD does; ``resume=True`` continues a
   partial ``<archive><random>.part``), other URLs with an HTTP ``Range`` request resuming ``<name>.part``.
3. Check the checksum: the known one (torchvision's md5 for CIFAR, the sha256 prefix in torchvision's
   weight file names), or the sha256 recorded in the manifest by an earlier download. OpenOOD publishes
   no checksums, so a first download of its archives is checked only by the zip CRCs at extraction.
4. Extract into a temporary folder next to the destination, record every unpacked file (size and
   sha256), move the expected folders into place (never overwriting a file that exists), then write the
   archive's manifest entry (its sha256, size, where it went, its files) and delete the archive.

:func:`verify` checks the installed files against the manifest (``grood download verify``).

The parts: :mod:`~grood.data.download_sources` (which files each benchmark needs, OpenOOD's and torchvision's
tables), :mod:`~grood.data.download_resources` (:class:`Resource`, the errors, the manifest),
:mod:`~grood.data.download_transfer` (the network) and :mod:`~grood.data.download_archives` (extraction,
:func:`verify`); this module installs a plan (:func:`install`) and offers their public names.

An archive placed by hand at its download path is used as is (no network needed). Before any download the
hosts are probed with a short timeout; when one is unreachable, nothing is downloaded and the error names
every missing archive, where to get it and where to put it.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from grood.data.download_archives import Problem, install_archive, verify
from grood.data.download_resources import (MANIFEST, ChecksumError, DownloadError, OfflineError, Resource, gdrive_page,
                                           gdrive_url, read_manifest)
from grood.data.download_sources import (CHECKPOINT_ARCHIVES, CSID_ARCHIVES, DOWNLOADABLE, GDRIVE_IDS,
                                         checkpoint_resources, data_resources, manual_notes,
                                         torchvision_weight_resource)
from grood.data.download_transfer import file_hashes, check_hosts, download_file, download_gdrive
from grood.io import write_json

#: What ``from grood.data.download import ...`` offers: the plan (this module) and its parts' public names.
__all__ = [
    "CHECKPOINT_ARCHIVES", "CSID_ARCHIVES", "DOWNLOADABLE", "GDRIVE_IDS", "MANIFEST", "ChecksumError",
    "DownloadError", "OfflineError", "Problem", "Resource", "check_hosts", "checkpoint_resources",
    "data_resources", "download_file", "download_gdrive", "gdrive_page", "gdrive_url", "install",
    "install_archive", "manual_notes", "offline_message", "read_manifest", "torchvision_weight_resource", "verify",
]


# ---------------------------------------------------------------------------- installing a plan
def _placement(resource: Resource) -> str:
    if resource.kind == "file":
        return f"place it at {resource.archive}"
    targets = ", ".join(str(t) for t in resource.targets()[:3]) + (" ..." if len(resource.targets()) > 3 else "")
    return (f"place the archive at {resource.archive} and rerun (it is then extracted without network, "
            f"providing {targets})")


def offline_message(needed: Sequence[Resource], unreachable: dict[str, str]) -> str:
    hosts = "; ".join(f"{host} ({reason})" for host, reason in unreachable.items())
    lines = [f"cannot reach {hosts}: no download was started. Files needed ({len(needed)}):"]
    for resource in needed:
        lines.append(f"  - {resource.name}: from {resource.page or resource.url}")
        lines.append(f"      {_placement(resource)}")
    return "\n".join(lines)


def install(
    resources: Sequence[Resource],
    *,
    check_timeout: float = 5.0,
    keep_archives: bool = False,
    progress: bool = True,
    log=print,
) -> list[Resource]:
    """Fetch and install every resource not yet installed (:meth:`Resource.present`); return those installed.

    Each installed resource gets an entry in ``<archive folder>/manifest.json`` under its archive's file
    name: ``name``, ``url``, ``sha256`` and ``bytes`` of the archive, ``downloaded`` and ``installed``
    times, ``install_dir`` (relative to the manifest's folder) and ``files`` (relative path -> ``bytes``,
    ``sha256``).

    Raises:
        OfflineError: a host needed for a missing resource is unreachable (checked before any download).
        ChecksumError, DownloadError: as :func:`download_file` / :func:`download_gdrive`.
    """
    todo = [r for r in resources if not r.present()]
    for resource in resources:
        if resource not in todo:
            log(f"present: {resource.name} ({resource.targets()[0]}{' ...' if len(resource.targets()) > 1 else ''})")
    to_download = [r for r in todo if not r.archive.is_file()]
    if to_download:
        unreachable = {h: e for h, e in check_hosts([r.url for r in to_download], check_timeout).items() if e}
        if unreachable:
            raise OfflineError(offline_message(to_download, unreachable))
    for resource in todo:
        recorded = read_manifest(resource.manifest_path).get(resource.archive.name, {}).get("sha256")
        placed = resource.archive.is_file()
        if placed:
            log(f"using {resource.archive} (already downloaded)")
        elif resource.gdrive_id is not None:
            log(f"downloading {resource.name} from Google Drive ({resource.page})")
            download_gdrive(resource, progress=progress)
        else:
            log(f"downloading {resource.name} from {resource.url}")
            download_file(resource.url, resource.archive, progress=progress, sha256=resource.sha256 or recorded,
                          md5=resource.md5, sha256_prefix=resource.sha256_prefix)
        sha256 = _check_archive(resource, recorded, downloaded_now=not placed)
        archive_bytes = resource.archive.stat().st_size
        if resource.kind == "file":
            install_dir, files = resource.archive.parent, {resource.archive.name: {"bytes": archive_bytes,
                                                                                    "sha256": sha256}}
        else:
            log(f"extracting {resource.archive.name} into {resource.install_dir}")
            assert resource.install_dir is not None
            install_dir, files = resource.install_dir, install_archive(resource)
            absent = [str(m) for m in resource.markers if not m.is_file()]
            if absent:
                raise DownloadError(f"{resource.archive} was extracted but {absent} are still missing: the archive "
                                    "does not hold them")
        manifest = read_manifest(resource.manifest_path)
        manifest[resource.archive.name] = {
            "name": resource.name, "url": resource.url, "sha256": sha256, "bytes": archive_bytes,
            "downloaded": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(resource.archive.stat().st_mtime)),
            "installed": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "install_dir": os.path.relpath(install_dir, resource.manifest_path.parent), "files": files,
        }
        write_json(resource.manifest_path, manifest)
        if resource.kind != "file" and not keep_archives:
            resource.archive.unlink()
    return todo


def _check_archive(resource: Resource, recorded: str | None, downloaded_now: bool) -> str:
    """Check the archive against its known or recorded checksums; return its sha256.

    A mismatch raises :class:`ChecksumError`; a fresh download is then deleted (a rerun fetches it again), an
    archive placed by hand is kept for you to inspect.
    """
    got_sha256, got_md5 = file_hashes(resource.archive)
    expected = [("sha256", resource.sha256 or recorded, got_sha256, lambda e: got_sha256 == e.lower()),
                ("md5", resource.md5, got_md5, lambda e: got_md5 == e.lower()),
                ("sha256 prefix", resource.sha256_prefix, got_sha256, lambda e: got_sha256.startswith(e.lower()))]
    for kind, value, got, ok in expected:
        if value and not ok(value):
            source = f"recorded in {resource.manifest_path}" if value == recorded and not resource.sha256 else "known"
            if downloaded_now:
                resource.archive.unlink()
                what = "the download was deleted: rerun to fetch it again"
            else:
                what = f"delete {resource.archive} and rerun to download it again from {resource.page or resource.url}"
            raise ChecksumError(
                f"checksum mismatch for {resource.archive.name}: expected {kind} {value} ({source}), got {got}; "
                f"{what} (if it keeps failing, the file at the source changed: check it, then delete its entry "
                f"in {resource.manifest_path})"
            )
    return got_sha256



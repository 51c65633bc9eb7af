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

:func:`verify` checks the installed files against the manifest (``scripts/download.py verify``).

An archive placed by hand at its download path is used as is (no network needed). Before any download the
hosts are probed with a short timeout; when one is unreachable, nothing is downloaded and the error names
every missing archive, where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import glob
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from grood.data.benchmarks import get_benchmark
from grood.io import write_json

# ---------------------------------------------------------------------------- OpenOOD's sources
#: Google Drive file ids from OpenOOD's ``scripts/download/download.py`` (``download_id_dict``).
GDRIVE_IDS: dict[str, str] = {
    "benchmark_imglist": "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1",
    "cifar10": "1Co32RiiWe16lTaiOU6JMMnyUYS41IlO1",
    "cifar100": "1PGKheHUsf29leJPPGuXqzLBMwl8qMF8_",
    "tin": "1PZ-ixyx52U989IKsMA2OT-24fToTrelC",
    "mnist": "1CCHAGWqA1KJTFFswuF9cbhmB-j98Y1Sb",
    "svhn": "1DQfc11HOtB1nEwqS4pWUFp8vtQ3DczvI",
    "texture": "1OSz1m3hHfVWbRdmMwKbUzoU8Hg9UKcam",
    "places365": "1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay",
    "imagenet_1k": "1i1ipLDFARR-JZ9argXd2-0a6DXwVhXEj",
    "ssb_hard": "1PzkA-WGG8Z18h0ooL_pDdz9cO-DCIouE",
    "ninco": "1Z82cmvIB0eghTehxOGP5VTdLt7OD3nk6",
    "inaturalist": "1zfLfMvoUD0CUlKNnkk7LgxZZBnTBipdj",
    "openimage_o": "1VUFXnB_z70uHfdgJG2E_pjYOcEgqM7tE",
    "cifar10_res18_v1.5": "1byGeYxM_PlLjT72wZsMQvP6popJeWBgt",
    "cifar100_res18_v1.5": "1s-1oNrRtmA0pGefxXJOUVRYpaoAML0C-",
    "imagenet200_res18_v1.5": "1ddVmwc8zmzSjdLUO84EuV4Gz1c7vhIAs",
    # covariate-shifted ID (csid) sets: cifar10c and cifar100c from scripts/download/download.py, the
    # ImageNet ones from openood/evaluation_api/datasets.py (imagenet_es is only there)
    "cifar10c": "170DU_ficWWmbh6O2wqELxK9jxRiGhlJH",
    "cifar100c": "1MnETiQh9RTxJin2EHeSoIAJA28FRonHx",
    "imagenet_v2": "1akg2IiE22HcbvTBpwXQoD7tgfPCdkoho",
    "imagenet_c": "1JeXL9YH4BO8gCJ631c5BHbaSsl-lekHt",
    "imagenet_r": "1EzjMN2gq-bVV7lg-MEAdeuBuz-7jbGYU",
    "imagenet_es": "1ATz11vKmPqyzfEaEDRaPTF9TXiC244sw",
}

#: Image archives per benchmark: OpenOOD's ``benchmarks_dict`` (``openood/evaluation_api/datasets.py``)
#: without the covariate-shift sets (imagenet_v2/_c/_r/_es), with each archive's images folder (``dir_dict``).
IMAGE_ARCHIVES: dict[str, list[tuple[str, str]]] = {
    "cifar10": [(name, "images_classic") for name in
                ("cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365")],
    "cifar100": [(name, "images_classic") for name in
                 ("cifar100", "cifar10", "tin", "mnist", "svhn", "texture", "places365")],
    "imagenet200": [("imagenet_1k", "images_largescale"), ("ssb_hard", "images_largescale"),
                    ("ninco", "images_largescale"), ("inaturalist", "images_largescale"),
                    ("texture", "images_classic"), ("openimage_o", "images_largescale")],
}
IMAGE_ARCHIVES["imagenet"] = list(IMAGE_ARCHIVES["imagenet200"])

#: Covariate-shifted ID archives per benchmark (``scripts/download.py data --csid``), each with its images
#: folder (``dir_dict``) and the csid image lists OpenOOD's ``DATA_INFO[<benchmark>]["csid"]`` reads from it.
#: OpenOOD's Evaluator defines no csid list for CIFAR-100 (its ``csid.datasets`` is empty); its CIFAR-100-C
#: archive is the paper's Table 6 "ID-Corrupted Val" data.
CSID_ARCHIVES: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "cifar10": [("cifar10c", "images_classic", ("benchmark_imglist/cifar10/test_cifar10c.txt",))],
    "cifar100": [("cifar100c", "images_classic", ())],
    "imagenet200": [(f"imagenet_{s}", "images_largescale", (f"benchmark_imglist/imagenet200/test_imagenet200_{s}.txt",))
                    for s in ("v2", "c", "r")],
    "imagenet": [(f"imagenet_{s}", "images_largescale", (f"benchmark_imglist/imagenet/test_imagenet_{s}.txt",))
                 for s in ("v2", "c", "r", "es")],
}

#: OpenOOD v1.5 checkpoint archives and the run folder each holds (``s0/ s1/ s2/`` with ``best.ckpt``).
CHECKPOINT_ARCHIVES: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10_res18_v1.5", "cifar10_resnet18_32x32_base_e100_lr0.1_default"),
    "cifar100": ("cifar100_res18_v1.5", "cifar100_resnet18_32x32_base_e100_lr0.1_default"),
    "imagenet200": ("imagenet200_res18_v1.5", "imagenet200_resnet18_224x224_base_e90_lr0.1_default"),
}

#: torchvision ImageNet weights for the ImageNet benchmark (OpenOOD's ``scripts/eval_ood_imagenet.py``
#: ``--tvs-pretrained``, version 1).
TORCHVISION_WEIGHTS: dict[str, list[str]] = {
    "imagenet": ["ResNet50_Weights.IMAGENET1K_V1", "ViT_B_16_Weights.IMAGENET1K_V1", "Swin_T_Weights.IMAGENET1K_V1"],
}

DOWNLOADABLE = ("cifar10", "cifar100", "imagenet200", "imagenet")
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


# ---------------------------------------------------------------------------- what each benchmark needs
def _gdrive_archive(name: str, downloads: Path, install_dir: Path, member: str, wrap: bool,
                    markers: Sequence[Path] = ()) -> Resource:
    file_id = GDRIVE_IDS[name]
    return Resource(
        name=name, url=gdrive_url(file_id), archive=downloads / f"{name}.zip", kind="zip",
        install_dir=install_dir, members=(member,), wrap=wrap, markers=tuple(markers), page=gdrive_page(file_id),
        gdrive_id=file_id,
    )


def data_resources(benchmark: str, data_root: str | os.PathLike, torchvision_cifar: bool = False,
                   csid: bool = False) -> list[Resource]:
    """The image lists and image archives of an OpenOOD v1.5 benchmark, under ``data_root``.

    ``torchvision_cifar``: also fetch torchvision's CIFAR archive for ``cifar10``/``cifar100`` (extracted to
    ``<data_root>/cifar-10-batches-py`` etc., readable with ``torchvision.datasets.CIFAR10(data_root)``).
    ``csid``: also fetch the benchmark's covariate-shifted ID archives (:data:`CSID_ARCHIVES`) and require
    their image lists from ``benchmark_imglist.zip``.
    """
    if benchmark not in DOWNLOADABLE:
        raise ValueError(f"no download for benchmark {benchmark!r}; downloadable: {list(DOWNLOADABLE)}")
    root = Path(data_root)
    downloads = root / ".downloads"
    bench = get_benchmark(benchmark)
    list_files = [root / path for path in dict.fromkeys(bench.lists().values())]
    image_archives = list(IMAGE_ARCHIVES[benchmark])
    if csid:
        for name, folder, lists in CSID_ARCHIVES[benchmark]:
            image_archives.append((name, folder))
            list_files += [root / path for path in lists]
    resources = [_gdrive_archive("benchmark_imglist", downloads, root, "benchmark_imglist", wrap=False,
                                 markers=list_files)]
    for name, folder in image_archives:
        resources.append(_gdrive_archive(name, downloads, root / folder, name, wrap=True))
    if torchvision_cifar and benchmark in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if benchmark == "cifar10" else CIFAR100
        resources.append(Resource(
            name=f"{benchmark}_torchvision", url=cls.url, archive=downloads / cls.filename, kind="tar",
            install_dir=root, members=(cls.base_folder,), md5=cls.tgz_md5, page=cls.url,
        ))
    return resources


def torchvision_weight_resource(weight_name: str, hub_dir: str | os.PathLike) -> Resource:
    """A torchvision weight file, placed where ``torchvision`` looks for it (``<hub_dir>/checkpoints/``)."""
    from torchvision.models import get_weight

    url = get_weight(weight_name).url
    filename = url.rsplit("/", 1)[-1]
    match = re.search(r"-([a-f0-9]+)\.", filename)  # torchvision names files <arch>-<sha256 prefix>.pth
    return Resource(
        name=weight_name, url=url, archive=Path(hub_dir) / "checkpoints" / filename, kind="file",
        sha256_prefix=match.group(1) if match else None, page=url,
    )


def checkpoint_resources(benchmark: str, dest: str | os.PathLike, hub_dir: str | os.PathLike | None = None) -> list[Resource]:
    """OpenOOD v1.5's checkpoints of ``benchmark`` under ``dest`` (ImageNet: torchvision weights in ``hub_dir``)."""
    if benchmark not in DOWNLOADABLE:
        raise ValueError(f"no checkpoints to download for {benchmark!r}; downloadable: {list(DOWNLOADABLE)}")
    dest = Path(dest)
    resources = []
    if benchmark in CHECKPOINT_ARCHIVES:
        name, run_folder = CHECKPOINT_ARCHIVES[benchmark]
        resources.append(_gdrive_archive(name, dest / ".downloads", dest, run_folder, wrap=False))
    if benchmark in TORCHVISION_WEIGHTS:
        if hub_dir is None:
            import torch

            hub_dir = torch.hub.get_dir()
        resources.extend(torchvision_weight_resource(w, hub_dir) for w in TORCHVISION_WEIGHTS[benchmark])
    return resources


def manual_notes(benchmark: str, data_root: str | os.PathLike) -> list[str]:
    """What no script can fetch: ImageNet-1K training images (OpenOOD does not redistribute them)."""
    if benchmark not in ("imagenet", "imagenet200"):
        return []
    root = Path(data_root)
    bench = get_benchmark(benchmark)
    train_list = root / bench.train
    example = None
    if train_list.is_file():
        with open(train_list, encoding="utf-8") as handle:
            first = handle.readline().split()
        if first:
            example = root / bench.images_dir_for("train") / first[0]
            if example.exists():
                return []
    where = f" (its first line expects {example})" if example else ""
    return [
        f"{bench.train} names ImageNet-1K (ILSVRC2012) training images{where}; OpenOOD does not "
        "redistribute them: download ILSVRC2012_img_train.tar from https://image-net.org and extract it under "
        f"{root / bench.images_dir_for('train')} so that the list's paths resolve"
    ]


# ---------------------------------------------------------------------------- network
def check_hosts(urls: Iterable[str], timeout: float = 5.0) -> dict[str, str | None]:
    """Probe each URL's host (``HEAD scheme://host/``) in parallel: host -> None if reachable, else the error.

    Any HTTP answer, even an error status, counts as reachable. Uses ``requests``, gdown's HTTP stack, so
    it honours the same ``*_PROXY`` and ``REQUESTS_CA_BUNDLE`` settings as the downloads.
    """
    import requests

    origins = sorted({"{0.scheme}://{0.netloc}/".format(urllib.parse.urlsplit(u)) for u in urls})

    def probe(origin: str) -> str | None:
        try:
            requests.head(origin, timeout=timeout, allow_redirects=False,
                          headers={"User-Agent": "grood-download"}).close()
            return None
        except requests.exceptions.RequestException as error:
            return f"{type(error).__name__}: {error}"

    if not origins:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(origins))) as pool:
        return {urllib.parse.urlsplit(o).netloc: r for o, r in zip(origins, pool.map(probe, origins))}


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _hashes(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    chunk_size: int = 1 << 20,
) -> str:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with HTTP Range); return its sha256.

    Raises:
        ChecksumError: the complete file does not match ``sha256`` / ``md5`` / ``sha256_prefix``; the
            ``.part`` is deleted so that a rerun starts afresh.
        DownloadError: the connection failed or ended early (the ``.part`` is kept for resuming), or the
            server answered with an HTML page.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "grood-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part may already hold the whole file
            total = (error.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return _finish(part, dest, url, sha256, md5, sha256_prefix)
            part.unlink()
            return download_file(url, dest, sha256=sha256, md5=md5, sha256_prefix=sha256_prefix,
                                 timeout=timeout, progress=progress, chunk_size=chunk_size)
        raise DownloadError(f"downloading {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise DownloadError(f"downloading {url}: {getattr(error, 'reason', error)}; check the connection and rerun") from error
    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html"):
            raise DownloadError(f"{url} answered with an HTML page, not the file; download it by hand from a "
                                f"browser and place it at {dest}")
        if response.status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset:
            mode = "ab"
        else:  # 200: the server ignored the Range header; start again from zero
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length and length.isdigit() else None
        from tqdm.auto import tqdm

        bar = tqdm(total=expected_total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                   disable=not progress, leave=False)
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        block = response.read(chunk_size)
                    except (OSError, socket.timeout, http.client.HTTPException) as error:
                        raise DownloadError(
                            f"downloading {url}: connection lost after {part.stat().st_size} bytes ({error}); "
                            f"rerun to resume from {part}"
                        ) from error
                    if not block:
                        break
                    handle.write(block)
                    bar.update(len(block))
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            bar.close()
    size = part.stat().st_size
    if expected_total is not None and size != expected_total:
        raise DownloadError(
            f"downloading {url}: got {size} of {expected_total} bytes; rerun to resume from {part}"
        )
    return _finish(part, dest, url, sha256, md5, sha256_prefix)


def _finish(part: Path, dest: Path, url: str, sha256: str | None, md5: str | None, sha256_prefix: str | None) -> str:
    got_sha256, got_md5 = _hashes(part)
    checks = [("sha256", sha256, got_sha256, got_sha256 == (sha256 or "").lower()),
              ("md5", md5, got_md5, got_md5 == (md5 or "").lower()),
              ("sha256 prefix", sha256_prefix, got_sha256, got_sha256.startswith((sha256_prefix or "").lower()))]
    for kind, expected, got, ok in checks:
        if expected and not ok:
            part.unlink()
            raise ChecksumError(
                f"checksum mismatch for {dest.name} from {url}: expected {kind} {expected}, got {got}; the "
                "download was deleted: rerun to fetch it again (if it keeps failing, the file at the source "
                "changed: delete its entry in the downloads manifest.json after checking it)"
            )
    os.replace(part, dest)
    return got_sha256


def _part_files(dest: Path) -> list[Path]:
    """gdown's partial downloads of ``dest``: ``<name><8 random characters>.part`` next to it."""
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.glob(f"{glob.escape(dest.name)}*.part")
                  if len(p.name) == len(dest.name) + 8 + len(".part"))


def download_gdrive(resource: Resource, *, progress: bool = True) -> None:
    """Download the Google Drive file ``resource.gdrive_id`` to ``resource.archive`` with gdown.

    gdown follows Drive's confirmation page and, with ``resume=True``, continues a partial download left by
    an earlier run (``<archive><random>.part``) with an HTTP Range request.

    Raises:
        DownloadError: Drive would not serve the file (its quota page: the message says so and how to get
            the file by hand), or the transfer failed (the partial download is kept; rerun to resume).
    """
    import gdown
    import requests
    from gdown.exceptions import DownloadError as GdownDownloadError
    from gdown.exceptions import FileURLRetrievalError

    assert resource.gdrive_id is not None
    dest = resource.archive
    dest.parent.mkdir(parents=True, exist_ok=True)
    by_hand = (f"download it in a browser from {resource.page} and place it at {dest}, then rerun (it is then "
               "extracted without network)")
    try:
        gdown.download(id=resource.gdrive_id, output=str(dest), quiet=not progress, resume=True)
    except FileURLRetrievalError as error:
        text = " ".join(str(error).split())
        if "too many users" in text.lower() or "quota" in text.lower():
            raise DownloadError(
                f"Google Drive refused {resource.name}: its download quota is exhausted (Drive: \"Too many users "
                f"have viewed or downloaded this file recently\"); retry in up to 24 hours, or {by_hand}"
            ) from error
        raise DownloadError(f"Google Drive did not serve {resource.name} (gdown: {text}); {by_hand}") from error
    except (GdownDownloadError, requests.exceptions.RequestException) as error:
        parts = _part_files(dest)
        if len(parts) > 1:
            kept = f"several partial downloads are there ({', '.join(map(str, parts))}): delete all but one, then rerun"
        elif parts:
            kept = f"the partial download {parts[0]} is kept: rerun to resume, or delete it to start again"
        else:
            kept = "rerun to try again"
        raise DownloadError(f"downloading {resource.name} from Google Drive failed ({error}); {kept}; "
                            f"or {by_hand}") from error
    if not dest.is_file():
        raise DownloadError(f"gdown reported {resource.name} downloaded but {dest} does not exist; {by_hand}")


# ---------------------------------------------------------------------------- manifest and extraction
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
    got_sha256, got_md5 = _hashes(resource.archive)
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

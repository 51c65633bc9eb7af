"""Moving bytes: the connectivity probe, resumable HTTP downloads (``Range`` on ``<name>.part``) and Google
Drive downloads through gdown, each checked against the known checksums (see :mod:`grood.data.download`).
"""

from __future__ import annotations

import hashlib
import http.client
import glob
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from grood.data.download_resources import ChecksumError, DownloadError, Resource


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


def file_hashes(path: Path) -> tuple[str, str]:
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
    got_sha256, got_md5 = file_hashes(part)
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


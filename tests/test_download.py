"""grood.data.download and scripts/download.py, exercised without the internet.

Two local servers, each started per test in a thread:

- :class:`FileServer`, a plain HTTP server of in-memory files for :func:`download_file` (torchvision's
  URLs): it honours ``Range`` requests (or ignores them on demand) and can cut a response short.
- :class:`MockDrive`, Google Drive as gdown sees it. gdown recognises Drive by the host name
  (``drive.google.com``) and always starts from ``https://drive.google.com/uc?id=<id>``, so the mock is
  an HTTPS proxy on localhost (``HTTPS_PROXY``) that answers ``CONNECT drive.google.com:443`` (and
  ``drive.usercontent.google.com``) itself, with a throw-away certificate made by ``openssl`` and trusted
  through ``REQUESTS_CA_BUNDLE``. grood's code runs unchanged, real URLs included: Drive's confirmation page,
  its quota page, and resumed downloads go through gdown's own handling.

The offline path runs the real script against the real URLs, with every connection forced through a proxy
on a closed local port, so it fails the same way with or without internet.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grood.data.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    Resource,
    GDRIVE_IDS,
    check_hosts,
    checkpoint_resources,
    data_resources,
    download_file,
    install,
    manual_notes,
    read_manifest,
    verify,
)

REPO = Path(__file__).resolve().parents[1]


class FileServer:
    """A local HTTP server of ``files`` (path -> bytes) with switchable behaviour."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, str] = {}  # path -> HTML body
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many body bytes (Content-Length stays full)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                path, range_header = self.path, self.headers.get("Range")
                server.requests.append((path, range_header))
                if path in server.pages:
                    body = server.pages[path].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                start = 0
                if range_header and server.honour_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[: server.cut_after]
                    server.cut_after = None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def closed_port() -> int:
    """A local port with nothing listening (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- a mock Google Drive for gdown
DRIVE_HOSTS = ("drive.google.com", "drive.usercontent.google.com")
QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>\n"
    '<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try '
    "accessing the file again later. If the file you are trying to access is particularly large or is shared "
    "with many people, it may take up to 24 hours to be able to view or download the file.</p>\n</body></html>"
)


@pytest.fixture(scope="module")
def drive_certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for Drive's two host names (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=drive.google.com",
         "-addext", "subjectAltName=" + ",".join(f"DNS:{h}" for h in DRIVE_HOSTS),
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


class MockDrive:
    """Google Drive behind an HTTPS proxy on localhost: ``files[id] = (filename, bytes)``, ``mode[id]``.

    Modes: ``"direct"`` (``/uc?id=`` answers with the file), ``"confirm"`` (the "can't scan for viruses" page
    whose form leads to ``drive.usercontent.google.com/download``), ``"quota"`` (the quota-exceeded page).
    File answers honour ``Range``; ``cut_after`` sends only that many body bytes of the next file answer.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.mode: dict[str, str] = {}
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str, str | None]] = []  # (host, path, Range)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        drive = self

        class Drive(BaseHTTPRequestHandler):
            """One TLS connection to a Drive host, inside the proxy's tunnel."""

            timeout = 20

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                host = self.headers.get("Host", "").split(":")[0]
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                drive.requests.append((host, url.path, self.headers.get("Range")))
                file_id = query.get("id", "")
                if file_id not in drive.files:
                    return self._send(404, b"not found", "text/plain")
                mode = drive.mode.get(file_id, "direct")
                if host == "drive.google.com" and url.path == "/uc":
                    if mode == "quota":
                        return self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
                    if mode == "confirm":
                        form = ('<form id="download-form" action="https://drive.usercontent.google.com/download" '
                                f'method="get"><input type="hidden" name="id" value="{file_id}">'
                                '<input type="hidden" name="export" value="download">'
                                '<input type="hidden" name="confirm" value="t">'
                                '<input type="hidden" name="uuid" value="0f1e2d"></form>')
                        page = f"<html><body><p>Google Drive can't scan this file for viruses.</p>\n{form}\n</body></html>"
                        return self._send(200, page.encode(), "text/html; charset=utf-8")
                    return self._send_file(file_id)
                if host == "drive.usercontent.google.com" and url.path == "/download" and query.get("uuid") == "0f1e2d":
                    return self._send_file(file_id)
                return self._send(400, b"unexpected request", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self._write(body)

            def _write(self, body: bytes) -> None:
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True  # the client closed a response it did not read (gdown's resume)

            def _send_file(self, file_id: str) -> None:
                filename, data = drive.files[file_id]
                start, status = 0, 200
                headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Accept-Ranges": "bytes"}
                range_header = self.headers.get("Range")
                if range_header:
                    start, status = int(range_header.split("=")[1].split("-")[0]), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if drive.cut_after is None:
                    return self._send(status, body, "application/octet-stream", headers)
                cut, drive.cut_after = drive.cut_after, None
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self._write(body[:cut])
                self.close_connection = True
                self.connection.close()

        class Proxy(BaseHTTPRequestHandler):
            """``CONNECT <drive host>:443``: answer 200, then speak TLS as that host."""

            def log_message(self, *args) -> None:
                pass

            def do_CONNECT(self) -> None:
                host = self.path.split(":")[0]
                if host not in DRIVE_HOSTS:
                    self.send_error(403, f"the mock Drive proxy serves only {DRIVE_HOSTS}")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                tunnel = None
                try:
                    tunnel = context.wrap_socket(self.connection, server_side=True)
                    Drive(tunnel, self.client_address, self.server)
                except (ssl.SSLError, OSError):
                    pass  # the client gave up on the tunnel
                finally:
                    if tunnel is not None:
                        tunnel.close()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        self.httpd.daemon_threads = True
        self.proxy = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def drive(drive_certificate, monkeypatch, tmp_path):
    """The mock Drive, with this process's HTTPS (requests, hence gdown) routed to it."""
    mock = MockDrive(*drive_certificate)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", mock.proxy)
    monkeypatch.setenv("https_proxy", mock.proxy)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(drive_certificate[0]))
    # gdown keeps Drive's cookies in ~/.cache/gdown/cookies.txt: keep the user's file out of the tests
    monkeypatch.setattr(importlib.import_module("gdown.download"), "DEFAULT_COOKIES_FILE",
                        str(tmp_path / "gdown-cookies.txt"))
    yield mock
    mock.close()


def _drive_resource(tmp_path: Path, name: str, file_id: str, install_dir: Path | None = None) -> Resource:
    return Resource(name=name, url=f"https://drive.google.com/uc?id={file_id}", gdrive_id=file_id,
                    archive=tmp_path / "root" / ".downloads" / f"{name}.zip", kind="zip",
                    install_dir=install_dir or tmp_path / "root" / "images_classic", members=(name,), wrap=True,
                    page=f"https://drive.google.com/file/d/{file_id}/view")


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in entries.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- download_file
def test_download_streams_to_dest_and_returns_sha256(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "sub" / "f.bin"
    assert download_file(f"{server.url}/f.bin", dest, sha256=_sha256(data), progress=False,
                         chunk_size=4096) == _sha256(data)
    assert dest.read_bytes() == data and not (tmp_path / "sub" / "f.bin.part").exists()
    assert server.requests == [("/f.bin", None)]


def test_resume_from_partial_file_uses_range(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data[:123_456])
    download_file(f"{server.url}/f.bin", dest, sha256=_sha256(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=123456-")]


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that are not the file's beginning")
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_interrupted_download_keeps_part_and_resumes(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.cut_after = 100_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"rerun to resume from .*f\.bin\.part"):
        download_file(f"{server.url}/f.bin", dest, progress=False, chunk_size=8192)
    assert not dest.exists() and (tmp_path / "f.bin.part").stat().st_size == 100_000
    download_file(f"{server.url}/f.bin", dest, sha256=_sha256(data), progress=False)
    assert dest.read_bytes() == data and server.requests[-1] == ("/f.bin", "bytes=100000-")


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    data = _payload(5000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


@pytest.mark.parametrize("kind", ["sha256", "md5", "sha256_prefix"])
def test_checksum_mismatch_fails_and_deletes_the_download(server, tmp_path, kind):
    server.files["/f.bin"] = _payload(10_000)
    dest = tmp_path / "f.bin"
    wrong = {"sha256": "0" * 64, "md5": "0" * 32, "sha256_prefix": "00000000"}[kind]
    with pytest.raises(ChecksumError, match=rf"checksum mismatch for f\.bin from .*expected {kind.replace('_', ' ')} "):
        download_file(f"{server.url}/f.bin", dest, progress=False, **{kind: wrong})
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download_file(f"{server.url}/absent.bin", tmp_path / "x", progress=False)


# ---------------------------------------------------------------------------- install: extraction, skip, manifest
def _archive_resource(server, tmp_path, name, entries, wrap=True, markers=()) -> Resource:
    server.files[f"/{name}.zip"] = _zip(entries)
    return Resource(name=name, url=f"{server.url}/{name}.zip", archive=tmp_path / "root" / ".downloads" / f"{name}.zip",
                    kind="zip", install_dir=tmp_path / "root" / "images_classic", members=(name,), wrap=wrap,
                    markers=tuple(markers))


def test_install_extracts_records_and_skips_what_is_present(server, tmp_path):
    bare = _archive_resource(server, tmp_path, "svhn", {"test/0.png": b"0", "test/1.png": b"1"})
    nested = _archive_resource(server, tmp_path, "tin", {"tin/val/a.JPEG": b"a"})
    logs: list[str] = []
    assert install([bare, nested], progress=False, log=logs.append) == [bare, nested]
    images = tmp_path / "root" / "images_classic"
    assert (images / "svhn" / "test" / "1.png").read_bytes() == b"1"  # contents of a bare archive, wrapped
    assert (images / "tin" / "val" / "a.JPEG").read_bytes() == b"a"  # no doubled tin/tin/
    assert not bare.archive.exists() and not nested.archive.exists()  # archives removed after extraction
    assert not [p for p in images.iterdir() if p.name.startswith(".")]  # no scratch folders left
    manifest = json.loads((tmp_path / "root" / ".downloads" / "manifest.json").read_text())
    assert manifest["svhn.zip"]["sha256"] == _sha256(server.files["/svhn.zip"])
    assert manifest["svhn.zip"]["bytes"] == len(server.files["/svhn.zip"])
    assert manifest["svhn.zip"]["install_dir"] == os.path.join("..", "images_classic")
    assert manifest["svhn.zip"]["files"] == {"svhn/test/0.png": {"bytes": 1, "sha256": _sha256(b"0")},
                                             "svhn/test/1.png": {"bytes": 1, "sha256": _sha256(b"1")}}
    assert list(manifest["tin.zip"]["files"]) == ["tin/val/a.JPEG"]
    served = len(server.requests)
    logs.clear()
    assert install([bare, nested], progress=False, log=logs.append) == []
    assert len(server.requests) == served and any(line.startswith("present: svhn") for line in logs)


def test_recorded_checksum_guards_a_later_download(server, tmp_path):
    resource = _archive_resource(server, tmp_path, "mnist", {"test/0.png": b"0"})
    install([resource], progress=False, keep_archives=True, log=lambda *_: None)
    assert resource.archive.is_file()  # --keep-archives
    resource.archive.unlink()
    shutil.rmtree(tmp_path / "root" / "images_classic" / "mnist")  # gone: it must be fetched again
    server.files["/mnist.zip"] = _zip({"test/0.png": b"changed at the source"})
    with pytest.raises(ChecksumError, match=r"checksum mismatch for mnist\.zip.*expected sha256"):
        install([resource], progress=False, log=lambda *_: None)


def test_markers_decide_presence_and_merge_never_overwrites(server, tmp_path):
    root = tmp_path / "root"
    mine = root / "benchmark_imglist" / "cifar10" / "train_cifar10.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own list\n")
    server.files["/benchmark_imglist.zip"] = _zip({
        "benchmark_imglist/cifar10/train_cifar10.txt": b"theirs\n",
        "benchmark_imglist/cifar10/test_cifar10.txt": b"a 0\n",
    })
    resource = Resource(name="benchmark_imglist", url=f"{server.url}/benchmark_imglist.zip",
                        archive=root / ".downloads" / "benchmark_imglist.zip", kind="zip", install_dir=root,
                        members=("benchmark_imglist",), markers=(mine, mine.with_name("test_cifar10.txt")))
    assert not resource.present()
    install([resource], progress=False, log=lambda *_: None)
    assert mine.read_text() == "my own list\n" and mine.with_name("test_cifar10.txt").read_text() == "a 0\n"


def test_unexpected_or_unsafe_archives_fail_clearly(server, tmp_path):
    odd = _archive_resource(server, tmp_path, "places365", {"something/else.png": b"x"}, wrap=False)
    with pytest.raises(DownloadError, match=r"lacks \['places365'\].*holds \['something'\].*delete it and rerun"):
        install([odd], progress=False, log=lambda *_: None)
    evil = _archive_resource(server, tmp_path, "texture", {"../escape.txt": b"x"})
    with pytest.raises(DownloadError, match=r"unsafe path '\.\./escape\.txt'"):
        install([evil], progress=False, log=lambda *_: None)
    assert not (tmp_path / "root" / "escape.txt").exists()


def test_torchvision_style_tar_with_md5(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as handle:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 4
        handle.addfile(info, io.BytesIO(b"1234"))
    data = buffer.getvalue()
    server.files["/cifar-10-python.tar.gz"] = data
    resource = Resource(name="cifar10_torchvision", url=f"{server.url}/cifar-10-python.tar.gz",
                        archive=tmp_path / "dl" / "cifar-10-python.tar.gz", kind="tar", install_dir=tmp_path,
                        members=("cifar-10-batches-py",), md5=hashlib.md5(data).hexdigest())
    install([resource], progress=False, log=lambda *_: None)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"1234"


# ---------------------------------------------------------------------------- offline
def test_offline_fails_before_any_download_and_names_each_file(tmp_path, closed_port):
    dead = f"http://127.0.0.1:{closed_port}"
    resources = [
        Resource(name="cifar100", url=f"{dead}/c.zip", archive=tmp_path / ".downloads" / "cifar100.zip", kind="zip",
                 install_dir=tmp_path / "images_classic", members=("cifar100",), page="https://drive.example/c"),
        Resource(name="weights", url=f"{dead}/w.pth", archive=tmp_path / "hub" / "w.pth", kind="file"),
    ]
    assert check_hosts([r.url for r in resources], timeout=2)[f"127.0.0.1:{closed_port}"] is not None
    with pytest.raises(OfflineError) as info:
        install(resources, check_timeout=2, progress=False, log=lambda *_: None)
    message = str(info.value)
    assert f"cannot reach 127.0.0.1:{closed_port}" in message and "no download was started" in message
    assert f"cifar100: from https://drive.example/c" in message
    assert f"place the archive at {tmp_path / '.downloads' / 'cifar100.zip'}" in message
    assert str(tmp_path / "images_classic" / "cifar100") in message
    assert f"weights: from {dead}/w.pth" in message and f"place it at {tmp_path / 'hub' / 'w.pth'}" in message
    assert not (tmp_path / ".downloads").exists() and not (tmp_path / "hub").exists()


def test_archive_placed_by_hand_installs_offline(tmp_path, closed_port):
    archive = tmp_path / ".downloads" / "ninco.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(_zip({"ninco/x.jpg": b"x"}))
    resource = Resource(name="ninco", url=f"http://127.0.0.1:{closed_port}/ninco.zip", archive=archive, kind="zip",
                        install_dir=tmp_path / "images_largescale", members=("ninco",), wrap=True)
    install([resource], check_timeout=2, progress=False, log=lambda *_: None)
    assert (tmp_path / "images_largescale" / "ninco" / "x.jpg").read_bytes() == b"x"


def _offline_env(closed_port: int) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{closed_port}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy)
    return env


def test_script_offline_names_every_archive_for_real(tmp_path, closed_port):
    """The real script and the real OpenOOD URLs; the proxy on a closed port makes every host unreachable."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "download.py"), "data", "--benchmark", "cifar10",
         "--data-root", str(tmp_path / "data"), "--timeout", "3"],
        env=_offline_env(closed_port), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "cannot reach drive.google.com" in message and "Files needed (8)" in message
    for name in ("benchmark_imglist", "cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365"):
        assert f"  - {name}: from https://drive.google.com/file/d/" in message, name
        assert str(tmp_path / "data" / ".downloads" / f"{name}.zip") in message, name
    assert "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1" in message  # OpenOOD's benchmark_imglist id
    assert not (tmp_path / "data").exists()


def test_checkpoints_offline_in_process(tmp_path, closed_port, monkeypatch, capsys):
    import grood.cli.download as script
    for key, value in _offline_env(closed_port).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(urllib.request, "_opener", None)  # rebuild urllib's opener with the proxy settings
    code = script.main(["checkpoints", "--benchmark", "cifar10", "imagenet", "--dest", str(tmp_path / "ck"),
                        "--torch-hub-dir", str(tmp_path / "hub"), "--timeout", "3"])
    message = capsys.readouterr().err
    assert code == 2
    assert "cifar10_res18_v1.5: from https://drive.google.com/file/d/1byGeYxM_PlLjT72wZsMQvP6popJeWBgt" in message
    assert str(tmp_path / "ck" / "cifar10_resnet18_32x32_base_e100_lr0.1_default") in message
    for filename in ("resnet50-0676ba61.pth", "vit_b_16-c867db91.pth", "swin_t-704ceda3.pth"):
        assert f"place it at {tmp_path / 'hub' / 'checkpoints' / filename}" in message
    assert script.main(["data", "--benchmark", "cifar11"]) == 3


# ---------------------------------------------------------------------------- plans
def test_data_and_checkpoint_plans(tmp_path):
    cifar = {r.name: r for r in data_resources("cifar10", tmp_path)}
    assert list(cifar) == ["benchmark_imglist", "cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365"]
    assert cifar["svhn"].install_dir == tmp_path / "images_classic" and cifar["svhn"].wrap
    assert tmp_path / "benchmark_imglist" / "cifar10" / "test_places365.txt" in cifar["benchmark_imglist"].markers
    imagenet = {r.name: r for r in data_resources("imagenet200", tmp_path)}
    assert imagenet["texture"].install_dir == tmp_path / "images_classic"
    assert imagenet["ninco"].install_dir == tmp_path / "images_largescale"
    with_tv = data_resources("cifar100", tmp_path, torchvision_cifar=True)[-1]
    assert with_tv.members == ("cifar-100-python",) and with_tv.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    (ckpt,) = checkpoint_resources("imagenet200", tmp_path / "ck")
    assert ckpt.members == ("imagenet200_resnet18_224x224_base_e90_lr0.1_default",)
    weights = checkpoint_resources("imagenet", tmp_path / "ck", hub_dir=tmp_path / "hub")
    assert [w.sha256_prefix for w in weights] == ["0676ba61", "c867db91", "704ceda3"]
    with pytest.raises(ValueError, match=r"no download for benchmark 'cifar10_smoke'"):
        data_resources("cifar10_smoke", tmp_path)


def test_manual_note_for_imagenet_train_images(tmp_path):
    lists = tmp_path / "benchmark_imglist" / "imagenet200"
    lists.mkdir(parents=True)
    (lists / "train_imagenet200.txt").write_text("imagenet_1k/train/n01/x.JPEG 0\n")
    (note,) = manual_notes("imagenet200", tmp_path)
    assert str(tmp_path / "images_largescale" / "imagenet_1k" / "train" / "n01" / "x.JPEG") in note
    assert "image-net.org" in note
    image = tmp_path / "images_largescale" / "imagenet_1k" / "train" / "n01" / "x.JPEG"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    assert manual_notes("imagenet200", tmp_path) == [] and manual_notes("cifar10", tmp_path) == []


def test_script_merges_shared_archives_across_benchmarks(tmp_path):
    import grood.cli.download as script
    args = script.build_parser().parse_args(["data", "--benchmark", "cifar10", "cifar100", "--data-root", str(tmp_path)])
    resources = script.resources_for(args)
    assert [r.name for r in resources].count("cifar100") == 1 and len(resources) == 8
    markers = {str(m.relative_to(tmp_path)) for m in resources[0].markers}
    assert {"benchmark_imglist/cifar10/test_svhn.txt", "benchmark_imglist/cifar100/test_svhn.txt"} <= markers


def test_a_recorded_file_deleted_means_not_installed(server, tmp_path):
    resource = _archive_resource(server, tmp_path, "svhn", {"test/0.png": b"0", "test/1.png": b"1"})
    install([resource], progress=False, log=lambda *_: None)
    assert resource.present()
    (tmp_path / "root" / "images_classic" / "svhn" / "test" / "1.png").unlink()
    assert not resource.present()  # the folder is not empty, but the archive's files are not all there
    install([resource], progress=False, log=lambda *_: None)
    assert (tmp_path / "root" / "images_classic" / "svhn" / "test" / "1.png").read_bytes() == b"1"


# ---------------------------------------------------------------------------- Google Drive through gdown
def test_gdrive_confirmation_page_is_followed_by_gdown(drive, tmp_path):
    data = _zip({"x/0.png": b"zero", "x/1.png": b"one"})
    drive.files["IDbig"] = ("places365.zip", data)
    drive.mode["IDbig"] = "confirm"
    resource = _drive_resource(tmp_path, "places365", "IDbig")
    assert install([resource], check_timeout=5, progress=False, log=lambda *_: None) == [resource]
    assert (tmp_path / "root" / "images_classic" / "places365" / "x" / "1.png").read_bytes() == b"one"
    assert [(host, path) for host, path, _ in drive.requests] == [("drive.google.com", "/uc"),
                                                                  ("drive.usercontent.google.com", "/download")]
    entry = read_manifest(resource.manifest_path)["places365.zip"]
    assert entry["sha256"] == _sha256(data) and entry["bytes"] == len(data)
    assert not resource.archive.exists() and resource.present()


def test_gdrive_interrupted_download_resumes_with_range(drive, tmp_path):
    data = _zip({f"img/{i}.png": _payload(200_000 + i) for i in range(5)})  # ~1 MB: gdown writes 512 KiB chunks
    drive.files["IDpart"] = ("tin.zip", data)
    drive.cut_after = 700_000
    resource = _drive_resource(tmp_path, "tin", "IDpart")
    with pytest.raises(DownloadError, match=r"partial download .*tin\.zip\w{8}\.part is kept: rerun to resume"):
        install([resource], progress=False, log=lambda *_: None)
    (part,) = resource.archive.parent.glob("tin.zip*.part")
    kept = part.stat().st_size
    assert 0 < kept <= 700_000 and not resource.archive.exists()
    install([resource], progress=False, log=lambda *_: None)
    assert drive.requests[-1] == ("drive.google.com", "/uc", f"bytes={kept}-")  # resumed, not restarted
    assert not part.exists() and not resource.archive.exists()
    assert read_manifest(resource.manifest_path)["tin.zip"]["sha256"] == _sha256(data)
    for i in range(5):
        assert (tmp_path / "root" / "images_classic" / "tin" / "img" / f"{i}.png").read_bytes() == _payload(200_000 + i)


def test_gdrive_quota_page_gives_a_clear_message(drive, tmp_path):
    drive.files["IDquota"] = ("ninco.zip", b"never served")
    drive.mode["IDquota"] = "quota"
    resource = _drive_resource(tmp_path, "ninco", "IDquota", install_dir=tmp_path / "root" / "images_largescale")
    with pytest.raises(DownloadError) as info:
        install([resource], progress=False, log=lambda *_: None)
    message = str(info.value)
    assert "Google Drive refused ninco: its download quota is exhausted" in message
    assert "https://drive.google.com/file/d/IDquota/view" in message
    assert f"place it at {resource.archive}" in message
    assert not resource.archive.exists() and not list(resource.archive.parent.glob("*.part"))


def test_gdrive_offline_error_names_the_archive_and_where_it_goes(tmp_path, closed_port, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    resource = _drive_resource(tmp_path, "texture", GDRIVE_IDS["texture"])
    with pytest.raises(OfflineError) as info:
        install([resource], check_timeout=2, progress=False, log=lambda *_: None)
    message = str(info.value)
    assert "cannot reach drive.google.com" in message
    assert f"texture: from https://drive.google.com/file/d/{GDRIVE_IDS['texture']}/view" in message
    assert f"place the archive at {resource.archive}" in message
    assert str(tmp_path / "root" / "images_classic" / "texture") in message


def test_imagenet_train_images_placed_first_do_not_hide_the_archive(drive, tmp_path):
    """README order: ILSVRC training images into images_largescale/imagenet_1k/train/ first, then `make data`."""
    root = tmp_path / "data"
    (resource,) = [r for r in data_resources("imagenet200", root) if r.name == "imagenet_1k"]
    train_image = root / "images_largescale" / "imagenet_1k" / "train" / "n01440764" / "n01440764_10026.JPEG"
    train_image.parent.mkdir(parents=True)
    train_image.write_bytes(b"my ILSVRC image")
    assert not resource.present()  # a non-empty folder is not an installed archive
    served = _zip({"val/n01440764/ILSVRC2012_val_00000293.JPEG": b"val image",
                   "test/ILSVRC2012_test_00000001.JPEG": b"test image"})
    drive.files[GDRIVE_IDS["imagenet_1k"]] = ("imagenet_1k.zip", served)
    assert install([resource], progress=False, log=lambda *_: None) == [resource]
    folder = root / "images_largescale" / "imagenet_1k"
    assert (folder / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG").read_bytes() == b"val image"
    assert (folder / "test" / "ILSVRC2012_test_00000001.JPEG").read_bytes() == b"test image"
    assert train_image.read_bytes() == b"my ILSVRC image"
    files = read_manifest(resource.manifest_path)["imagenet_1k.zip"]["files"]
    assert sorted(files) == ["imagenet_1k/test/ILSVRC2012_test_00000001.JPEG",
                             "imagenet_1k/val/n01440764/ILSVRC2012_val_00000293.JPEG"]  # not the train images
    assert resource.present()


# ---------------------------------------------------------------------------- verify
def _script():
    import grood.cli.download as script
    return script


def test_verify_reports_modified_and_missing_files(server, tmp_path, capsys):
    resource = _archive_resource(server, tmp_path, "mnist", {"a.png": b"aaaa", "b.png": b"bbbb", "c.png": b"cccc"})
    install([resource], progress=False, log=lambda *_: None)
    script = _script()
    data_root = str(tmp_path / "root")
    assert script.main(["verify", "--data-root", data_root]) == 0
    assert "verified: all 3 files match the manifest" in capsys.readouterr().out
    folder = tmp_path / "root" / "images_classic" / "mnist"
    (folder / "a.png").write_bytes(b"AAAA")  # same size, other content
    (folder / "b.png").write_bytes(b"bbbbb")
    (folder / "c.png").unlink()
    checked, problems = verify(resource.manifest_path)
    assert checked == 3
    assert {p.path.name: p.problem.split(" ")[0] for p in problems} == {"a.png": "modified", "b.png": "size",
                                                                          "c.png": "missing"}
    assert script.main(["verify", "--data-root", data_root]) == 1
    err = capsys.readouterr().err
    assert f"modified (sha256 differs" in err and str(folder / "a.png") in err
    assert f"missing: {folder / 'c.png'} (from mnist.zip)" in err and "3 of 3 files differ" in err
    assert script.main(["verify", "--data-root", str(tmp_path / "nothing")]) == 3
    assert "no download manifest at" in capsys.readouterr().err


def test_csid_archives_in_the_plan(tmp_path):
    names = {b: [r.name for r in data_resources(b, tmp_path, csid=True)][len(data_resources(b, tmp_path)):]
             for b in ("cifar10", "cifar100", "imagenet200", "imagenet")}
    assert names == {"cifar10": ["cifar10c"], "cifar100": ["cifar100c"],
                     "imagenet200": ["imagenet_v2", "imagenet_c", "imagenet_r"],
                     "imagenet": ["imagenet_v2", "imagenet_c", "imagenet_r", "imagenet_es"]}
    imagenet = {r.name: r for r in data_resources("imagenet", tmp_path, csid=True)}
    assert imagenet["imagenet_es"].install_dir == tmp_path / "images_largescale"
    assert imagenet["imagenet_es"].gdrive_id == "1ATz11vKmPqyzfEaEDRaPTF9TXiC244sw"
    assert tmp_path / "benchmark_imglist" / "imagenet" / "test_imagenet_es.txt" in imagenet["benchmark_imglist"].markers
    cifar = {r.name: r for r in data_resources("cifar10", tmp_path, csid=True)}
    assert cifar["cifar10c"].install_dir == tmp_path / "images_classic"
    assert tmp_path / "benchmark_imglist" / "cifar10" / "test_cifar10c.txt" in cifar["benchmark_imglist"].markers


def test_make_checkpoints_honours_grood_checkpoint_root(tmp_path):
    """`make checkpoints` downloads where the configs look (paths.checkpoint_root = $GROOD_CHECKPOINT_ROOT)."""
    env = {**os.environ, "GROOD_CHECKPOINT_ROOT": str(tmp_path / "elsewhere")}
    result = subprocess.run(["make", "-n", "checkpoints", f"VENV={tmp_path / 'venv'}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"grood download checkpoints --benchmark cifar10 --dest {tmp_path / 'elsewhere'}" in result.stdout
    env.pop("GROOD_CHECKPOINT_ROOT")
    result = subprocess.run(["make", "-n", "checkpoints", f"VENV={tmp_path / 'venv'}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "--dest ./checkpoints" in result.stdout

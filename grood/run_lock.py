"""One run at a time per results folder: an exclusive lock held while a run writes the folder.

Two identical commands (same configuration, so the same folder) would otherwise write the same files and
interleave their ``run.log``. :func:`results_folder_lock` takes ``<folder>/.grood-run.lock`` with ``flock``
(POSIX, also on NFS through its lock manager) and writes the holder's pid, host, start time and command into
it. A second run does not wait: it stops at once with :class:`ResultsFolderBusyError`, naming the folder and
the other run's pid and host, before reading any data.

A lock dies with its process (the kernel releases a ``flock`` on exit, even on ``kill -9``), so a lock file
left by a dead run is stale: the next run takes it over, with a log line naming the dead run's pid. A run
that ends (normally, on an error or on Ctrl-C) removes the file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LOCK_NAME = ".grood-run.lock"


class ResultsFolderBusyError(RuntimeError):
    """Another live run holds the results folder's lock (or its file system cannot lock files)."""


def _holder(descriptor: int) -> dict[str, Any]:
    """What the lock file open on ``descriptor`` says of its holder ({} when empty or unreadable)."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(descriptor, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run that has just started (its pid is not written yet)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}: {holder.get('command', '?')}"


def acquire(folder: str | os.PathLike) -> int:
    """Lock ``folder`` (created if absent) for this process; returns the lock file's descriptor, for
    :func:`release`.

    Raises:
        ResultsFolderBusyError: another live run holds it (the message names the folder and that run).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise ResultsFolderBusyError(
                f"results folder {folder} is being written by another run ({_describe(holder)}); wait for it to "
                f"finish, or choose another folder (hydra.run.dir=... or paths.results_dir=...); the lock {path} is "
                "live (one left by a run that died is taken over, with a log line)"
            ) from None
        except OSError as error:  # e.g. a file system without locks (ENOLCK, EOPNOTSUPP)
            os.close(descriptor)
            raise ResultsFolderBusyError(
                f"cannot lock results folder {folder} ({path}: {error}); its file system does not support flock: "
                "write the results to a local folder (paths.results_dir=...)") from error
        try:  # the previous holder removes the file when it ends: lock the file that is at `path` now
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(descriptor)
    stale = _holder(descriptor)
    if stale:
        log.info("results folder %s: taking over the lock of a run that ended without removing it (%s)",
                 folder, _describe(stale))
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?"}
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, (json.dumps(record) + "\n").encode())
    return descriptor


def release(folder: str | os.PathLike, descriptor: int) -> None:
    """Remove the lock file (while still holding the lock) and release it."""
    try:
        Path(folder, LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(descriptor)


@contextmanager
def results_folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (see the module docstring); released however the block ends. A
    folder the lock created and the block left empty (a run stopped before writing) is removed again."""
    created = not Path(folder).exists()
    descriptor = acquire(folder)
    try:
        yield
    finally:
        release(folder, descriptor)
        if created and not any(Path(folder).iterdir()):
            Path(folder).rmdir()

"""What produced a result: package versions, the git commit, the checkpoint hash."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("grood", "torch", "torchvision", "faiss-cpu", "faiss-gpu", "numpy", "pandas", "scikit-learn",
            "pytorch-ood", "hydra-core", "openood")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that change results (absent ones are left out), and Python's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """``<sha>`` of HEAD (``<sha>-dirty`` with uncommitted changes), or None outside a git checkout."""
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def sha256_of_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Reading checkpoint files into networks, with errors that say what does not fit and why.

Accepted layouts: a plain state dict (OpenOOD's ``best.ckpt``), or a dict holding one under
``'state_dict'`` (akamaster's ``.th``), ``'model'`` or ``'net'``; keys may carry ``module.``
(``DataParallel``) or ``_orig_mod.`` (``torch.compile``) prefixes. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary pickled code.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grood.provenance import sha256_of_file

__all__ = ["CheckpointMismatchError", "NonFiniteCheckpointError", "load_checkpoint", "load_state_dict_checked",
           "read_state_dict", "extract_state_dict", "strip_prefixes", "sha256_of_file", "non_finite_tensors",
           "missing_checkpoint_hint"]

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model", "net")
PREFIXES = ("module.", "_orig_mod.")
SHOWN_KEYS = 20  # keys listed per category in a mismatch error


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the network it is loaded into."""


class NonFiniteCheckpointError(ValueError):
    """A checkpoint whose floating tensors hold NaN or infinite values (every score computed with it is wrong)."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items()
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object (plain, or under ``state_dict``/``model``/``net``).

    Raises:
        ValueError: naming ``source`` and the top-level keys found, when no state dict is there.
    """
    current = obj
    for _ in range(3):  # e.g. {'model': {'state_dict': {...}}}
        if _is_state_dict(current):
            return dict(current)
        if not isinstance(current, Mapping):
            break
        inner = next((current[key] for key in STATE_DICT_KEYS if key in current), None)
        if inner is None:
            break
        current = inner
    found = list(obj.keys())[:SHOWN_KEYS] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{source} holds no state dict: expected a mapping of parameter names to tensors, or one under "
        f"{'/'.join(repr(k) for k in STATE_DICT_KEYS)}; found {found}"
    )


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.``/``_orig_mod.`` prefix carried by *every* key (repeatedly, e.g. both)."""
    result = dict(state_dict)
    changed = True
    while changed and result:
        changed = False
        for prefix in PREFIXES:
            if all(key.startswith(prefix) for key in result):
                result = {key[len(prefix):]: value for key, value in result.items()}
                changed = True
    return result


#: Checkpoints that no ``make checkpoints`` target fetches: file name -> (where it comes from, its sha256).
#: akamaster's CIFAR-10 ResNet-20 (the smoke benchmark's network, ``dataset=cifar10_smoke``).
KNOWN_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "cifar10_resnet20_akamaster.th": (
        "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    ),
}


def missing_checkpoint_hint(path: str | os.PathLike, benchmark: str | None = None) -> str:
    """How to get the missing checkpoint ``path`` of ``benchmark``: a command that fetches it (OpenOOD's
    checkpoints with ``make checkpoints``; the smoke ResNet-20 from its source, hash checked), or where to
    point ``dataset.checkpoint``."""
    from grood.data.download import DOWNLOADABLE  # lazy: the download code is not needed to read a checkpoint

    path = Path(path).expanduser()
    if path.name in KNOWN_CHECKPOINTS:
        url, sha256 = KNOWN_CHECKPOINTS[path.name]
        return (f"it belongs to the shared folder (paths.shared_dir, $GROOD_SHARED_DIR): point GROOD_SHARED_DIR at the "
                f"folder holding checkpoints/{path.name}, or download it (sha256 {sha256[:8]}... checked) with\n"
                f"  mkdir -p {shlex.quote(str(path.parent))} && python -c \"import torch.hub; "
                f"torch.hub.download_url_to_file({url!r}, {str(path)!r}, hash_prefix={sha256[:8]!r})\"\n"
                "or point the config key dataset.checkpoint at an existing file")
    if benchmark in DOWNLOADABLE:
        return (f"download OpenOOD v1.5's checkpoints with `make checkpoints DATASET={benchmark}` (= `grood download "
                f"checkpoints --benchmark {benchmark} --dest ./checkpoints`), or point the config "
                "key dataset.checkpoint at an existing file")
    return (f"point the config key dataset.checkpoint at an existing file (`make checkpoints DATASET=<benchmark>` "
            f"downloads OpenOOD v1.5's checkpoints for {', '.join(DOWNLOADABLE)})")


def _missing_checkpoint_message(path: Path) -> str:
    return f"checkpoint {path} not found; {missing_checkpoint_hint(path)}"


#: Messages of torch.load on a file that ends too early or whose bytes are damaged (legacy pickle or zip format).
_CORRUPT_MARKERS = ("failed finding central directory", "failed reading zip archive", "invalid header",
                    "unexpected EOF", "truncated", "Ran out of input", "could not find", "file read failed")


#: File signatures of formats people give by mistake: leading bytes -> what the file is.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"\x1f\x8b", "a gzip archive (unpack it first)"), (b"\x89HDF", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy .npy array"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an executable"),
)


def _torch_format_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged by its first bytes (None: it may be one).

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``; PyTorch >= 1.6) or, in the legacy format, a pickle
    (protocol >= 2: ``\\x80`` then the protocol number; protocols 0 and 1: torch's magic number as text), or,
    before PyTorch 0.1.10, a tar archive."""
    with open(path, "rb") as handle:
        start = handle.read(512)
    head = start[:16]
    if head.startswith((b"PK\x03\x04", b"L119547037146038801333356L")) or start[257:262] == b"ustar" \
            or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return None
    if not head:
        return "an empty file"
    for signature, kind in _OTHER_FORMATS:
        if head.startswith(signature):
            return kind
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (read it with safetensors.torch.load_file and save the state dict with torch.save)"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return f"a text file (it starts with {head.decode('ascii')!r})"
    return f"neither a zip archive (torch.save) nor a pickle: it starts with the bytes {head[:8].hex(' ')}"


def _unreadable_checkpoint_message(path: Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, and what to do: a truncated or corrupt file
    (EOFError, a damaged zip archive), or Python objects that tensors-only loading refuses."""
    size = path.stat().st_size
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, EOFError) or any(marker in str(error) for marker in _CORRUPT_MARKERS):
        return (f"checkpoint {path} is a truncated or corrupt file ({size:,} bytes; {text}); download or copy it "
                "again (an interrupted transfer leaves such a file) and compare its size with the source's")
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        return (f"cannot read checkpoint {path} ({size:,} bytes) as tensors only (torch.load weights_only=True): "
                f"{text}. It holds Python objects besides tensors: re-save only the weights with "
                "torch.save(model.state_dict(), path)")
    return (f"cannot read checkpoint {path} ({size:,} bytes): {text}. It is not a PyTorch checkpoint that "
            "torch.load can read; check that the path names the right file")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load ``path`` on the CPU and return its state dict, prefixes stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says how to get it).
        ValueError: the file is not a torch checkpoint (a JPEG, a text file, ...: named by its first bytes),
            is not readable as tensors, or holds no state dict.
        NonFiniteCheckpointError: a floating tensor holds NaN or infinite values (:func:`non_finite_tensors`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(_missing_checkpoint_message(path))
    kind = _torch_format_problem(path)
    if kind is not None:
        raise ValueError(f"checkpoint {path} ({path.stat().st_size:,} bytes) is not a torch checkpoint: it is {kind}; "
                         "point dataset.checkpoint at the file torch.save wrote (a .pt/.pth/.th/.ckpt state dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types; each is told apart below
        raise ValueError(_unreadable_checkpoint_message(path, error)) from error
    state_dict = strip_prefixes(extract_state_dict(obj, source=f"checkpoint {path}"))
    bad = non_finite_tensors(state_dict)
    if bad:
        floating = sum(1 for value in state_dict.values() if value.is_floating_point() or value.is_complex())
        raise NonFiniteCheckpointError(
            f"checkpoint {path} holds non-finite values in {len(bad)} of its {floating} floating tensors: "
            f"{_listing(bad)}; every output of the network would be wrong. The file is damaged or the training "
            "diverged: use another checkpoint (e.g. an earlier epoch's, or download it again)")
    return state_dict


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """``"name: 3 NaN, 1 +inf of 640 values"`` for each floating tensor of ``state_dict`` holding NaN or
    infinite values, in the state dict's order (empty: all finite)."""
    found = []
    for name, value in state_dict.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        counts = [(int(torch.isnan(value).sum()), "NaN"), (int(torch.isposinf(value.real).sum()), "+inf"),
                  (int(torch.isneginf(value.real).sum()), "-inf")]
        found.append(f"{name}: " + ", ".join(f"{n} {what}" for n, what in counts if n) + f" of {value.numel():,} values")
    return found


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f", ... and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"[{shown}{more}]"


def load_state_dict_checked(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, strict: bool = True
) -> nn.Module:
    """Copy ``state_dict`` into ``network``; on a mismatch raise one error listing every problem.

    Missing ``*.num_batches_tracked`` buffers are accepted (checkpoints from old PyTorch versions lack
    them; BatchNorm fills them in). Shape mismatches are always an error; missing and unexpected keys
    are an error with ``strict`` and a logged warning without it.

    Raises:
        CheckpointMismatchError: naming ``source``, listing missing keys, unexpected keys and shape mismatches.
    """
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: given {tuple(state_dict[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches {_listing(shapes)}")
    if shapes or (strict and problems):
        raise CheckpointMismatchError(
            f"{source} does not fit {type(network).__name__} "
            f"(num_classes={getattr(network, 'num_classes', '?')}): " + "; ".join(problems)
            + ". Check the backbone name and num_classes match the checkpoint."
        )
    if problems:
        log.warning("loading %s into %s non-strictly: %s", source, type(network).__name__, "; ".join(problems))
    network.load_state_dict(dict(state_dict), strict=strict)
    return network


def load_checkpoint(network: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load the checkpoint file ``path`` into ``network`` (in place) and return ``network``.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to download it).
        ValueError: the file holds no readable state dict.
        CheckpointMismatchError: the state dict does not fit the architecture (lists missing/unexpected
            keys and shape mismatches, names the file).
    """
    state_dict = read_state_dict(path)
    return load_state_dict_checked(network, state_dict, source=f"checkpoint {Path(path).expanduser()}",
                                   strict=strict)

"""Device selection: CUDA when present, CPU otherwise. Nothing in grood calls ``.cuda()``."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The device grood computes on when the caller does not say: ``cuda`` if available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``None``/``"auto"`` into :func:`default_device`, anything else into ``torch.device``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return default_device()
    return torch.device(device)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); :func:`default_device` for a module without any."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return default_device()

"""Input checks shared by the GROOD method modules; each raises ``ValueError`` naming what is wrong."""

from __future__ import annotations

import torch


def check_matrix(name: str, x: torch.Tensor, dim: int | None = None) -> None:
    """``x`` must be a floating ``[N, D]`` tensor (``D == dim`` when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, D]; got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has feature dimension {x.shape[1]} but {dim} was expected")


def check_vector(name: str, x: torch.Tensor, dim: int) -> None:
    """``x`` must be a floating ``[D]`` tensor with ``D == dim``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [D]; got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != dim:
        raise ValueError(f"{name} must have shape [{dim}]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise when any row of ``x`` (``[N, ...]``, or a vector) holds NaN or inf, saying how many rows."""
    # fast path, one reading pass: a NaN or inf makes its sum NaN or inf. A non-finite sum may also come
    # from finite values that overflow, so only then are the elements themselves checked.
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    if x.dim() <= 1:
        raise ValueError(f"{name} contains {int((~finite).sum())} NaN/inf value(s)")
    bad_rows = (~finite).reshape(x.shape[0], -1).any(dim=1)
    first = bad_rows.nonzero()[:5, 0].tolist()
    raise ValueError(
        f"{name} contains NaN or inf in {int(bad_rows.sum())} of {x.shape[0]} row(s) (first rows: {first}); "
        "remove or fix those rows"
    )


def check_labels(name: str, labels: torch.Tensor, num_rows: int, num_classes: int) -> None:
    """``labels`` must be an integer ``[num_rows]`` tensor with values in ``0..num_classes-1``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N]; got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N]; got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices; got dtype {labels.dtype}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the features have {num_rows} rows")
    if labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:5].tolist()
        raise ValueError(
            f"{name} holds value(s) {values} outside the valid class range 0..{num_classes - 1} "
            f"(num_classes={num_classes}); OOD rows (label -1) must not be passed as training data"
        )

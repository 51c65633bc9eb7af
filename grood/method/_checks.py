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


#: Elements of a tensor checked for NaN/inf at once by :func:`check_finite`: bounds its temporaries (a boolean
#: mask of a block, 16 MB) whatever the size of the tensor (a 1,281,167 x 2048 training split: 2.6 GB of mask).
FINITE_BLOCK_ELEMENTS = 2**24


def finite_block_rows(x: torch.Tensor, block_elements: int | None = None) -> int:
    """Rows of ``x`` (``[N, ...]``) per block of at most ``block_elements`` (default
    :data:`FINITE_BLOCK_ELEMENTS`) elements; one row at least."""
    block = FINITE_BLOCK_ELEMENTS if block_elements is None else int(block_elements)
    row = 1
    for size in x.shape[1:]:
        row *= int(size)
    return max(1, block // max(1, row))


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when any row of ``x`` (``[N, ...]``, or a vector) holds NaN or inf,
    saying how many rows and which come first (for a vector: how many values).

    ``x`` is read a block of rows at a time (:func:`finite_block_rows`): no temporary is larger than a block,
    and a memory-mapped ``x`` has its pages released after each block (:mod:`grood.method.streaming`), so
    checking a split larger than memory keeps the resident set small."""
    from grood.method.streaming import is_file_mapped, release_pages

    if x.numel() == 0:
        return
    if x.dim() == 0:
        x = x.reshape(1)
    step = finite_block_rows(x)
    mapped = step < x.shape[0] and is_file_mapped(x)
    bad_count, first = 0, []
    for start in range(0, x.shape[0], step):
        bad_rows = _non_finite_rows(x[start : start + step])
        if mapped:
            release_pages(x)  # the whole map: a fault maps the pages around it too
        if bad_rows is not None:
            bad_count += int(bad_rows.sum())
            first += (bad_rows.nonzero()[:5, 0] + start).tolist()[: 5 - len(first)]
    if bad_count == 0:
        return
    if x.dim() <= 1:
        raise ValueError(f"{name} contains {bad_count} NaN/inf value(s)")
    raise ValueError(
        f"{name} contains NaN or inf in {bad_count} of {x.shape[0]} row(s) (first rows: {first}); "
        "remove or fix those rows"
    )


def _non_finite_rows(x: torch.Tensor) -> torch.Tensor | None:
    """``[N]`` bool, the rows of ``x`` holding NaN or inf (entries for a vector); None when all are finite."""
    # fast path, one reading pass: a NaN or inf makes its sum NaN or inf. A non-finite sum may also come
    # from finite values that overflow, so only then are the elements themselves checked.
    if bool(torch.isfinite(x.sum())):
        return None
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return None
    return ~finite if x.dim() <= 1 else (~finite).reshape(x.shape[0], -1).any(dim=1)


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

"""Compact storage of indexed vectors (``storage="float16"``) and the exact re-ranking that keeps searches exact.

At ImageNet-1k's size GROOD indexes 1,281,167 gradients of 2048 dimensions: 10.5 GB in float32. The "torch"
and "ivf" indexes can keep them as float16 codes instead (:class:`HalfVectors`, 5.2 GB: one float32 scale per
row, so that gradients of tiny norm keep their relative precision), rank by them, keep each query's
:data:`SHORTLIST_PER_NEIGHBOUR` x ``k`` best candidates, and then compute the candidates' **true** float32
distances from the exact vectors, which the index asks of its ``exact_source`` (GROOD recomputes the
gradients of those training rows from the features): every distance returned is a float32 distance to a
true indexed vector, and the search returns the float32 search's neighbours whenever those are in the
shortlist (a float16 code is off by at most ``2^-11`` of its row's largest entry per entry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch

from grood.method.neighbours.base import _direct_distances
from grood.valid_values import Valid

#: How the "torch" and "ivf" indexes store their vectors (``storage``).
STORAGES = ("float32", "float16")
#: The annotation of an index's ``storage`` parameter.
Storage = Annotated[str, Valid(choices=STORAGES)]
#: ``storage="float16"``: candidates kept per query and per neighbour asked, re-ranked by true distances.
SHORTLIST_PER_NEIGHBOUR = 4

#: ``exact_source(ids [M]) -> [M, dim]``: the exact float32 vectors of the indexed rows ``ids`` (add order).
ExactSource = Callable[[torch.Tensor], torch.Tensor]


class HalfVectors:
    """``[capacity, dim]`` vectors as float16 codes with one float32 scale per row (``x ~ scale * code``, codes
    in ``[-1, 1]``); indexing (``vectors[rows]``) decodes to float32, so it stands in for a float32 matrix
    wherever rows are read.

    Attributes: ``codes [capacity, dim]`` float16, ``scales [capacity]`` float32.
    """

    def __init__(self, capacity: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.codes = torch.empty((capacity, dim), dtype=torch.float16, device=device)
        self.scales = torch.empty(capacity, device=device)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def write(self, rows: slice | torch.Tensor, vectors: torch.Tensor) -> None:
        """Encode ``vectors [B, dim]`` (float32) into the rows ``rows`` (a slice or ``[B]`` indices)."""
        scales = torch.amax(vectors.abs(), dim=1).clamp_(min=1e-30)
        self.codes[rows] = (vectors / scales.unsqueeze(1)).to(torch.float16)
        self.scales[rows] = scales

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """The decoded float32 vectors of ``rows`` (shape ``rows.shape + [dim]``)."""
        return self.codes[rows].to(torch.float32).mul_(self.scales[rows].unsqueeze(-1))

    def decode_into(self, rows: slice, out: torch.Tensor) -> torch.Tensor:
        """The decoded rows ``rows`` written into ``out [len, dim]`` (a reused buffer); returns ``out``."""
        out.copy_(self.codes[rows])
        return out.mul_(self.scales[rows].unsqueeze(1))

    def take(self, order: torch.Tensor) -> "HalfVectors":
        """A new :class:`HalfVectors` of the rows ``order [M]`` (a reordering)."""
        taken = HalfVectors(0, self.codes.shape[1], self.device)
        taken.codes, taken.scales = self.codes[order], self.scales[order]
        return taken

    def nbytes(self) -> int:
        return self.codes.numel() * 2 + self.scales.numel() * 4


def exact_rerank(
    queries: torch.Tensor, candidates: torch.Tensor, found: torch.Tensor, exact_source: ExactSource, k: int,
    max_chunk_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest of each query among its candidates by true distance.

    Args:
        queries: ``[B, dim]`` float32.
        candidates: ``[B, M]`` indexed rows (add order) of each query's shortlist.
        found: ``[B, M]`` bool, False where a column holds no candidate.
        exact_source: the exact vectors of indexed rows (see :data:`ExactSource`).
    Returns:
        ``distances [B, k]`` (float32, not squared, increasing; ``inf`` where fewer than ``k`` candidates) and
        the rows ``[B, k]``.
    """
    unique, inverse = torch.unique(candidates[found], return_inverse=True)
    vectors = exact_source(unique).to(device=queries.device, dtype=torch.float32)
    if vectors.shape != (unique.shape[0], queries.shape[1]):
        raise ValueError(f"exact_source returned shape {tuple(vectors.shape)} for {unique.shape[0]} rows; "
                         f"expected [{unique.shape[0]}, {queries.shape[1]}]")
    positions = torch.zeros(candidates.shape, dtype=torch.long, device=candidates.device)
    positions[found] = inverse
    distances = _direct_distances(queries, vectors, positions, max_chunk_elements)
    distances = torch.where(found, distances, torch.inf)
    distances, picked = torch.topk(distances, k, dim=1, largest=False, sorted=True)
    return distances, candidates.gather(1, picked)

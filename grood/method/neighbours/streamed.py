"""Exact k-nearest-neighbour search that streams the database instead of indexing it.

The queries stay in memory and the database comes a chunk at a time (e.g. training features read from a
memory map, normalised or turned into gradients on the fly), so nothing of the size of the database is
ever held: KNN on ImageNet-1k's 1,281,167 x 2048 training features needs the queries and one chunk. Each
chunk is compared with all the queries in one matrix product (ranking by ``||x||^2 - 2 q.x``), the best
``k`` so far kept per query. Distances are ``sqrt(max(||q||^2 + ranking, 0))`` (FAISS's ``IndexFlatL2``
computes them so too), float32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: Queries compared with each database chunk at once (bounds the ``[queries, chunk]`` ranking matrix).
STREAMED_QUERY_BLOCK = 16384


def streamed_k_nearest(
    queries: torch.Tensor, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database rows of each query, over the database given chunk by chunk.

    Args:
        queries: ``[B, D]`` float32 (all kept in memory).
        chunks: ``(row_ids [M], vectors [M, D] float32)`` pairs covering the database once; ``row_ids`` name
            the rows in the returned indices.
        k: neighbours per query (at most the database's size).
    Returns:
        ``distances [B, k]`` (float32, not squared, increasing) and ``rows [B, k]`` (int64 row ids).
    """
    count = queries.shape[0]
    best_values = torch.full((count, k), torch.inf, device=queries.device)
    best_rows = torch.full((count, k), -1, dtype=torch.long, device=queries.device)
    for row_ids, vectors in chunks:
        vectors = vectors.to(device=queries.device, dtype=torch.float32)
        squared = torch.linalg.vector_norm(vectors, dim=1).square_()
        row_ids = row_ids.to(queries.device)
        for start in range(0, count, STREAMED_QUERY_BLOCK):
            block = slice(start, min(start + STREAMED_QUERY_BLOCK, count))
            ranking = torch.addmm(squared, queries[block], vectors.T, alpha=-2.0)  # [b, M]
            found = min(k, ranking.shape[1])
            values, columns = torch.topk(ranking, found, dim=1, largest=False, sorted=False)
            merged_values = torch.cat([best_values[block], values], dim=1)
            merged_rows = torch.cat([best_rows[block], row_ids[columns]], dim=1)
            best_values[block], picked = torch.topk(merged_values, k, dim=1, largest=False, sorted=True)
            best_rows[block] = merged_rows.gather(1, picked)
    if bool((best_rows < 0).any()):
        raise ValueError(f"the streamed database held fewer than k={k} rows")
    query_norms = torch.linalg.vector_norm(queries, dim=1).square_().unsqueeze(1)
    return (best_values + query_norms).clamp_(min=0.0).sqrt_(), best_rows

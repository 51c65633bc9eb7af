"""k-means cells for the IVF index (appendix A.4), in torch (CPU or CUDA), including a balancing step
for vectors whose norms span orders of magnitude, as GROOD gradients do.

- :func:`routing_coordinates`: the log-polar coordinates ``(ln ||v||, v / ||v||)`` in which the IVF
  index forms its cells and routes its queries (directions optionally projected by
  :func:`direction_projection`); :func:`nearest_cells` routes raw vectors.
- :func:`nearest_centroids`: the ``n`` centroids nearest each vector (one matrix product per chunk).
- :func:`kmeans`: Lloyd's algorithm from a fixed-seed random sample of the vectors.
- :func:`balanced_centroids`: k-means, then every cell much larger than the average is split by a
  k-means of its own members, until the cells are balanced.

Why log-polar coordinates: a GROOD gradient is ``p_ood(h) * unit`` (eq. 5), so its norm is a probability that ranges
over many orders of magnitude (1e-6 to 1e-1 at CIFAR scale; far smaller with 1000 classes). k-means
minimises squared error, to which the tiny vectors contribute nothing, so it spends all its centroids on
the large ones and puts the tiny ones, often most of the data, in one cell near the origin. Every ID
query then scans that cell and IVF is no faster than exact search. In log-polar coordinates the norms
are spread evenly over the decades they span, and near a vector ``v`` of norm ``r`` the Euclidean
distance is ``r`` times the log-polar one (``||dv||^2 ~ r^2 (d ln r)^2 + r^2 ||du||^2``), so a
vector's nearest neighbours in the original space are also near it in log-polar space, at every scale.
The exact distances are still computed in the original space; the coordinates only choose the cells.
:func:`balanced_centroids` then splits what remains oversized (e.g. many vectors in one direction and
scale).
"""

from __future__ import annotations

import math

import torch

#: Norm below which a vector counts as this norm in :func:`routing_coordinates` (zero vectors included).
MIN_ROUTING_NORM = 1e-30

#: Rows of a chunk's distance matrix are chosen so that it holds at most this many entries.
MAX_CHUNK_ELEMENTS = 2**25


def routing_coordinates(vectors: torch.Tensor, projection: torch.Tensor | None = None) -> torch.Tensor:
    """Log-polar coordinates ``[N, 1 + m]`` of ``vectors [N, D]``: column 0 is ``ln ||v||`` (norms below
    :data:`MIN_ROUTING_NORM` count as that norm), the other columns the unit direction ``v / ||v||``,
    projected onto the ``m`` orthonormal columns of ``projection [D, m]`` when given (``m = D`` without)."""
    norms = torch.linalg.vector_norm(vectors, dim=1, keepdim=True).clamp(min=MIN_ROUTING_NORM)
    directions = vectors / norms if projection is None else (vectors @ projection) / norms
    return torch.cat([norms.log(), directions], dim=1)


def direction_projection(vectors: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor | None:
    """``[D, dim]`` orthonormal basis of the top-``dim`` principal subspace (uncentred) of the unit
    directions of ``vectors [N, D]``, by a seeded randomised SVD; None when ``dim >= D`` (no projection).

    GROOD gradients point from the OOD prototype towards the features, which occupy a low-dimensional
    subspace (one direction per class, under neural collapse), so the directions keep their neighbours
    in a few dozen dimensions and the cells are found ``D / dim`` times faster.
    """
    full = vectors.shape[1]
    if dim >= full:
        return None
    directions = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True).clamp(min=MIN_ROUTING_NORM)
    generator = torch.Generator().manual_seed(seed)
    width = min(full, dim + 10)
    sketch = torch.randn(full, width, generator=generator).to(directions)
    for _ in range(2):  # power iterations sharpen the leading subspace
        sketch = torch.linalg.qr(directions.T @ (directions @ sketch)).Q
    _, _, right = torch.linalg.svd(directions @ sketch, full_matrices=False)
    return (sketch @ right.T[:, :dim]).contiguous()


def nearest_cells(
    vectors: torch.Tensor, centroids: torch.Tensor, n: int = 1, projection: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices ``[N, n]`` of the ``n`` cells whose ``centroids [K, 1 + m]`` (routing coordinates) are
    nearest the routing coordinates of ``vectors [N, D]``; computed chunk by chunk, so the coordinates of
    all ``N`` rows are never held at once."""
    rows = max(1, MAX_CHUNK_ELEMENTS // max(1, vectors.shape[1], centroids.shape[0]))
    parts = [
        nearest_centroids(routing_coordinates(vectors[start : start + rows], projection), centroids, n)
        for start in range(0, vectors.shape[0], rows)
    ]
    return torch.cat(parts) if parts else torch.empty((0, n), dtype=torch.long, device=vectors.device)


def nearest_centroids(vectors: torch.Tensor, centroids: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Indices ``[N, n]`` (int64) of the ``n`` centroids nearest each row of ``vectors [N, D]``
    (Euclidean; ``centroids [K, D]``, same device), nearest first."""
    squared_norms = centroids.pow(2).sum(dim=1)
    rows = max(1, MAX_CHUNK_ELEMENTS // max(1, centroids.shape[0]))
    parts = []
    for start in range(0, vectors.shape[0], rows):
        # ||c||^2 - 2 v.c ranks centroids like ||v - c||^2 (the ||v||^2 term is the same for all)
        ranking = torch.addmm(squared_norms, vectors[start : start + rows], centroids.T, alpha=-2.0)
        if n == 1:  # argmin (the first of equal values) costs a fraction of topk
            parts.append(ranking.argmin(dim=1, keepdim=True))
        else:
            parts.append(torch.topk(ranking, n, dim=1, largest=False, sorted=True).indices)
    return torch.cat(parts) if parts else torch.empty((0, n), dtype=torch.long, device=vectors.device)


def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of ``vectors [N, D]`` (float32) into ``num_clusters`` centroids ``[K, D]``.

    Starts from ``K`` distinct rows drawn with ``seed``; a cluster that empties is re-seeded by
    splitting the largest one in two (its centroid nudged by +-1e-4 relative), as FAISS does.
    Requires ``1 <= K <= N``.
    """
    count = vectors.shape[0]
    if not 1 <= num_clusters <= count:
        raise ValueError(f"k-means needs 1 <= num_clusters <= number of vectors ({count}); got {num_clusters}")
    generator = torch.Generator().manual_seed(seed)
    start_rows = torch.randperm(count, generator=generator)[:num_clusters].to(vectors.device)
    centroids = vectors[start_rows].clone()
    for _ in range(iterations):
        assignment = nearest_centroids(vectors, centroids)[:, 0]
        sizes = torch.bincount(assignment, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled].unsqueeze(1).to(vectors.dtype)
        for empty in torch.nonzero(~filled).flatten().tolist():
            largest = int(torch.argmax(sizes))
            centroids[empty] = centroids[largest] * (1 + 1e-4)
            centroids[largest] = centroids[largest] * (1 - 1e-4)
            sizes[empty] = sizes[largest] // 2
            sizes[largest] -= sizes[empty]
    return centroids


def balanced_centroids(
    vectors: torch.Tensor,
    num_cells: int,
    iterations: int = 10,
    max_cell_factor: float = 4.0,
    max_rounds: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """IVF cell centroids ``[K', D]`` for ``vectors [N, D]``: k-means into ``num_cells`` cells, then any
    cell holding more than ``max_cell_factor`` times the average ``N / num_cells`` is split by a
    k-means of its own members into ``ceil(size / average)`` cells; repeated (``max_rounds`` at most,
    the cells re-derived by nearest centroid after each round) until no cell is that large or none
    can be split further (identical members). ``K' >= num_cells``; it grows by the splits.
    """
    centroids = kmeans(vectors, num_cells, iterations, seed)
    average = vectors.shape[0] / num_cells
    for round_number in range(max_rounds):
        assignment = nearest_centroids(vectors, centroids)[:, 0]
        sizes = torch.bincount(assignment, minlength=centroids.shape[0])
        oversized = torch.nonzero(sizes > max_cell_factor * average).flatten().tolist()
        if not oversized:
            break
        kept = torch.ones(centroids.shape[0], dtype=torch.bool, device=centroids.device)
        new_centroids = []
        for cell in oversized:
            members = vectors[assignment == cell]
            pieces = min(members.shape[0], math.ceil(members.shape[0] / average))
            split = kmeans(members, pieces, iterations, seed + 1 + round_number)
            if torch.unique(split, dim=0).shape[0] > 1:
                kept[cell] = False
                new_centroids.append(split)
        if not new_centroids:
            break
        centroids = torch.cat([centroids[kept], *new_centroids])
    return centroids

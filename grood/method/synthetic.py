"""Synthetic features for tests and benchmarks (no real data involved).

:func:`clustered_vectors` draws tight clusters on a low-dimensional subspace embedded in ``dim``
dimensions, plus small isotropic noise: the shape of penultimate features under neural collapse and
of GROOD gradients (one direction per class), unlike an isotropic Gaussian, on which nearest-neighbour
search is unrealistically hard and IVF recall meaningless.
"""

from __future__ import annotations

import torch


def clustered_vectors(
    num_vectors: int,
    dim: int,
    num_clusters: int = 10,
    subspace_dim: int = 16,
    centre_scale: float = 1.0,
    cluster_std: float = 0.15,
    noise_std: float = 0.01,
    seed: int = 0,
    centres: torch.Tensor | None = None,
    basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_vectors`` float32 vectors in ``num_clusters`` clusters; returns ``(x [N, dim], labels [N],
    centres [K, subspace_dim], basis [subspace_dim, dim])``.

    Cluster ``c``: ``x = (centres[c] + cluster_std * z) @ basis + noise_std * e`` with ``z``, ``e``
    standard normal, ``centres`` drawn ``N(0, centre_scale^2)`` in the subspace and ``basis`` a random
    orthonormal ``[subspace_dim, dim]`` embedding. Pass back ``centres`` and ``basis`` to draw more
    samples (e.g. queries) from the same distribution. Labels are balanced (``i % num_clusters``).
    """
    if subspace_dim > dim:
        raise ValueError(f"subspace_dim ({subspace_dim}) must be <= dim ({dim})")
    generator = torch.Generator().manual_seed(seed)
    if basis is None:
        basis = torch.linalg.qr(torch.randn(dim, subspace_dim, generator=generator))[0].T.contiguous()
    if centres is None:
        centres = centre_scale * torch.randn(num_clusters, subspace_dim, generator=generator)
    labels = torch.arange(num_vectors) % centres.shape[0]
    labels = labels[torch.randperm(num_vectors, generator=generator)]
    low = centres[labels] + cluster_std * torch.randn(num_vectors, subspace_dim, generator=generator)
    x = low @ basis + noise_std * torch.randn(num_vectors, dim, generator=generator)
    return x.float(), labels, centres, basis

"""ViM: virtual-logit matching (Wang et al., CVPR 2022), own code in float64.

Matched: OpenOOD ``vim_postprocessor.py`` (``vim.yml``: dim 256) and the ViM paper (eqs. 3-7):

1. origin ``u = -W^+ b`` (pseudo-inverse of the fc weight ``W [C, D]``, bias ``b``);
2. covariance of the **training** features about ``u``: ``(1/N) sum_i (x_i - u)(x_i - u)^T`` (sklearn
   ``EmpiricalCovariance(assume_centered=True)`` in OpenOOD);
3. principal subspace = eigenvectors of the ``dim`` largest eigenvalues; ``R`` = the other ``D - dim``;
4. ``alpha = mean_train(max_c logit_c) / mean_train(||(x - u) R||)``;
5. score ``logsumexp(logits) - alpha * ||(x - u) R||`` with ``logits = x W^T + b`` (higher = more ID).

Differences from OpenOOD, none in the maths: float64 instead of float32, ``torch.linalg.eigh`` (symmetric)
instead of ``numpy.linalg.eig``, and the covariance accumulated in row chunks so that 1.2M x 2048
features fit in memory. pytorch-ood's ``ViM`` computes the same in float32 over all rows at once
(cross-checked in the tests); it silently replaces ``d >= D`` by ``D // 2``, whereas here that is an error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector, scatter_matrix
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, checked_arguments


def vim_origin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ViM's origin ``u = -W^+ b``: ``[D]`` for ``weight [C, D]``, ``bias [C]`` (float64)."""
    return -torch.linalg.pinv(weight.to(torch.float64)) @ bias.to(torch.float64)


def residual_basis(covariance: torch.Tensor, principal_dim: int) -> torch.Tensor:
    """``[D, D - principal_dim]`` eigenvectors of the ``D - principal_dim`` smallest eigenvalues."""
    _, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return eigenvectors[:, : covariance.shape[0] - principal_dim].contiguous()


def paper_principal_dim(feature_dim: int) -> int:
    """The ViM paper's principal dimension for ``D = feature_dim`` (section 4, implementation details):
    1000 for ``D >= 1500``, 512 for ``D = 768``, ``D / 2`` (rounded down) otherwise."""
    if feature_dim >= 1500:
        return 1000
    if feature_dim == 768:
        return 512
    return max(1, feature_dim // 2)


class ViM(BaselineDetector):
    """ViM: ``energy(logits) - alpha * ||(x - u) R||`` (higher = more ID). Fit on the ID training split.

    Args:
        dim: dimension of the principal subspace (OpenOOD ``vim.yml``: 256); must be < ``D``. The ViM
            paper uses 1000 for ``D >= 1500``, 512 for ``D = 768``, ``D / 2`` otherwise.
    """

    name: ClassVar[str] = "vim"
    reference: ClassVar[str] = "Wang, Li, Feng & Zhang, ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"
    sweep: ClassVar[dict[str, list]] = {"dim": [256, 1000]}

    @checked_arguments
    def __init__(
        self, dim: Count = 256, chunk_rows: Count = DEFAULT_CHUNK_ROWS, device: str | torch.device | None = None
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.principal_dim = int(dim)

    @classmethod
    def parameter_problem(cls, params: Mapping[str, Any], feature_dim: int) -> str | None:
        dim = int(params["dim"])
        if dim >= feature_dim:
            return f"ViM dim={dim} must be smaller than the feature dimension D={feature_dim}"
        return None

    @classmethod
    def nearest_valid(cls, params: Mapping[str, Any], feature_dim: int) -> dict[str, Any]:
        """``dim`` replaced by the paper's choice for this ``D`` (:func:`paper_principal_dim`, ``D / 2`` for a
        CIFAR ResNet's ``D = 64``) where it is not below ``D``; a valid ``dim`` is kept."""
        if int(params["dim"]) < feature_dim:
            return dict(params)
        return {**params, "dim": paper_principal_dim(feature_dim)}

    def fit(self, train: FeatureSet, head: LinearHead) -> "ViM":
        self._start_fit(train, head)
        if self.principal_dim >= self.feature_dim:
            raise ValueError(
                f"ViM: dim={self.principal_dim} must be smaller than the feature dimension D={self.feature_dim}; "
                f"pass e.g. dim={paper_principal_dim(self.feature_dim)} (the ViM paper's choice for this D)"
            )
        self.weight = head.weight.detach().to(self.device, torch.float64)
        self.bias = head.bias.detach().to(self.device, torch.float64)
        self.origin = vim_origin(self.weight, self.bias)
        covariance = scatter_matrix(train.features, self.origin, None, self.chunk_rows, self.device) / len(train)
        self.residual = residual_basis(covariance, self.principal_dim)
        max_logit_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        residual_norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for chunk in self._chunks(train):
            x = chunk.features.to(torch.float64)
            max_logit_sum += (x @ self.weight.T + self.bias).max(dim=1).values.sum()
            residual_norm_sum += self._residual_norm(x).sum()
        self.alpha = float(max_logit_sum / residual_norm_sum)
        self._fitted = True
        return self

    def _residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``||(x - u) R||`` for ``x [B, D]`` float64: the norm of the part outside the principal subspace."""
        return ((x - self.origin) @ self.residual).norm(dim=1)

    def _score_chunk(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(torch.float64)
        energy = torch.logsumexp(x @ self.weight.T + self.bias, dim=1)
        return energy - self.alpha * self._residual_norm(x)

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: self._score_chunk(chunk.features))

"""Feature-space distance detectors: MDS, RMDS, KNN (own code) and SHE (through pytorch-ood).

Sources matched:

- MDS: OpenOOD ``mds_postprocessor.py`` and Lee et al. (NeurIPS 2018) without input preprocessing or
  feature ensembles: class means ``mu_c`` of the **training** features by **true label**; one shared
  covariance ``Sigma = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` (sklearn ``EmpiricalCovariance``
  on the class-centred features, which divides by ``N``); precision = its pseudo-inverse
  (sklearn's ``pinvh``; here ``torch.linalg.pinv(hermitian=True)``, same default cutoff); score
  ``max_c -(x - mu_c)^T P (x - mu_c)``. Float64 throughout. Own code: pytorch-ood's ``Mahalanobis``
  adds a ``1e-6`` ridge, inverts with ``torch.linalg.inv`` in float32 and does not divide by ``N``;
  it agrees in ranking on well-conditioned features (tested) but fails on rank-deficient ones
  (dead ReLU units), where OpenOOD's pseudo-inverse works.
- RMDS: OpenOOD ``rmds_postprocessor.py`` and Ren et al. (2021): as MDS, plus a background Gaussian
  (mean ``mu_0`` and covariance of *all* training features); score
  ``max_c [-(x - mu_c)^T P (x - mu_c) + (x - mu_0)^T P_0 (x - mu_0)]``. Own code for the same reasons.
- KNN: OpenOOD ``knn_postprocessor.py`` and Sun et al. (ICML 2022): L2-normalised training features
  in an exact FAISS ``IndexFlatL2`` (through :mod:`grood.method.neighbours`), score = minus the
  distance of the normalised query to its ``k``-th nearest training feature; ``knn.yml``: K 50.
  OpenOOD returns minus the *squared* distance (FAISS's); the square root does not change the
  ranking, hence no metric. OpenOOD's normaliser ``x / ||x|| + 1e-10`` shifts every vector by the
  same constant, which leaves distances unchanged; here ``||x||`` is clamped at ``1e-12`` so that a zero
  feature vector gets a finite score instead of NaN. Own code: pytorch-ood's ``KNN`` uses sklearn's
  ``NearestNeighbors`` (same distances, much slower at 1.2M x 2048; cross-checked in the tests).
- SHE: OpenOOD ``she_postprocessor.py`` (``she.yml``: metric ``inner_product``) and Zhang et al.
  (ICLR 2023): patterns ``S_c`` = mean training feature of the samples of class ``c`` that the network
  classifies correctly; score ``<x, S_{argmax logits}>``. pytorch-ood's ``SHE`` computes exactly this
  (only the inner product; OpenOOD's optional euclidean/cosine metrics are not offered here).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pytorch_ood.detector import SHE as PodSHE

from grood.detectors._common import (
    DEFAULT_CHUNK_ROWS,
    BaselineDetector,
    class_means,
    feature_mean,
    scatter_matrix,
)
from grood.detectors.pytorch_ood_adapter import PytorchOODDetector, linear_module
from grood.featureset import FeatureSet, LinearHead
from grood.method.neighbours import INDEX_KINDS, build_index, kth_neighbour_distance
from grood.method.neighbours.streamed import streamed_k_nearest
from grood.method.streaming import RowReader
from grood.valid_values import Count, checked_arguments

# -- Mahalanobis ---------------------------------------------------------------------------------


def precision_matrix(scatter: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``[D, D]`` pseudo-inverse of the covariance ``scatter / N`` (sklearn ``EmpiricalCovariance``)."""
    return torch.linalg.pinv(scatter / num_samples, hermitian=True)


def mahalanobis_to_means(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``[B, C]``: ``(x_b - mu_c)^T P (x_b - mu_c)`` for ``x [B, D]``, ``means [C, D]``.

    Expanded as ``x^T P x - 2 x^T P mu_c + mu_c^T P mu_c`` (float64), so no ``[B, C, D]`` tensor.
    """
    x_p = x @ precision
    means_p = means @ precision
    return (x_p * x).sum(dim=1)[:, None] - 2.0 * x_p @ means.T + (means_p * means).sum(dim=1)[None, :]


class MDS(BaselineDetector):
    """Mahalanobis distance score: ``max_c -(x - mu_c)^T Sigma^+ (x - mu_c)`` (higher = more ID).

    Fit on the ID training split with its true labels (class means and shared covariance).
    """

    name: ClassVar[str] = "mds"
    reference: ClassVar[str] = (
        "Lee, Lee, Lee & Shin, A Simple Unified Framework for Detecting Out-of-Distribution Samples and "
        "Adversarial Attacks, NeurIPS 2018"
    )
    uses_labels: ClassVar[bool] = True

    def fit(self, train: FeatureSet, head: LinearHead) -> "MDS":
        self._start_fit(train, head)
        self.class_means = class_means(
            train.features, train.labels, self.num_classes, self.chunk_rows, self.device, f"{self.name}.fit"
        )
        scatter = scatter_matrix(train.features, self.class_means, train.labels, self.chunk_rows, self.device)
        self.precision = precision_matrix(scatter, len(train))
        self._fitted = True
        return self

    def _class_distances(self, features: torch.Tensor) -> torch.Tensor:
        return mahalanobis_to_means(features.to(torch.float64), self.class_means, self.precision)

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: -self._class_distances(chunk.features).min(dim=1).values)


class RMDS(MDS):
    """Relative Mahalanobis: ``max_c [-md_c(x) + md_0(x)]``, ``md_0`` under one Gaussian of all training features.

    Fit on the ID training split with its true labels.
    """

    name: ClassVar[str] = "rmds"
    reference: ClassVar[str] = (
        "Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, A Simple Fix to Mahalanobis Distance for Improving "
        "Near-OOD Detection, arXiv 2106.09022, 2021"
    )

    def fit(self, train: FeatureSet, head: LinearHead) -> "RMDS":
        super().fit(train, head)
        self._fitted = False
        self.background_mean = feature_mean(train.features, self.chunk_rows, self.device)
        scatter = scatter_matrix(train.features, self.background_mean, None, self.chunk_rows, self.device)
        self.background_precision = precision_matrix(scatter, len(train))
        self._fitted = True
        return self

    def _relative_score(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(torch.float64)
        background = mahalanobis_to_means(x, self.background_mean[None, :], self.background_precision)[:, 0]
        return (background[:, None] - self._class_distances(x)).max(dim=1).values

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: self._relative_score(chunk.features))


# -- KNN -----------------------------------------------------------------------------------------


#: KNN "exact": training rows per streamed chunk.
STREAMED_TRAIN_CHUNK = 4096


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows of ``[N, D]`` divided by their L2 norm (clamped at ``1e-12``)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


class KNN(BaselineDetector):
    """Deep nearest neighbours: minus the distance of the normalised feature to its ``k``-th nearest
    normalised training feature (higher = more ID). Fit on the ID training split.

    Args:
        k: which neighbour (OpenOOD's ``K``; ``knn.yml``: 50).
        index: ``"exact"`` (default): exact search that streams the training features (kept by reference, a
            memory map stays one) a chunk at a time against all the queries
            (:func:`grood.method.neighbours.streamed.streamed_k_nearest`): no copy of the training set is
            held, so ImageNet-1k's 1,281,167 x 2048 features need only the queries and a chunk; distances as
            FAISS ``IndexFlatL2`` computes them (OpenOOD's index). Another :mod:`grood.method.neighbours` kind
            builds that index over the normalised features.
        index_params: keyword arguments of that index (none for ``"exact"``).
    """

    name: ClassVar[str] = "knn"
    reference: ClassVar[str] = (
        "Sun, Ming, Zhu & Li, Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"
    )
    sweep: ClassVar[dict[str, list]] = {"k": [50, 100, 200, 500, 1000]}
    uses_index: ClassVar[bool] = True  # index, index_params: the run's `index` group

    @checked_arguments
    def __init__(
        self,
        k: Count = 50,
        index: str = "exact",
        index_params: dict[str, Any] | None = None,
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        if index not in INDEX_KINDS:
            raise ValueError(f"KNN: unknown index kind {index!r}; valid: {', '.join(INDEX_KINDS)}")
        self.k = int(k)
        self.index_kind = index
        self.index_params = dict(index_params or {})

    def fit(self, train: FeatureSet, head: LinearHead) -> "KNN":
        self._start_fit(train, head)
        if self.k > len(train):
            raise ValueError(f"KNN: k={self.k} exceeds the {len(train)} training samples; use k <= {len(train)}")
        if self.index_kind == "exact":
            if self.index_params:
                raise ValueError(f"KNN: index 'exact' takes no index_params; got {sorted(self.index_params)}")
            self.index = None
            self.train_features = train.features  # streamed at each score (no copy)
            self._fitted = True
            return self
        self.index = build_index(self.index_kind, self.feature_dim, device=self.device, **self.index_params)
        for rows, chunk in RowReader(train.features, self.device).chunks(self.chunk_rows):
            self.index.add(l2_normalise(chunk))
        self._fitted = True
        return self

    def _streamed_distances(self, queries: torch.Tensor) -> torch.Tensor:
        """``[B]`` distance of each normalised query ``[B, D]`` to its ``k``-th nearest normalised training
        feature, the training features streamed a chunk at a time."""
        reader = RowReader(self.train_features, self.device)
        chunks = ((torch.arange(rows.start, rows.stop), l2_normalise(chunk))
                  for rows, chunk in reader.chunks(STREAMED_TRAIN_CHUNK))
        return streamed_k_nearest(queries, chunks, self.k)[0][:, self.k - 1]

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        if self.index is None:  # "exact": all the queries against the streamed training features
            queries = torch.cat([l2_normalise(chunk) for _, chunk in
                                 RowReader(data.features, self.device).chunks(self.chunk_rows)])
            return -self._streamed_distances(queries).cpu()
        return self._score_in_chunks(
            data,
            lambda chunk: -kth_neighbour_distance(
                self.index, l2_normalise(chunk.features.float()), k=self.k, batch_size=self.chunk_rows
            ),
        )


# -- SHE -----------------------------------------------------------------------------------------


class SHE(PytorchOODDetector):
    """Simplified Hopfield energy: ``<x, S_pred>``, ``S_c`` = mean feature of correctly classified training
    samples of class ``c`` (higher = more ID). Fit on the ID training split with its true labels.
    """

    name: ClassVar[str] = "she"
    reference: ClassVar[str] = (
        "Zhang, Fu, Wang, Li & Zhang, Out-of-Distribution Detection based on In-Distribution Data Patterns "
        "Memorization with Modern Hopfield Energy, ICLR 2023"
    )
    uses_labels: ClassVar[bool] = True

    def fit(self, train: FeatureSet, head: LinearHead) -> "SHE":
        self._start_fit(train, head)
        missing = (torch.bincount(train.labels, minlength=self.num_classes) == 0).nonzero()[:, 0]
        if missing.numel() > 0:
            raise ValueError(
                f"SHE.fit: class(es) {missing[:10].tolist()} have no training sample; every class needs one"
            )
        pod = PodSHE(encoder=None, head=linear_module(head, self.device)).to(self.device)
        try:
            pod.fit_features(train.features, train.labels, batch_size=self.chunk_rows)
        except (AssertionError, ValueError) as error:
            raise ValueError(
                f"SHE.fit: every class 0..{self.num_classes - 1} needs at least one training sample the head "
                f"classifies correctly ({error or 'a class is missing from the labels'})"
            ) from error
        self.pod = pod
        self._fitted = True
        return self

    def _outlier_scores(self, chunk: FeatureSet) -> torch.Tensor:
        return self.pod.predict_features(chunk.features)

"""The GROOD detector on penultimate features (paper Algorithms 1 and 2).

``GROOD().fit(train_features, train_labels, ood_prototype=p_ood)`` computes the class prototypes
(eq. 7) and the training gradients (eq. 5) and indexes them; ``.score(features)`` returns
**minus** the eq. 6 distance, so that **higher = more in-distribution** (OpenOOD's convention).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from grood.device import resolve_device
from grood.io import atomic_write
from grood.method.ncp import (
    class_prototype_gradient,
    gradient_l1_norm,
    grood_gradient,
    ood_prototype_distance,
)
from grood.method.neighbours import build_index, kth_neighbour_distance, load_index, save_index
from grood.method.prototypes import class_prototypes as compute_class_prototypes
from grood.method.prototypes import mean_of_class_prototypes

#: Scoring variants: the full method and the ablations of the paper's Table 4.
VARIANTS = ("grood", "ood_distance", "gradient_l1", "class_gradient")
FIT_ON = ("all", "correct")


class NotFittedError(RuntimeError):
    """A detector was used before ``fit``."""


class GROOD:
    """GROOD on features.

    Args:
        index: nearest-neighbour index kind for eq. 6: "exact" (FAISS flat, default), "ivf", "torch".
        k: score with the distance to the ``k``-th nearest training gradient (1 = eq. 6; Fig. 5).
        index_params: e.g. ``{"nlist": 100, "nprobe": 10}`` for "ivf".
        fit_on: index the gradients of "all" training samples (eq. 6) or only the "correct"ly classified.
        variant: "grood" (eq. 6 on eq.-5 gradients) or a Table 4 ablation: "ood_distance" (score =
            ``||h - p_ood||``), "gradient_l1" (score = -L1 norm of eq. 5), "class_gradient" (eq. 6 on
            gradients w.r.t. the predicted class prototype instead of ``p_ood``).
        batch_size: rows per chunk when computing gradients and searching.

    Score signs (all: higher = more ID): "grood"/"class_gradient": ``-distance``; "gradient_l1":
    ``-||∇H(h)||_1`` (ID samples have a small ``p_ood(h)``, the gradient's norm); "ood_distance":
    ``+||h - p_ood||`` (ID samples sit far from the OOD prototype).
    """

    def __init__(
        self,
        index: str = "exact",
        k: int = 1,
        index_params: dict[str, Any] | None = None,
        fit_on: str = "all",
        variant: str = "grood",
        batch_size: int = 65536,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown GROOD variant {variant!r}; valid: {list(VARIANTS)}")
        if fit_on not in FIT_ON:
            raise ValueError(f"fit_on must be one of {list(FIT_ON)}; got {fit_on!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        self.index_kind = index
        self.index_params = dict(index_params or {})
        self.k = k
        self.fit_on = fit_on
        self.variant = variant
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.progress = progress
        self.class_prototypes: torch.Tensor | None = None
        self.ood_prototype: torch.Tensor | None = None
        self.index = None
        self.num_train_indexed = 0

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _check_finite(features: torch.Tensor, what: str) -> None:
        finite = torch.isfinite(features)
        if not bool(finite.all()):
            bad_rows = int((~finite).any(dim=1).sum())
            raise ValueError(f"{what}: {bad_rows} row(s) contain NaN or inf; fix the features before GROOD")

    def _check_features(self, features: torch.Tensor, what: str) -> None:
        if self.class_prototypes is None:
            raise NotFittedError("GROOD is not fitted: call fit(train_features, train_labels, ...) first")
        if features.dim() != 2:
            raise ValueError(f"{what} must be [N, D]; got shape {tuple(features.shape)}")
        if features.shape[1] != self.class_prototypes.shape[1]:
            raise ValueError(
                f"{what} have dimension {features.shape[1]} but GROOD was fitted on dimension "
                f"{self.class_prototypes.shape[1]}"
            )
        self._check_finite(features, what)

    # ------------------------------------------------------------- the maths
    def gradients(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` eq.-5 gradients (or class-prototype gradients for variant "class_gradient")."""
        function = class_prototype_gradient if self.variant == "class_gradient" else grood_gradient
        prototypes = self.class_prototypes.to(self.device)
        p_ood = self.ood_prototype.to(self.device)
        chunks = []
        for start in range(0, features.shape[0], self.batch_size):
            chunk = features[start : start + self.batch_size].to(self.device, torch.float32)
            chunks.append(function(chunk, prototypes, p_ood))
        return torch.cat(chunks) if chunks else torch.empty(0, features.shape[1], device=self.device)

    def fit(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        ood_prototype: torch.Tensor | None = None,
        num_classes: int | None = None,
        train_predictions: torch.Tensor | None = None,
    ) -> "GROOD":
        """Algorithm 1: class prototypes (eq. 7), training gradients (eq. 5), their index.

        Args:
            train_features: ``[N, D]`` penultimate features of the ID training set.
            train_labels: ``[N]`` labels in ``0..C-1``.
            ood_prototype: ``[D]`` ``p_ood`` (eq. 8); None = the mean of the class prototypes.
            num_classes: ``C`` (default ``max(label) + 1``).
            train_predictions: ``[N]`` the classifier's predictions, needed for ``fit_on="correct"``.
        """
        if train_features.dim() != 2:
            raise ValueError(f"train_features must be [N, D]; got shape {tuple(train_features.shape)}")
        if train_labels.shape != train_features.shape[:1]:
            raise ValueError(
                f"{train_features.shape[0]} training features but labels of shape {tuple(train_labels.shape)}"
            )
        self._check_finite(train_features, "training features")
        if num_classes is None:
            num_classes = int(train_labels.max()) + 1
        self.class_prototypes = compute_class_prototypes(train_features.float(), train_labels, num_classes).cpu()
        if ood_prototype is None:
            ood_prototype = mean_of_class_prototypes(self.class_prototypes)
        ood_prototype = ood_prototype.detach().float().cpu().flatten()
        if ood_prototype.shape[0] != train_features.shape[1]:
            raise ValueError(
                f"ood_prototype has dimension {ood_prototype.shape[0]}, the features {train_features.shape[1]}"
            )
        if not bool(torch.isfinite(ood_prototype).all()):
            raise ValueError("ood_prototype contains NaN or inf")
        self.ood_prototype = ood_prototype

        selected = train_features
        if self.fit_on == "correct":
            if train_predictions is None:
                raise ValueError("fit_on='correct' needs train_predictions (the classifier's predicted labels)")
            correct = train_predictions.to(train_labels.device) == train_labels
            if not bool(correct.any()):
                raise ValueError("fit_on='correct': no training sample is classified correctly")
            selected = train_features[correct]
        if self.variant in ("grood", "class_gradient"):
            gradients = self.gradients(selected)
            self.index = build_index(self.index_kind, gradients.shape[1], **self.index_params)
            self.index.add(gradients)
            self.num_train_indexed = gradients.shape[0]
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Algorithm 2: ``[N, D] -> [N]`` scores, **higher = more in-distribution** (minus eq. 6)."""
        self._check_features(features, "features")
        if self.variant == "ood_distance":
            return ood_prototype_distance(features.float().cpu(), self.ood_prototype)
        gradients = self.gradients(features)
        if self.variant == "gradient_l1":
            return -gradient_l1_norm(gradients).cpu()
        distances = kth_neighbour_distance(self.index, gradients, self.k, self.batch_size, self.progress)
        return -distances

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` index of the nearest class prototype (the paper's "NCP Acc." classifier)."""
        self._check_features(features, "features")
        chunks = [
            torch.cdist(features[start : start + self.batch_size].float().cpu(), self.class_prototypes).argmin(1)
            for start in range(0, features.shape[0], self.batch_size)
        ]
        return torch.cat(chunks)

    # ------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {
            "index": self.index_kind, "k": self.k, "index_params": self.index_params, "fit_on": self.fit_on,
            "variant": self.variant, "batch_size": self.batch_size,
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write prototypes, config and the index into ``directory`` (each file atomically)."""
        if self.class_prototypes is None:
            raise NotFittedError("nothing to save: GROOD is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / "prototypes.pt", "wb") as handle:
            torch.save({"class_prototypes": self.class_prototypes, "ood_prototype": self.ood_prototype,
                        "num_train_indexed": self.num_train_indexed}, handle)
        if self.index is not None:
            save_index(self.index, directory / "index")
        with atomic_write(directory / "grood.json") as handle:
            json.dump(self.config(), handle, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> "GROOD":
        """A detector saved by :meth:`save`; it gives identical scores."""
        directory = Path(directory)
        config_path = directory / "grood.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path} not found: not a directory written by GROOD.save()")
        detector = cls(**json.loads(config_path.read_text()), device=device)
        blob = torch.load(directory / "prototypes.pt", map_location="cpu", weights_only=True)
        detector.class_prototypes = blob["class_prototypes"]
        detector.ood_prototype = blob["ood_prototype"]
        detector.num_train_indexed = blob["num_train_indexed"]
        if (directory / "index").exists():
            detector.index = load_index(directory / "index")
        return detector

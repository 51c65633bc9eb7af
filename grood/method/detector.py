"""The GROOD detector on penultimate features, no network involved (paper Algorithms 1 and 2).

``GROOD().fit(train_features, train_labels, ood_prototype=p_ood)`` computes the class prototypes
(eq. 7), the gradient (eq. 5) of every training sample and indexes those gradients;
``.score(features)`` returns **minus** the eq. 6 distance to the nearest training gradient, so that
**higher = more in-distribution** (OpenOOD's convention, the one of every grood detector).

This is the **feature-level** GROOD (``grood.method.GROOD``): tensors in, tensors out. The pipeline, the
OpenOOD postprocessor (:mod:`grood.openood_compat`), the network-level GROOD (``grood.GROOD``,
:mod:`grood.on_network`: GROOD on a network, fitted from a DataLoader, with the paper's mixup
prototype) and the detector registry (:mod:`grood.detectors`, through its adapter
:class:`~grood.detectors.grood_adapter.GROODDetector`) all fit and score with it. ``fit`` and ``score`` also take a
:class:`~grood.featureset.FeatureSet` (labels and the classifier's predictions then come from it). The
OOD prototype ``p_ood`` is an argument of ``fit``: the paper's (mixup, eq. 9) needs the network and comes
from :func:`grood.method.strategies.build_ood_prototype`; ``"mean"`` spells out the mean of the class
prototypes.
"""

from __future__ import annotations

import logging

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch

from grood.device import resolve_device
from grood.io import atomic_directory, atomic_file
from grood.method._checks import check_finite, check_labels, check_matrix, check_vector
from grood.method.ncp import (
    class_prototype_gradient,
    gradient_l1_norm,
    grood_gradient,
    ncp_predict,
    ood_prototype_distance,
)
from grood.method.neighbours import INDEX_KINDS, NeighbourIndex, build_index, kth_neighbour_distance, load_index
from grood.method.streaming import RowReader, argmax_rows
from grood.method.prototypes import ClassMeanAccumulator, check_ood_prototype_separated, mean_of_class_prototypes
from grood.progress import track
from grood.valid_values import Count, Valid, declared_rules

log = logging.getLogger(__name__)

#: The full method and the ablations of the paper's Table 4.
VARIANTS = ("grood", "ood_distance", "gradient_l1", "class_gradient")
#: Variants that score by a nearest-neighbour search (eq. 6) and so build an index.
INDEXED_VARIANTS = ("grood", "class_gradient")
FIT_ON = ("all", "correct")
SAVE_FORMAT = "grood.method.GROOD"
SAVE_VERSION = 1
_CONFIG_FILE = "grood.json"
_TENSORS_FILE = "tensors.pt"
#: The annotations that declare the valid values of GROOD's string parameters.
IndexKind = Annotated[str, Valid(choices=INDEX_KINDS)]
Variant = Annotated[str, Valid(choices=VARIANTS)]
FitOn = Annotated[str, Valid(choices=FIT_ON)]


class NotFittedError(RuntimeError):
    """A GROOD detector was used (score, predict, save) before :meth:`GROOD.fit`."""


def _is_feature_set(data: Any) -> bool:
    """True for a :class:`~grood.featureset.FeatureSet` (duck-typed: grood.method imports nothing above it)."""
    return all(hasattr(data, name) for name in ("features", "logits", "labels")) and not isinstance(data, torch.Tensor)



def inferred_class_count_doubt(
    labels: torch.Tensor, inferred: int, predictions: torch.Tensor | None = None,
    class_prototypes: torch.Tensor | None = None,
) -> str | None:
    """Why ``inferred = max(labels) + 1`` may not be the class count (None: nothing says so).

    Two signs: the labels skip a class (an index below the largest has no sample), or the caller declared
    more classes elsewhere (``predictions`` holding a class >= ``inferred``, ``class_prototypes`` with more
    rows). A label set whose last classes have no sample and nothing else declaring them cannot be told apart
    from a smaller label set, so no warning fires on an ordinary fit."""
    reasons = []
    if labels.numel():
        present = torch.bincount(labels.detach().to("cpu", torch.long).clamp(min=0), minlength=inferred)[:inferred]
        skipped = (present == 0).nonzero().flatten().tolist()
        if skipped:
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            reasons.append(f"the labels skip class(es) {skipped[:10]}{more} (no sample)")
    if predictions is not None and predictions.numel() and not predictions.is_floating_point():
        largest = int(predictions.max())
        if largest >= inferred:
            reasons.append(f"train_predictions hold class {largest}")
    if class_prototypes is not None and class_prototypes.dim() == 2 and class_prototypes.shape[0] > inferred:
        reasons.append(f"class_prototypes has {class_prototypes.shape[0]} rows")
    return "; ".join(reasons) or None

class GROOD:
    """GROOD on features (feature-level; for GROOD on a network see ``grood.GROOD``): eq. 7 prototypes,
    eq. 5 gradients, eq. 6 nearest-neighbour score. Scores: **higher = more in-distribution**.

    Args:
        index: nearest-neighbour index kind for eq. 6: ``"exact"`` (default: the fastest exact search for the
            device, :func:`grood.method.neighbours.exact_choice`), ``"faiss_flat"`` (FAISS ``IndexFlatL2``),
            ``"ivf"`` (inverted file, appendix A.4), ``"torch"`` (no FAISS) or ``"faiss_ivf"`` (FAISS
            ``IndexIVFFlat`` with the author's OpenOOD cell rule); see :mod:`grood.method.neighbours`.
        k: score with the distance to the ``k``-th nearest training gradient (``1`` = eq. 6; Fig. 5).
        index_params: keyword arguments of the index, e.g. ``{"nlist": 256, "nprobe": 8}`` for "ivf", or
            ``{"norm_pruning": True}`` for "torch" (exact search that skips gradients out of reach by norm).
        fit_on: index the gradients of ``"all"`` training samples (eq. 6, default) or only of those the
            classifier gets right (``"correct"``, as the author's OpenOOD port does; needs
            ``train_predictions`` at :meth:`fit`).
        variant: ``"grood"`` (the method) or a Table 4 ablation: ``"ood_distance"``, ``"gradient_l1"``,
            ``"class_gradient"`` (see :meth:`score`).
        batch_size: rows per chunk for prototypes, gradients and searches (bounds the memory).
        device: where prototypes and gradients are computed (None: CUDA if available, else CPU).
        progress: show tqdm progress bars.

    Attributes (after :meth:`fit`): ``class_prototypes [C, D]`` and ``ood_prototype [D]`` (float32, on
    ``device``), ``index`` (None for the variants without a search), ``num_indexed``.
    """

    # grood.detectors.GROODDetector gives it the Detector interface of the baselines
    name: ClassVar[str] = "grood"
    reference: ClassVar[str] = "GROOD: Gradient-Aware Out-of-Distribution Detection (this repository's paper)"

    def __init__(
        self,
        index: IndexKind = "exact",
        k: Count = 1,
        index_params: dict[str, Any] | None = None,
        fit_on: FitOn = "all",
        variant: Variant = "grood",
        batch_size: Count = 8192,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.check_params(index=index, k=k, index_params=index_params, fit_on=fit_on, variant=variant,
                          batch_size=batch_size)
        self.index_kind = index
        self.k = int(k)
        self.index_params = dict(index_params or {})
        self.fit_on = fit_on
        self.variant = variant
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.progress = progress
        self.class_prototypes: torch.Tensor | None = None
        self.ood_prototype: torch.Tensor | None = None
        self.index: NeighbourIndex | None = None
        self.num_indexed = 0
        #: class_gradient only: "network" when fit used train_predictions as the label y, else "ncp".
        self.class_labels_from = "ncp"

    @staticmethod
    def check_params(
        index: str = "exact", k: int = 1, index_params: Any = None, fit_on: str = "all", variant: str = "grood",
        batch_size: int = 8192,
    ) -> None:
        """Raise ValueError naming the first constructor argument whose value cannot work (the one place
        GROOD's parameters are checked, against the valid values declared in the constructor's annotations:
        the postprocessor checks a sweep's values with it before setup)."""
        given = {"index": index, "k": k, "fit_on": fit_on, "variant": variant, "batch_size": batch_size}
        for name, rule in declared_rules(GROOD.__init__).items():
            problem = rule.problem(given[name])
            if problem is not None:
                raise ValueError(f"GROOD: {name} {problem}")
        if index_params is not None and not hasattr(index_params, "keys"):
            raise ValueError(f"index_params must be None or a dict of index arguments, e.g. {{'nlist': 256, "
                             f"'nprobe': 8}}; got {index_params!r}")

    def check_index(self, dim: int) -> None:
        """Raise ValueError where this detector's index cannot be built for ``dim``-dimensional features on
        its device, e.g. ``index_params={"scan": "int8"}`` on CUDA; for the indexes in torch ("ivf", "torch"),
        whose construction allocates nothing. The pipeline calls it before any forward pass (:meth:`fit`
        builds the index after them)."""
        if self.variant in INDEXED_VARIANTS and self.index_kind in ("ivf", "torch"):
            build_index(self.index_kind, dim, device=self.device, **self.index_params)

    # ------------------------------------------------------------------------------------ helpers
    @property
    def is_fitted(self) -> bool:
        return self.class_prototypes is not None

    @property
    def dim(self) -> int:
        self._check_fitted()
        return int(self.class_prototypes.shape[1])

    @property
    def num_classes(self) -> int:
        self._check_fitted()
        return int(self.class_prototypes.shape[0])

    def _check_fitted(self) -> None:
        if self.class_prototypes is None:
            raise NotFittedError("this GROOD detector is not fitted: call fit(train_features, train_labels, ...) first")

    def _batches(self, count: int, description: str) -> Iterator[slice]:
        starts = range(0, count, self.batch_size)
        for start in track(starts, f"{description} ({count:,} rows)", self.progress):
            yield slice(start, min(start + self.batch_size, count))

    def _check_features(self, features: torch.Tensor, name: str = "features") -> None:
        self._check_fitted()
        check_matrix(name, features)
        if features.shape[1] != self.dim:
            raise ValueError(
                f"{name} have dimension {features.shape[1]} but this GROOD detector was fitted on dimension "
                f"{self.dim}; use features from the same layer and network"
            )
        check_finite(name, features)

    def _gradient(
        self, h: torch.Tensor, labels: torch.Tensor | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, D]`` eq. 5 gradient, or the class-prototype gradient for the "class_gradient" variant;
        written into ``out`` (``[B, D]``) when given."""
        if self.variant == "class_gradient":
            gradient = class_prototype_gradient(h, self.class_prototypes, self.ood_prototype, labels=labels)
            return gradient if out is None else out.copy_(gradient)
        return grood_gradient(h, self.class_prototypes, self.ood_prototype, out=out)

    def _class_labels_for_scoring(self, predictions: torch.Tensor | None, count: int) -> torch.Tensor | None:
        if self.variant != "class_gradient":
            return None  # ignored: the other variants need no class label
        if self.class_labels_from == "network" and predictions is None:
            raise ValueError(
                "variant 'class_gradient' was fitted with train_predictions (the network's predicted classes are "
                "the label y of the class-prototype gradient); pass predictions=logits.argmax(1) to score() too"
            )
        if self.class_labels_from == "ncp" and predictions is not None:
            raise ValueError(
                "variant 'class_gradient' was fitted without train_predictions (y = nearest class prototype); "
                "score() without predictions, or refit with train_predictions"
            )
        if predictions is not None:
            check_labels("predictions", predictions, count, self.num_classes)
        return predictions

    # ---------------------------------------------------------------------------------------- fit
    def fit(
        self,
        train_features: Any,
        train_labels: Any = None,
        ood_prototype: torch.Tensor | str | None = None,
        num_classes: int | None = None,
        train_predictions: torch.Tensor | None = None,
        class_prototypes: torch.Tensor | None = None,
    ) -> "GROOD":
        """Algorithm 1: class prototypes (eq. 7), training gradients (eq. 5) and their index.

        Args:
            train_features: ``[N, D]`` penultimate features of the ID training set, or its
                :class:`~grood.featureset.FeatureSet`: the labels, ``num_classes`` (default) and
                ``train_predictions`` (``logits.argmax(1)``, default) then come from it, and
                ``train_labels`` must be None.
            train_labels: ``[N]`` integer labels in ``0..C-1`` (with a feature tensor).
            ood_prototype: required: ``[D]`` the OOD prototype ``p_ood`` (eq. 8), or ``"mean"`` for the mean
                of the class prototypes (appendix A.2 "Mean of Prototypes", the only choice that needs no
                data beyond the training features). The paper's default (mixup, eq. 9) needs the network:
                :func:`grood.method.strategies.build_ood_prototype` builds it, and ``grood.GROOD`` fits
                GROOD on a network with it.
            num_classes: ``C``; default ``max(train_labels) + 1``. Every class needs a training sample.
            train_predictions: ``[N]`` the classifier's predicted classes. Required by
                ``fit_on="correct"`` (rows with ``prediction == label`` are indexed); for the
                ``"class_gradient"`` variant they are the label ``y`` of the gradient (as in the author's
                port), and :meth:`score` then needs ``predictions`` too.
            class_prototypes: ``[C, D]`` eq. 7 prototypes already computed from these same training
                features (e.g. by :func:`grood.method.class_prototypes`, to build the OOD prototype), so
                that fitting does not compute them again; None computes them.
        Returns:
            ``self``.
        """
        if _is_feature_set(train_features):
            if train_labels is not None:
                raise ValueError("fit(FeatureSet) takes the labels from the FeatureSet; pass no train_labels")
            data = train_features
            train_features, train_labels = data.features, data.labels
            num_classes = data.num_classes if num_classes is None else num_classes
            if train_predictions is None:
                train_predictions = argmax_rows(data.logits, self.batch_size)
        elif train_labels is None:
            raise ValueError("fit(train_features [N, D], train_labels [N], ...): train_labels is missing")
        check_matrix("train_features", train_features)
        count, dim = train_features.shape
        if count == 0:
            raise ValueError("train_features has 0 rows; GROOD needs ID training features to fit")
        if not isinstance(train_labels, torch.Tensor) or train_labels.dim() != 1:
            raise ValueError(f"train_labels must be a 1-D tensor [N]; got {getattr(train_labels, 'shape', train_labels)!r}")
        if train_labels.shape[0] != count:
            raise ValueError(f"train_labels has {train_labels.shape[0]} entries but train_features has {count} rows")
        if num_classes is None:
            if train_labels.is_floating_point():
                raise ValueError(f"train_labels must hold integer class indices; got dtype {train_labels.dtype}")
            num_classes = int(train_labels.max()) + 1
            doubt = inferred_class_count_doubt(train_labels, num_classes, train_predictions, class_prototypes)
            if doubt:
                log.warning("GROOD.fit: num_classes inferred as max(train_labels) + 1 = %d, but %s: pass num_classes= "
                            "(or a FeatureSet) with the benchmark's class count", num_classes, doubt)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        check_labels("train_labels", train_labels, count, int(num_classes))
        check_finite("train_features", train_features)
        if train_predictions is not None:
            check_labels("train_predictions", train_predictions, count, int(num_classes))
        elif self.fit_on == "correct":
            raise ValueError(
                "fit_on='correct' needs train_predictions (the classifier's predicted class of each training row)"
            )
        if ood_prototype is None:
            raise ValueError(
                "GROOD.fit needs ood_prototype=: the [D] OOD prototype (eq. 8; the paper's mixup, eq. 9, is built "
                "by grood.method.strategies.build_ood_prototype, or use grood.GROOD on the network), or 'mean' for "
                "the mean of the class prototypes (appendix A.2)"
            )
        if isinstance(ood_prototype, str) and ood_prototype != "mean":
            raise ValueError(f"ood_prototype={ood_prototype!r}: give a [D] tensor or 'mean'")

        # Eq. 7: class prototypes, streamed in float64 (or the caller's, from these same features).
        if class_prototypes is None:
            accumulator = ClassMeanAccumulator(int(num_classes), dim, device=self.device)
            reader = RowReader(train_features, self.device, dtype=train_features.dtype)
            for rows in self._batches(count, "GROOD class prototypes"):
                accumulator.update(reader.rows(rows), train_labels[rows].to(self.device))
            self.class_prototypes = accumulator.means(dtype=torch.float32)
        else:
            check_matrix("class_prototypes", class_prototypes, dim=dim)
            if class_prototypes.shape[0] != int(num_classes):
                raise ValueError(
                    f"class_prototypes has {class_prototypes.shape[0]} rows but there are {num_classes} classes; "
                    "pass one prototype per class (eq. 7) or None to compute them"
                )
            check_finite("class_prototypes", class_prototypes)
            self.class_prototypes = class_prototypes.detach().to(device=self.device, dtype=torch.float32)

        # Eq. 8 (computed outside) or the mean of the class prototypes.
        if isinstance(ood_prototype, str):  # "mean" (checked above)
            self.ood_prototype = mean_of_class_prototypes(self.class_prototypes)
        else:
            check_vector("ood_prototype", ood_prototype, dim)
            check_finite("ood_prototype", ood_prototype)
            self.ood_prototype = ood_prototype.detach().to(device=self.device, dtype=torch.float32)
        check_ood_prototype_separated(self.ood_prototype, self.class_prototypes)

        self.index = None
        self.num_indexed = 0
        self.class_labels_from = "network" if train_predictions is not None else "ncp"
        if self.variant in INDEXED_VARIANTS:
            self._build_index(train_features, train_labels, train_predictions)
        return self

    def _build_index(
        self, features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor | None
    ) -> None:
        """Eq. 5 gradients of the selected training rows, added to a new index."""
        keep = None
        if self.fit_on == "correct":
            keep = predictions.to(labels.device) == labels
            self.num_indexed = int(keep.sum())
            if self.num_indexed == 0:
                raise ValueError("fit_on='correct': no training row has train_predictions == train_labels")
        else:
            self.num_indexed = features.shape[0]
        if self.k > self.num_indexed:
            raise ValueError(f"k={self.k} exceeds the {self.num_indexed} training gradients to index; lower k")

        index = build_index(self.index_kind, features.shape[1], device=self.device, **self.index_params)
        if getattr(index, "storage", "float32") == "float16":
            self._build_compact_index(index, features, predictions, keep)
            return
        # Indexes that take batched adds get each batch's gradients from one reused buffer (no [N, D]
        # gradient matrix beside the index's own copy); "ivf" trains on one add of all of them.
        if index.incremental_add:
            index.reserve(self.num_indexed)
            buffer = torch.empty((min(self.batch_size, self.num_indexed), features.shape[1]), device=self.device)
        else:
            gradients = torch.empty((self.num_indexed, features.shape[1]), dtype=torch.float32, device=self.device)
        filled = 0
        reader = RowReader(features)
        for rows in self._batches(features.shape[0], "GROOD training gradients"):
            h = reader.rows(rows)
            y = predictions[rows] if (self.variant == "class_gradient" and predictions is not None) else None
            if keep is not None:
                mask = keep[rows].to(h.device)
                h = h[mask]
                y = None if y is None else y[mask.to(y.device)]
            if h.shape[0] == 0:
                continue
            h = h.to(device=self.device, dtype=torch.float32)
            y = None if y is None else y.to(self.device)
            if index.incremental_add:
                index.add(self._gradient(h, y, out=buffer[: h.shape[0]]))
            else:
                self._gradient(h, y, out=gradients[filled : filled + h.shape[0]])
            filled += h.shape[0]
        if not index.incremental_add:  # with each gradient's training row ("faiss_ivf" trains on the first batches)
            rows = torch.arange(features.shape[0]) if keep is None else keep.nonzero().flatten().cpu()
            index.add_training(gradients, rows, total_rows=features.shape[0])
        self.index = index

    def _build_compact_index(
        self, index: NeighbourIndex, features: torch.Tensor, predictions: torch.Tensor | None,
        keep: torch.Tensor | None,
    ) -> None:
        """``storage="float16"``: the index is filled chunk by chunk (``build_streamed``: no ``[N, D]`` gradient
        matrix, the features read a chunk at a time) and re-ranks its candidates with the exact gradients,
        recomputed from the training features of those rows (``exact_source``; the index keeps a reference to
        ``features``, a memory map stays a memory map)."""
        reader = RowReader(features, self.device)
        indexed_rows = None if keep is None else keep.nonzero().flatten().cpu()
        labels = predictions if (self.variant == "class_gradient" and predictions is not None) else None

        def gradients_of(rows: slice | torch.Tensor) -> torch.Tensor:
            """``[M, D]`` gradients of the indexed rows ``rows`` (a slice or ``[M]`` indices, in indexing order)."""
            if indexed_rows is not None:
                rows = indexed_rows[rows]
            h = reader.rows(rows) if isinstance(rows, slice) else reader.take(rows)
            y = None if labels is None else labels[rows].to(self.device)
            return self._gradient(h, y)

        index.exact_source = gradients_of
        index.build_streamed(self.num_indexed, gradients_of, self.batch_size)
        self.index = index

    # -------------------------------------------------------------------------------------- score
    def _unpack(self, data: Any, predictions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features, predictions)`` of a feature tensor or a FeatureSet (predictions from its logits,
        when this detector scores with the network's predictions)."""
        if not _is_feature_set(data):
            return data, predictions
        if predictions is None and self.class_labels_from == "network" and self.variant == "class_gradient":
            predictions = argmax_rows(data.logits, self.batch_size)
        return data.features, predictions

    def gradients(self, features: Any, predictions: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, D]`` the vectors this detector searches: eq. 5 gradients (class-prototype gradients for
        the "class_gradient" variant), on ``device``. ``features``: ``[N, D]`` or a FeatureSet."""
        features, predictions = self._unpack(features, predictions)
        self._check_features(features)
        labels = self._class_labels_for_scoring(predictions, features.shape[0])
        out = torch.empty((features.shape[0], self.dim), dtype=torch.float32, device=self.device)
        reader = RowReader(features, self.device)
        for rows in self._batches(features.shape[0], "GROOD gradients"):
            y = None if labels is None else labels[rows].to(self.device)
            self._gradient(reader.rows(rows), y, out=out[rows])
        return out

    def score(self, features: Any, predictions: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 2: ``[N, D]`` features -> ``[N]`` float32 scores, **higher = more in-distribution**.

        By variant:

        - ``"grood"``: ``-S`` with ``S`` the eq. 6 distance from the eq. 5 gradient to its (``k``-th)
          nearest training gradient: OOD gradients lie far from all training gradients.
        - ``"class_gradient"`` (Table 4 (3)): the same with the class-prototype gradients of
          :func:`~grood.method.ncp.class_prototype_gradient`.
        - ``"gradient_l1"`` (Table 4 (2)): ``-||∇H(h)||_1``: the gradient's size is ``p_ood(h)``
          (eq. 5), small for ID samples near a class prototype, so minus the norm ranks ID higher.
        - ``"ood_distance"`` (Table 4 (1)): ``+||h - p_ood||``: ``p_ood`` stands for OOD data, so being
          far from it means ID (the sign of the author's port, ``-1 * (-||h - p_ood||)``).

        Args:
            features: ``[N, D]`` finite features, ``D`` as at fit, or a FeatureSet (its logits give the
                predictions).
            predictions: ``[N]`` the network's predicted classes; used (and then required) only by the
                "class_gradient" variant fitted with ``train_predictions``; ignored by the others.
        Returns:
            ``[N]`` float32 on the device of ``features``.
        """
        features, predictions = self._unpack(features, predictions)
        self._check_features(features)
        labels = self._class_labels_for_scoring(predictions, features.shape[0])
        scores = torch.empty(features.shape[0], dtype=torch.float32, device=self.device)
        reader = RowReader(features, self.device)
        for rows in self._batches(features.shape[0], f"GROOD {self.variant} scores"):
            h = reader.rows(rows)
            if self.variant == "ood_distance":
                scores[rows] = ood_prototype_distance(h, self.ood_prototype)
                continue
            gradient = self._gradient(h, None if labels is None else labels[rows].to(self.device))
            if self.variant == "gradient_l1":
                scores[rows] = -gradient_l1_norm(gradient)
            else:
                distances = kth_neighbour_distance(self.index, gradient, self.k, batch_size=gradient.shape[0])
                scores[rows] = -distances.to(self.device)
        return scores.to(features.device)

    def predict(self, features: Any) -> torch.Tensor:
        """``[N]`` int64: the class of the nearest class prototype (the paper's "NCP Acc." classifier);
        ``features``: ``[N, D]`` or a FeatureSet."""
        features, _ = self._unpack(features, None)
        self._check_features(features)
        out = torch.empty(features.shape[0], dtype=torch.long, device=self.device)
        reader = RowReader(features, self.device)
        for rows in self._batches(features.shape[0], "GROOD NCP predictions"):
            out[rows] = ncp_predict(reader.rows(rows), self.class_prototypes)
        return out.to(features.device)

    # -------------------------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without ``device`` and ``progress``, which belong to the run)."""
        return {
            "index": self.index_kind,
            "k": self.k,
            "index_params": self.index_params,
            "fit_on": self.fit_on,
            "variant": self.variant,
            "batch_size": self.batch_size,
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the fitted detector to ``directory``: ``grood.json`` (config), ``tensors.pt`` (prototypes)
        and ``index.faiss`` / ``index.pt`` (the index, indexed variants only).

        The directory is written beside its target and swapped into place, so a reader sees the old or
        the new save, never a mix. An existing directory is replaced only if it holds a GROOD save (or
        nothing).
        """
        self._check_fitted()
        target = Path(directory)
        if target.exists():
            if not target.is_dir():
                raise FileExistsError(f"{target} exists and is not a directory")
            if any(target.iterdir()) and not (target / _CONFIG_FILE).is_file():
                raise FileExistsError(f"{target} is a non-empty directory without {_CONFIG_FILE}: not a GROOD save, "
                                      "refusing to replace it")
        meta = {
            "format": SAVE_FORMAT,
            "version": SAVE_VERSION,
            "config": self.config(),
            "dim": self.dim,
            "num_classes": self.num_classes,
            "num_indexed": self.num_indexed,
            "class_labels_from": self.class_labels_from,
            "index_file": None if self.index is None else self._index_file_name(),
            "index_built": None if self.index is None else self.index.kind,  # "exact": the kind it chose
        }
        with atomic_directory(target) as tmp:
            torch.save(
                {"class_prototypes": self.class_prototypes.cpu(), "ood_prototype": self.ood_prototype.cpu()},
                tmp / _TENSORS_FILE,
            )
            if self.index is not None:
                self.index.save(tmp / self._index_file_name())
            with atomic_file(tmp / _CONFIG_FILE) as config_path:
                config_path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")

    def _index_file_name(self) -> str:
        return "index.faiss" if self.index.kind in ("faiss_flat", "faiss_ivf") else "index.pt"

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None, progress: bool = False
    ) -> "GROOD":
        """A detector written by :meth:`save`; on the same device it gives bit-identical scores."""
        directory = Path(directory)
        config_path = directory / _CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {directory} is not a directory written by GROOD.save()")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != SAVE_FORMAT or meta.get("version") != SAVE_VERSION:
            raise ValueError(
                f"{config_path}: format {meta.get('format')!r} version {meta.get('version')!r}; this code reads "
                f"{SAVE_FORMAT!r} version {SAVE_VERSION}"
            )
        detector = cls(**meta["config"], device=device, progress=progress)
        tensors = torch.load(directory / _TENSORS_FILE, map_location="cpu", weights_only=True)
        detector.class_prototypes = tensors["class_prototypes"].to(detector.device)
        detector.ood_prototype = tensors["ood_prototype"].to(detector.device)
        detector.num_indexed = int(meta["num_indexed"])
        detector.class_labels_from = meta["class_labels_from"]
        if meta["index_file"] is not None:
            # saves before "exact" chose per device hold a FAISS flat index (index.faiss) and no "index_built"
            built = meta.get("index_built") or ("faiss_flat" if meta["index_file"] == "index.faiss"
                                                else detector.index_kind)
            detector.index = load_index(directory / meta["index_file"], built, device=detector.device)
        return detector

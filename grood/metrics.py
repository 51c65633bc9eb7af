"""OOD detection metrics, exactly as OpenOOD v1.5 computes them (``openood/evaluators/metrics.py``).

Conventions (OpenOOD's):

- Inputs are detector scores with **higher = more in-distribution** (OpenOOD's ``conf``):
  ``id_scores [N_id]`` on the ID test set and ``ood_scores [N_ood]`` on one OOD set.
- **OOD is the positive class** for AUROC, FPR@95 and AUPR-OUT; ID is the positive class for AUPR-IN.
- Every function returns a plain Python ``float`` **fraction** in ``[0, 1]``. OpenOOD's evaluator
  multiplies its metric table by 100 (``Evaluator._eval_ood``); grood does the same in
  :mod:`grood.evaluation`, not here.

The procedure, as OpenOOD runs it with scikit-learn:

1. ``conf = concat(id_scores, ood_scores)``, ``ood_indicator = [0] * N_id + [1] * N_ood``.
2. ROC curve: ``fpr, tpr, _ = sklearn.metrics.roc_curve(ood_indicator, -conf)``. Negating ``conf`` turns
   it into an "OOD-ness" score; the curve has one point per distinct score value (tied samples enter
   the positive prediction together, so a tie never splits), starting at ``(0, 0)``, and sklearn's
   default ``drop_intermediate=True`` drops collinear points, which changes neither the area nor the
   FPR@95 defined below.
3. **AUROC** = trapezoidal area under that curve (``sklearn.metrics.auc(fpr, tpr)``); ties therefore
   count one half, equal to ``roc_auc_score``.
4. **FPR@95** = ``fpr[argmax(tpr >= 0.95)]``: walking the thresholds from the highest OOD-ness down,
   the false positive rate (fraction of ID samples with ``-conf >= threshold``, i.e. ``conf <= -threshold``)
   at the *first* threshold whose true positive rate (fraction of OOD samples with
   ``-conf >= threshold``) reaches 95%. With ties, all samples tied at that threshold count as
   detected, ID ones included.
5. **AUPR-IN** = ``auc(recall, precision)`` of ``precision_recall_curve(1 - ood_indicator, conf)``
   (ID positive, ``conf`` as the score); **AUPR-OUT** = the same for
   ``precision_recall_curve(ood_indicator, -conf)``. Both are trapezoidal areas (not sklearn's
   step-wise average precision), over sklearn's PR curve, which ends at ``(recall 0, precision 1)``.

``accuracy`` is OpenOOD's ``acc``: the fraction of ID samples (label ``!= -1``) whose predicted class
equals their label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn import metrics as sk_metrics

#: The recall (true positive rate on OOD samples) at which FPR@95 is read, as in OpenOOD.
RECALL_LEVEL = 0.95
#: Keys of :func:`compute_all`, in OpenOOD's column order (its ``ACC`` column is :func:`accuracy`).
METRIC_KEYS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT")

ScoreLike = torch.Tensor | np.ndarray | Sequence[float]


def _as_scores(name: str, scores: ScoreLike) -> np.ndarray:
    """A non-empty, finite, 1-D float64 numpy copy of ``scores`` (a tensor on any device, array or list)."""
    if isinstance(scores, torch.Tensor):
        array = scores.detach().to("cpu", torch.float64).numpy()
    else:
        array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores [N]; got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; every metric needs at least one ID and one OOD score")
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf score(s) (first positions: {first}); "
            "fix the detector or drop those samples before computing metrics"
        )
    return array


def _scores_and_ood_indicator(id_scores: ScoreLike, ood_scores: ScoreLike) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: ``conf [N_id + N_ood]`` (higher = ID) and ``ood_indicator`` (1 = OOD, the positive class)."""
    id_array = _as_scores("id_scores", id_scores)
    ood_array = _as_scores("ood_scores", ood_scores)
    conf = np.concatenate([id_array, ood_array])
    ood_indicator = np.concatenate([np.zeros(id_array.size, dtype=np.int64), np.ones(ood_array.size, dtype=np.int64)])
    return conf, ood_indicator


def _roc(conf: np.ndarray, ood_indicator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: ``fpr, tpr`` of sklearn's ROC curve with OOD positive and ``-conf`` as the OOD score."""
    fpr, tpr, _ = sk_metrics.roc_curve(ood_indicator, -conf)
    return fpr, tpr


def _fpr_at_recall(fpr: np.ndarray, tpr: np.ndarray, recall: float) -> float:
    """Step 4: the FPR at the first ROC point whose TPR reaches ``recall``."""
    return float(fpr[np.argmax(tpr >= recall)])


def _aupr(positive_indicator: np.ndarray, positive_scores: np.ndarray) -> float:
    """Step 5: trapezoidal area under sklearn's precision-recall curve."""
    precision, recall, _ = sk_metrics.precision_recall_curve(positive_indicator, positive_scores)
    return float(sk_metrics.auc(recall, precision))


def auroc(id_scores: ScoreLike, ood_scores: ScoreLike) -> float:
    """AUROC with OOD as the positive class (step 3), a fraction. Scores: higher = more ID."""
    fpr, tpr = _roc(*_scores_and_ood_indicator(id_scores, ood_scores))
    return float(sk_metrics.auc(fpr, tpr))


def fpr_at_recall(id_scores: ScoreLike, ood_scores: ScoreLike, recall: float = RECALL_LEVEL) -> float:
    """FPR@95 (step 4): fraction of ID samples flagged OOD at the first threshold detecting ``recall`` of OOD."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1]; got {recall}")
    fpr, tpr = _roc(*_scores_and_ood_indicator(id_scores, ood_scores))
    return _fpr_at_recall(fpr, tpr, recall)


def aupr_in(id_scores: ScoreLike, ood_scores: ScoreLike) -> float:
    """AUPR-IN (step 5): ID positive, ``conf`` as the score, a fraction."""
    conf, ood_indicator = _scores_and_ood_indicator(id_scores, ood_scores)
    return _aupr(1 - ood_indicator, conf)


def aupr_out(id_scores: ScoreLike, ood_scores: ScoreLike) -> float:
    """AUPR-OUT (step 5): OOD positive, ``-conf`` as the score, a fraction."""
    conf, ood_indicator = _scores_and_ood_indicator(id_scores, ood_scores)
    return _aupr(ood_indicator, -conf)


def compute_all(id_scores: ScoreLike, ood_scores: ScoreLike) -> dict[str, float]:
    """OpenOOD's four OOD metrics for one (ID test set, OOD set) pair, as fractions.

    Args:
        id_scores: ``[N_id]`` detector scores on ID samples, higher = more in-distribution.
        ood_scores: ``[N_ood]`` detector scores on OOD samples, same convention.
    Returns:
        ``{"FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT"}`` -> float in ``[0, 1]`` (multiply by 100 for
        OpenOOD's tables, as :mod:`grood.evaluation` does).
    """
    conf, ood_indicator = _scores_and_ood_indicator(id_scores, ood_scores)
    fpr, tpr = _roc(conf, ood_indicator)
    return {
        "FPR@95": _fpr_at_recall(fpr, tpr, RECALL_LEVEL),
        "AUROC": float(sk_metrics.auc(fpr, tpr)),
        "AUPR_IN": _aupr(1 - ood_indicator, conf),
        "AUPR_OUT": _aupr(ood_indicator, -conf),
    }


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """OpenOOD's ``acc``: fraction of ID samples (``labels != -1``) with ``predictions == labels``.

    Args:
        predictions: ``[N]`` predicted class indices, or ``[N, C]`` logits (their argmax is used).
        labels: ``[N]`` class indices, ``-1`` for OOD samples (ignored).
    """
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if predictions.dim() != 1 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must both be [N] "
            "(or predictions [N, C] logits)"
        )
    known = labels.cpu() != -1
    if not bool(known.any()):
        raise ValueError("accuracy needs at least one ID sample (label != -1); all labels are -1")
    correct = predictions.cpu()[known] == labels.cpu()[known]
    return float(correct.double().mean().item())

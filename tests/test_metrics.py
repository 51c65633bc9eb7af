"""OpenOOD v1.5 metrics: against scikit-learn, pytorch-ood and brute-force counts, with and without ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_ood.metrics import OODMetrics
from sklearn.metrics import roc_auc_score

from grood.metrics import METRIC_KEYS, accuracy, aupr_in, aupr_out, auroc, compute_all, fpr_at_recall


def _random_scores(seed: int, n_id: int, n_ood: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """ID scores shifted up (higher = more ID); with ``ties``, rounded onto 6 levels so most values tie."""
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, n_id)
    ood_scores = rng.normal(0.0, 1.0, n_ood)
    if ties:
        id_scores = np.clip(np.round(id_scores), -2, 3)
        ood_scores = np.clip(np.round(ood_scores), -2, 3)
    return id_scores, ood_scores


CASES = [(seed, n_id, n_ood, ties) for seed, (n_id, n_ood) in enumerate([(300, 200), (50, 20), (1000, 37), (7, 400)])
         for ties in (False, True)]  # fmt: skip


def _brute_force_fpr_at_95(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Walk the thresholds on the OOD-ness ``-score`` from high to low, counting with integers.

    A sample is flagged OOD when ``-score >= t``. The first ``t`` with ``TP / N_ood >= 0.95`` (that is,
    ``20 TP >= 19 N_ood``) gives ``FP / N_id``.
    """
    for t in sorted(set((-id_scores).tolist()) | set((-ood_scores).tolist()), reverse=True):
        tp = int(np.sum(-ood_scores >= t))
        if 20 * tp >= 19 * len(ood_scores):
            return int(np.sum(-id_scores >= t)) / len(id_scores)
    raise AssertionError("unreachable: the lowest threshold flags every sample")


def _brute_force_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(an ID sample scores higher than an OOD sample), ties counting one half (Mann-Whitney)."""
    diff = id_scores[:, None] - ood_scores[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _brute_force_aupr(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Trapezoidal area under the PR curve built by hand: one point per distinct threshold (ties enter
    together), from the lowest threshold (recall 1) up, plus the end point (recall 0, precision 1)."""
    points = []
    for t in sorted(set(positive_scores.tolist()) | set(negative_scores.tolist())):
        tp = np.sum(positive_scores >= t)
        fp = np.sum(negative_scores >= t)
        if tp + fp > 0:
            points.append((tp / len(positive_scores), tp / (tp + fp)))
    points.append((0.0, 1.0))
    area = 0.0
    for (r0, p0), (r1, p1) in zip(points[:-1], points[1:]):
        area += (r0 - r1) * (p0 + p1) / 2.0
    return area


@pytest.mark.parametrize("seed,n_id,n_ood,ties", CASES)
def test_against_pytorch_ood(seed: int, n_id: int, n_ood: int, ties: bool) -> None:
    id_scores, ood_scores = _random_scores(seed, n_id, n_ood, ties)
    ours = compute_all(id_scores, ood_scores)
    # pytorch-ood: outlier scores (higher = OOD), OOD samples labelled < 0, ID samples >= 0
    outlier = torch.tensor(np.concatenate([-id_scores, -ood_scores]))
    labels = torch.cat([torch.zeros(n_id, dtype=torch.long), -torch.ones(n_ood, dtype=torch.long)])
    theirs = OODMetrics().update(outlier, labels).compute()
    assert ours["AUROC"] == pytest.approx(theirs["AUROC"], abs=1e-12)
    assert ours["AUPR_IN"] == pytest.approx(theirs["AUPR-IN"], abs=1e-12)
    assert ours["AUPR_OUT"] == pytest.approx(theirs["AUPR-OUT"], abs=1e-12)
    assert ours["FPR@95"] == pytest.approx(theirs["FPR95TPR"], abs=1e-12)


@pytest.mark.parametrize("seed,n_id,n_ood,ties", CASES)
def test_against_sklearn_and_brute_force(seed: int, n_id: int, n_ood: int, ties: bool) -> None:
    id_scores, ood_scores = _random_scores(seed, n_id, n_ood, ties)
    ours = compute_all(id_scores, ood_scores)
    is_ood = np.concatenate([np.zeros(n_id), np.ones(n_ood)])
    outlier = -np.concatenate([id_scores, ood_scores])
    assert ours["AUROC"] == pytest.approx(roc_auc_score(is_ood, outlier), abs=1e-12)
    assert ours["AUROC"] == pytest.approx(_brute_force_auroc(id_scores, ood_scores), abs=1e-12)
    assert ours["FPR@95"] == pytest.approx(_brute_force_fpr_at_95(id_scores, ood_scores), abs=1e-15)
    assert ours["AUPR_IN"] == pytest.approx(_brute_force_aupr(id_scores, ood_scores), abs=1e-12)
    assert ours["AUPR_OUT"] == pytest.approx(_brute_force_aupr(-ood_scores, -id_scores), abs=1e-12)


def test_tie_case_worked_by_hand() -> None:
    """OOD-ness = -score. 20 OOD: 18 at 0, 2 at -5. 20 ID: 10 at 0, 5 at -3, 5 at -10.

    Thresholds from the top: t=0 flags 18/20 OOD (90%) and 10 ID; t=-3 still 18 OOD, 15 ID; t=-5 flags
    all 20 OOD (100% >= 95%) and 15 ID, so FPR@95 = 15/20 = 0.75. The tie at 0 is never split.
    """
    ood = np.array([0.0] * 18 + [5.0] * 2)
    ids = np.array([0.0] * 10 + [3.0] * 5 + [10.0] * 5)
    assert fpr_at_recall(ids, ood) == pytest.approx(0.75)
    # AUROC by pairs (ID above OOD = 1, tie = 1/2): ID 0 ties the 18 OOD at 0 and loses to the 2 at 5;
    # ID 3 beats the 18 OOD at 0 and loses to the 2 at 5; ID 10 beats all 20
    pairs = 10 * 18 * 0.5 + 5 * 18 + 5 * 20
    assert auroc(ids, ood) == pytest.approx(pairs / 400)


def test_perfect_and_inverted_detectors() -> None:
    ids, ood = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    perfect = compute_all(ids, ood)
    assert perfect == pytest.approx({"FPR@95": 0.0, "AUROC": 1.0, "AUPR_IN": 1.0, "AUPR_OUT": 1.0}, abs=1e-12)
    inverted = compute_all(ood, ids)
    assert inverted["AUROC"] == 0.0
    assert inverted["FPR@95"] == 1.0
    assert inverted["AUPR_IN"] < 0.5 and inverted["AUPR_OUT"] < 0.5


def test_keys_types_and_single_metric_functions_agree() -> None:
    id_scores, ood_scores = _random_scores(11, 80, 60, ties=False)
    values = compute_all(torch.tensor(id_scores, dtype=torch.float32), torch.tensor(ood_scores, dtype=torch.float32))
    assert tuple(values) == METRIC_KEYS
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in values.values())
    assert values["AUROC"] == auroc(id_scores.astype(np.float32), ood_scores.astype(np.float32))
    assert values["FPR@95"] == fpr_at_recall(id_scores.astype(np.float32), ood_scores.astype(np.float32))
    assert values["AUPR_IN"] == aupr_in(id_scores.astype(np.float32), ood_scores.astype(np.float32))
    assert values["AUPR_OUT"] == aupr_out(id_scores.astype(np.float32), ood_scores.astype(np.float32))


def test_fpr_at_other_recall_levels() -> None:
    id_scores, ood_scores = _random_scores(3, 200, 100, ties=True)
    assert fpr_at_recall(id_scores, ood_scores, recall=1.0) >= fpr_at_recall(id_scores, ood_scores, recall=0.5)
    with pytest.raises(ValueError, match="recall"):
        fpr_at_recall(id_scores, ood_scores, recall=0.0)


@pytest.mark.parametrize(
    "id_scores,ood_scores,message",
    [
        ([1.0, math.nan], [0.0], "id_scores contains 1 NaN/inf"),
        ([1.0], [0.0, math.inf], "ood_scores contains 1 NaN/inf"),
        ([], [0.0], "id_scores is empty"),
        ([[1.0, 2.0]], [0.0], "id_scores must be a 1-D"),
    ],
)
def test_bad_scores_raise(id_scores: list, ood_scores: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_all(id_scores, ood_scores)


def test_accuracy_ignores_ood_rows() -> None:
    labels = torch.tensor([0, 1, 2, -1, -1])
    predictions = torch.tensor([0, 1, 0, 3, 0])
    assert accuracy(predictions, labels) == pytest.approx(2 / 3)
    logits = torch.nn.functional.one_hot(predictions, 4).float()
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one ID sample"):
        accuracy(predictions, torch.full((5,), -1))
    with pytest.raises(ValueError, match="must both be"):
        accuracy(predictions[:3], labels)

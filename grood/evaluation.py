"""OpenOOD v1.5's evaluation protocol on cached network outputs.

For one ID benchmark, a method's scores on the ID test split and on every OOD test set give one row
per OOD set plus the unweighted ``nearood`` and ``farood`` means, as a pandas DataFrame with OpenOOD's
columns ``FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC`` (percent), exactly the layout of
``openood.evaluation_api.Evaluator.eval_ood``. ``ACC`` is the classifier's ID test accuracy (the same
in every row, as in OpenOOD).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import torch

from grood.metrics import compute_all

METRIC_COLUMNS = ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]


def metrics_table(
    id_scores: torch.Tensor | Mapping[str, torch.Tensor],
    ood_scores: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[str]],
    id_accuracy: float,
) -> pd.DataFrame:
    """OpenOOD's result table for one method.

    Args:
        id_scores: ``[N_id]`` scores on the ID test split, higher = more ID; or, where the detector differs
            per OOD set (GROOD's oracle prototypes, Table 1), OOD set name -> ``[N_id]`` scores.
        ood_scores: OOD set name -> ``[N_ood]`` scores.
        groups: ``{"near": [...], "far": [...]}`` OOD set names per group, in display order.
        id_accuracy: ID test accuracy as a fraction.
    Returns:
        DataFrame indexed by OOD set names then ``nearood``/``farood`` (means over the group's rows),
        columns :data:`METRIC_COLUMNS`, in percent.
    """
    rows: dict[str, dict[str, float]] = {}
    for group, names in groups.items():
        group_rows = []
        for name in names:
            if name not in ood_scores:
                raise KeyError(f"no scores for OOD set {name!r} of group {group!r}; have {sorted(ood_scores)}")
            id_for_name = id_scores[name] if isinstance(id_scores, Mapping) else id_scores
            values = compute_all(id_for_name, ood_scores[name])
            row = {column: 100.0 * values[column] for column in METRIC_COLUMNS[:-1]}
            row["ACC"] = 100.0 * id_accuracy
            rows[name] = row
            group_rows.append(row)
        if group_rows:
            rows[f"{group}ood"] = {
                column: sum(r[column] for r in group_rows) / len(group_rows) for column in METRIC_COLUMNS
            }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=METRIC_COLUMNS)
    table.index.name = "dataset"
    return table


def fsood_table(
    id_scores: torch.Tensor,
    csid_scores: Mapping[str, torch.Tensor],
    ood_scores: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[str]],
    fsood_accuracy: float,
    csid_accuracies: Mapping[str, float],
) -> pd.DataFrame:
    """OpenOOD v1.5's full-spectrum table (``Evaluator.eval_ood(fsood=True)``), with one row per csid set.

    As OpenOOD defines it, the covariate-shifted ID (csid) samples count as ID: every OOD row compares
    the ID test scores *and* every csid set's scores (concatenated, in csid order) with that OOD set's,
    and ``ACC`` is the classifier's accuracy over the ID test set and every csid set pooled (correct /
    total). Rows: OpenOOD's (each near set, ``nearood``, each far set, ``farood``), then ``csid:<name>``
    per csid set, whose ``ACC`` is the accuracy on that set alone (grood's addition; its other columns
    are empty: a csid set is not an OOD set).

    Args:
        id_scores: ``[N_id]`` scores on the ID test split, higher = more ID.
        csid_scores: csid set name -> ``[N_c]`` scores (the order of OpenOOD's ``DATA_INFO`` csid list).
        ood_scores, groups: as :func:`metrics_table`.
        fsood_accuracy: the pooled accuracy over ID test + every csid set, as a fraction.
        csid_accuracies: csid set name -> its accuracy, as a fraction.
    """
    if not csid_scores:
        raise ValueError("the full-spectrum table needs at least one csid set's scores")
    if set(csid_accuracies) != set(csid_scores):
        raise ValueError(f"csid accuracies for {sorted(csid_accuracies)} but scores for {sorted(csid_scores)}")
    combined = torch.cat([id_scores.reshape(-1), *(scores.reshape(-1) for scores in csid_scores.values())])
    table = metrics_table(combined, ood_scores, groups, fsood_accuracy)
    for name in csid_scores:
        table.loc[f"csid:{name}"] = [float("nan")] * (len(METRIC_COLUMNS) - 1) + [100.0 * csid_accuracies[name]]
    return table


def pooled_accuracy(predictions: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> float:
    """Accuracy over several sets pooled (correct / total, OpenOOD's ``eval_acc('csid')``), as a fraction.

    Args:
        predictions, labels: ``[N_i]`` class indices per set, in the same order.
    """
    correct = sum(int((p.reshape(-1) == y.reshape(-1)).sum()) for p, y in zip(predictions, labels, strict=True))
    total = sum(int(y.numel()) for y in labels)
    if total == 0:
        raise ValueError("pooled accuracy over no sample")
    return correct / total

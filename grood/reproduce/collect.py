"""Collecting run results: the run folders below an experiment as a long frame, the rows a spec row
selects, one value per (run, OOD group), and cells of mean / std over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from grood.reporting import collect_runs
from grood.reporting.runs import GROUP_ROWS
from grood.reporting.tables import STATS


def _collect(root: Path) -> pd.DataFrame | None:
    """:func:`collect_runs` below ``root``, or None when there is no run there."""
    if not root.is_dir():
        return None
    try:
        return collect_runs(root)
    except FileNotFoundError:
        return None


def _equal(cell: Any, wanted: Any) -> bool:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return wanted is None or wanted == ""
    try:
        return float(cell) == float(wanted)
    except (TypeError, ValueError):
        return str(cell) == str(wanted)


def select_rows(frame: pd.DataFrame, select: Mapping[str, Any], where: str) -> pd.DataFrame:
    """The rows of ``frame`` whose columns equal ``select``'s values (numbers compare as numbers).

    A column ``frame`` lacks matches nothing (e.g. ``params.k`` before any run set it)."""
    mask = pd.Series(True, index=frame.index)
    for column, wanted in select.items():
        if column not in frame.columns:
            return frame.iloc[0:0]
        mask &= frame[column].map(lambda cell, w=wanted: _equal(cell, w))
    return frame[mask]


def value_frame(long: pd.DataFrame, value: str) -> pd.DataFrame:
    """One row per (run, group) with ``group`` and ``value``: the ``nearood`` / ``farood`` rows of a metric,
    or, for ``seconds``, one row per run with the time of its method (``timings_s.method:<method>``)."""
    if value == "seconds":
        runs = long.drop_duplicates("run_dir").copy()
        runs["group"] = ""
        runs["seconds"] = [row.get(f"timings_s.method:{row['method']}", math.nan) for _, row in runs.iterrows()]
        return runs
    rows = long[long["dataset"].isin(list(GROUP_ROWS))].copy()
    rows["group"] = rows["dataset"].map(GROUP_ROWS)
    return rows


def _stats(values: pd.Series) -> dict[str, float]:
    values = values.dropna().astype(float)
    n = len(values)
    return {"mean": float(values.mean()) if n else math.nan,
            "std": float(values.std(ddof=0)) if n > 1 else math.nan, "n": float(n)}


def cells_over_seeds(frame: pd.DataFrame, keys: Sequence[str], value: str, where: str) -> pd.DataFrame:
    """``*keys, mean, std, n`` over seeds (population std, NaN for one seed); two runs for one cell and seed
    are an error naming their folders (filter first)."""
    keys = list(keys)
    clash = frame.duplicated([*keys, "seed"], keep=False)
    if clash.any():
        shown = frame.loc[clash, [*keys, "seed", "run_dir"]].head(10).to_string()
        raise ValueError(f"{where}: several runs for one cell and seed; make the row's select narrower or "
                         f"remove stale run folders:\n{shown}")
    records = []
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(keys, key)), **_stats(part[value])})
    return pd.DataFrame.from_records(records, columns=[*keys, *STATS])

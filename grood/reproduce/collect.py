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
    or, for ``seconds``, two rows per run (appendix A.4), told apart by ``group``:

    - ``cached``: the method's time on cached network outputs (``timings_s.method:<method>``: fit + scoring);
      NaN for a method that scores by running the network (ODIN);
    - ``network``: the time of its extra network passes: GROOD's OOD prototype (``timings_s.prototype:grood``:
      the mixup pass, or a cache read when the prototype was cached), ODIN's perturbed passes (its whole
      ``method:odin`` time); 0 for methods with none.
    """
    if value == "seconds":
        from grood.detectors.registry import DETECTORS

        runs = long.drop_duplicates("run_dir").copy()
        parts = []
        for group in SECONDS_GROUPS:
            part = runs.copy()
            part["group"] = group
            part["seconds"] = [_seconds(row, group, DETECTORS) for _, row in runs.iterrows()]
            parts.append(part)
        return pd.concat(parts, ignore_index=True)
    rows = long[long["dataset"].isin(list(GROUP_ROWS))].copy()
    rows["group"] = rows["dataset"].map(GROUP_ROWS)
    return rows


#: The two timing columns of appendix A.4 (see :func:`value_frame`).
SECONDS_GROUPS: tuple[str, ...] = ("cached", "network")


def _seconds(row: pd.Series, group: str, detectors: Mapping[str, Any]) -> float:
    method = row["method"]
    own = row.get(f"timings_s.method:{method}", math.nan)
    runs_network = method in detectors and getattr(detectors[method], "needs_network", False)
    if group == "cached":
        return math.nan if runs_network else own
    if runs_network:
        return own
    extra = row.get(f"timings_s.prototype:{method}", math.nan)
    return 0.0 if extra is None or (isinstance(extra, float) and math.isnan(extra)) else float(extra)


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

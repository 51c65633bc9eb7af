"""The paper's published numbers as data, and "paper vs ours" per cell.

``grood/reporting/paper_numbers/table<N>.csv`` (N = 1..7) and ``appendix_a4.csv`` (package data, read through
``importlib.resources``) hold every number of the paper's tables, typed in from its text (see the
``README.md`` there), in one tidy long format:

    table, benchmark, architecture, method, variant, prototype, paper_name, metric, group, mean, std, source_note

- ``method``: our registry name (lower case); ``paper_name``: the paper's spelling of the row.
  ``method`` is empty for the backbone's ID accuracy; ``sota`` is Table 1's "SOTA" column.
- ``variant`` (GROOD's Table 4 score variants) and ``prototype`` (the OOD-prototype strategy): empty for
  the baselines.
- ``metric``: ``AUROC``, ``ID_ACC``, ``NCP_ACC`` (percent) or ``seconds``; ``group``: ``near`` / ``far`` /
  empty for accuracies and timings.
- ``mean``: the reported value (a mean over seeds where the paper says so); ``std``: the reported spread,
  empty where none is printed. Table 5 reports only a spread: its numbers are in ``std`` (over the last 15
  training epochs), ``mean`` empty.

The same key columns describe our results (:func:`summarize_runs`), so :func:`paper_vs_ours` is one merge.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from grood.io import package_data_dir
from grood.reporting.runs import GROUP_ROWS

PAPER_DIR = package_data_dir("grood.reporting", "paper_numbers")
PAPER_COLUMNS = ["table", "benchmark", "architecture", "method", "variant", "prototype", "paper_name", "metric",
                 "group", "mean", "std", "source_note"]
#: The columns that identify one number (a table cell) on both sides of :func:`paper_vs_ours`.
KEY_COLUMNS = ["benchmark", "architecture", "method", "variant", "prototype", "metric", "group"]
PAPER_TABLES = ("1", "2", "3", "4", "5", "6", "7", "A4")
METRICS = ("AUROC", "ID_ACC", "NCP_ACC", "seconds")
GROUPS = ("near", "far", "")
#: Our detector registry names.
METHODS = ("openmax", "msp", "odin", "mds", "ebo", "react", "mls", "gradnorm", "gaia", "cider", "vim", "knn",
           "dice", "ash", "she", "gen", "fdbd", "nci", "grood")
#: The paper's spellings of method rows -> our registry names (the paper writes fDBD as "fbdb", ReAct as
#: "ReACT" in Table 3, and GROOD as "GROOM" in the appendix).
PAPER_METHOD_NAMES = {
    "OpenMax": "openmax", "MSP": "msp", "ODIN": "odin", "MDS": "mds", "EBO": "ebo", "ReAct": "react",
    "ReACT": "react", "MLS": "mls", "GradNorm": "gradnorm", "GAIA": "gaia", "CIDER": "cider", "VIM": "vim",
    "KNN": "knn", "DICE": "dice", "ASH": "ash", "SHE": "she", "GEN": "gen", "fbdb": "fdbd", "NCI": "nci",
    "GROOD(OURS)": "grood", "GROOD (OURS)": "grood", "GROOD": "grood", "GROOM (mean prototype)": "grood",
    "SOTA": "sota",
}


class PaperDataError(ValueError):
    """A paper CSV that breaks the format; the message names the file, line and column."""


def paper_table_path(table: int | str, paper_dir: str | os.PathLike | None = None) -> Path:
    """``<PAPER_DIR>/table<N>.csv`` (or ``appendix_a4.csv`` for ``"A4"``)."""
    name = str(table).upper()
    if name not in PAPER_TABLES:
        raise KeyError(f"no paper table {table!r}; the paper has tables {', '.join(PAPER_TABLES)}")
    directory = Path(paper_dir) if paper_dir is not None else PAPER_DIR
    return directory / ("appendix_a4.csv" if name == "A4" else f"table{name}.csv")


def load_paper_table(table: int | str, paper_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's numbers of one table (1..7, or ``"A4"``) in the tidy format of the module docstring.

    Text columns read as strings (empty = ``""``), ``mean`` / ``std`` as floats (empty = NaN). The file is
    checked: exact columns, the table number, known metrics / groups / methods, ``method`` consistent with
    ``paper_name``, a number in ``mean`` or ``std``, and no two rows for one key.
    """
    path = paper_table_path(table, paper_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the paper's numbers live in {PAPER_DIR}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != PAPER_COLUMNS:
        raise PaperDataError(f"{path}: line 1: columns {list(frame.columns)}; expected {PAPER_COLUMNS}")
    for column in ("mean", "std"):
        numbers = []
        for row, cell in enumerate(frame[column], start=2):
            try:
                numbers.append(float(cell) if cell.strip() else math.nan)
            except ValueError:
                raise PaperDataError(f"{path}: line {row}, column {column!r}: {cell!r} is not a number") from None
        frame[column] = numbers
    expected_table = str(table).upper()
    for row, record in enumerate(frame.to_dict("records"), start=2):
        where = f"{path}: line {row}"
        if record["table"].upper() != expected_table:
            raise PaperDataError(f"{where}, column 'table': {record['table']!r}, expected {expected_table!r}")
        if record["metric"] not in METRICS:
            raise PaperDataError(f"{where}, column 'metric': {record['metric']!r} not in {METRICS}")
        if record["group"] not in GROUPS:
            raise PaperDataError(f"{where}, column 'group': {record['group']!r} not in {GROUPS}")
        if record["method"] not in (*METHODS, "sota", ""):
            raise PaperDataError(f"{where}, column 'method': {record['method']!r} is not a registry name")
        mapped = PAPER_METHOD_NAMES.get(record["paper_name"])
        if mapped is not None and mapped != record["method"]:
            raise PaperDataError(f"{where}: paper_name {record['paper_name']!r} is method {mapped!r}, "
                                 f"the row says {record['method']!r}")
        if math.isnan(record["mean"]) and math.isnan(record["std"]):
            raise PaperDataError(f"{where}: neither 'mean' nor 'std' holds a number")
    clash = frame.duplicated(KEY_COLUMNS, keep=False)
    if clash.any():
        lines = [str(i + 2) for i in np.flatnonzero(clash.to_numpy())]
        raise PaperDataError(f"{path}: lines {', '.join(lines)} share the key {KEY_COLUMNS}")
    return frame


def load_paper_tables(paper_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every paper table, concatenated (``table`` tells them apart)."""
    return pd.concat([load_paper_table(t, paper_dir) for t in PAPER_TABLES], ignore_index=True)


def _normalised_keys(frame: pd.DataFrame, keys: Sequence[str], side: str) -> pd.DataFrame:
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise KeyError(f"paper_vs_ours: the {side} frame lacks key column(s) {missing}; have {list(frame.columns)}")
    frame = frame.copy()
    for key in keys:
        frame[key] = frame[key].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    clash = frame.duplicated(list(keys), keep=False)
    if clash.any():
        raise ValueError(f"paper_vs_ours: the {side} frame has several rows for one key {list(keys)}:\n"
                         f"{frame.loc[clash, list(keys)].to_string()}")
    return frame


def paper_vs_ours(ours: pd.DataFrame, paper: pd.DataFrame, value: str = "mean",
                  keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Ours next to the paper, one row per cell: ``*keys, paper_name, ours, paper, diff`` (diff = ours - paper).

    Args:
        ours: our numbers with the key columns and ``value`` (e.g. :func:`summarize_runs` output).
        paper: :func:`load_paper_table` output (or any frame with the keys and ``value``).
        value: the column compared (``"std"`` for Table 5).
        keys: default :data:`KEY_COLUMNS`, minus those neither frame has (e.g. ``table``).
    Every cell of either side appears: a cell on one side only has NaN on the other (and in ``diff``).
    Missing key values compare as ``""``. Rows: the paper's order, then ours-only cells in our order.
    Raises ValueError where one side has two rows for one key.
    """
    if keys is None:
        keys = [k for k in KEY_COLUMNS if k in ours.columns or k in paper.columns]
    keys = list(keys)
    for frame, side in ((ours, "ours"), (paper, "paper")):
        if value not in frame.columns:
            raise KeyError(f"paper_vs_ours: the {side} frame has no {value!r} column; have {list(frame.columns)}")
    ours_n = _normalised_keys(ours, keys, "ours")
    paper_n = _normalised_keys(paper, keys, "paper")
    if "paper_name" not in paper_n.columns:
        paper_n["paper_name"] = ""
    left = paper_n[keys + ["paper_name", value]].rename(columns={value: "paper"})
    right = ours_n[keys + [value]].rename(columns={value: "ours"})
    left["_paper_order"] = np.arange(len(left))
    right["_ours_order"] = np.arange(len(right))
    merged = left.merge(right, on=keys, how="outer", sort=False)
    merged = merged.sort_values(["_paper_order", "_ours_order"], na_position="last", kind="stable")
    merged["paper_name"] = merged["paper_name"].fillna("")
    merged["ours"] = merged["ours"].astype(float)
    merged["paper"] = merged["paper"].astype(float)
    merged["diff"] = merged["ours"] - merged["paper"]
    return merged[keys + ["paper_name", "ours", "paper", "diff"]].reset_index(drop=True)


def summarize_runs(long_df: pd.DataFrame, metrics: Sequence[str] = ("AUROC",), ddof: int = 0,
                   accuracies: bool = True) -> pd.DataFrame:
    """Our runs in the paper's layout: ``*KEY_COLUMNS, mean, std, n`` over seeds.

    - one row per (benchmark, architecture, method, variant, prototype) x metric x group from the
      ``nearood`` / ``farood`` rows of :func:`collect_runs` output;
    - with ``accuracies``: ``ID_ACC`` per (benchmark, architecture) from ``id_accuracy`` (method empty), and
      ``NCP_ACC`` from GROOD runs' ``ncp_accuracy`` (method ``grood``, variant / prototype empty), one value
      per checkpoint.
    ``std``: population std over seeds (OpenOOD's), NaN for a single seed.
    Raises ValueError where one cell has two runs for one seed (filter by experiment first), or where runs of
    one checkpoint disagree on an accuracy by more than 0.01 points.
    """
    setting = ["benchmark", "architecture", "method", "variant", "prototype"]
    rows = long_df[long_df["dataset"].isin(list(GROUP_ROWS))].copy()
    rows["group"] = rows["dataset"].map(GROUP_ROWS)
    parts = []
    for metric in metrics:
        parts.append(_over_seeds(rows.assign(metric=metric), [*setting, "metric", "group"], metric, ddof))
    if accuracies:
        runs = long_df.drop_duplicates(["run_dir"]) if "run_dir" in long_df else long_df
        id_acc = _per_checkpoint(runs, "id_accuracy")
        if len(id_acc):
            id_acc = id_acc.assign(method="", variant="", prototype="", metric="ID_ACC", group="")
            parts.append(_over_seeds(id_acc, KEY_COLUMNS, "id_accuracy", ddof))
        ncp = _per_checkpoint(runs[runs["method"] == "grood"], "ncp_accuracy")
        if len(ncp):
            ncp = ncp.assign(method="grood", variant="", prototype="", metric="NCP_ACC", group="")
            parts.append(_over_seeds(ncp, KEY_COLUMNS, "ncp_accuracy", ddof))
    summary = pd.concat(parts, ignore_index=True)
    return summary[KEY_COLUMNS + ["mean", "std", "n"]]


def _per_checkpoint(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """One ``column`` value per (benchmark, architecture, seed, checkpoint); error where runs disagree."""
    keys = ["benchmark", "architecture", "seed", "checkpoint"]
    valid = runs.dropna(subset=[column])
    spread = valid.groupby(keys, sort=False)[column].agg(["min", "max"])
    bad = spread[(spread["max"] - spread["min"]) > 0.01]
    if len(bad):
        raise ValueError(f"summarize_runs: runs of one checkpoint report different {column}:\n{bad.to_string()}")
    return valid.groupby(keys, sort=False, as_index=False)[column].first()


def _over_seeds(frame: pd.DataFrame, keys: list[str], value: str, ddof: int) -> pd.DataFrame:
    if "seed" in frame.columns:
        clash = frame.duplicated([*keys, "seed"], keep=False)
        if clash.any():
            raise ValueError(f"summarize_runs: several runs for one cell and seed (filter by experiment or "
                             f"extra.* first):\n{frame.loc[clash, [*keys, 'seed']].head(10).to_string()}")
    grouped = frame.groupby(keys, sort=False, dropna=False)[value]
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=ddof), "n": grouped.count()})
    stats.loc[stats["n"] <= 1, "std"] = math.nan
    return stats.reset_index()


def sota_rows(summary: pd.DataFrame, exclude: Sequence[str] = ("grood",), metric: str = "AUROC") -> pd.DataFrame:
    """Table 1's "SOTA" column from a summary: per (benchmark, architecture, group) the best ``mean`` among
    the methods not in ``exclude``; ``method = "sota"``, and ``source`` names the method that holds it."""
    rows = summary[(summary["metric"] == metric) & ~summary["method"].isin(list(exclude))]
    rows = rows[rows["method"] != ""]
    best = rows.loc[rows.groupby(["benchmark", "architecture", "group"], sort=False)["mean"].idxmax()].copy()
    best["source"] = best["method"]
    best["method"], best["variant"], best["prototype"] = "sota", "", ""
    return best.reset_index(drop=True)


def paper_rows(paper: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The paper's rows of ``methods`` in the summary layout (``n`` NaN), to show quoted numbers (e.g. CIDER,
    GAIA) next to ours: concatenate with :func:`summarize_runs` output, then :func:`widen`."""
    rows = paper[paper["method"].isin(list(methods))].copy()
    rows["n"] = math.nan
    return rows[KEY_COLUMNS + ["mean", "std", "n"]].reset_index(drop=True)

"""Tables: mean and std over seeds, ``91.16 ± 0.12`` cells, booktabs LaTeX with the best value in bold.

The table object every function here passes around ("wide table") is a DataFrame whose index holds the
row labels (named levels, e.g. ``method``) and whose columns are a MultiIndex: the column keys (e.g.
``benchmark``, ``group``) and a last level ``stat`` with ``mean``, ``std`` and ``n`` (number of values
behind the mean). :func:`aggregate` builds one from :func:`grood.reporting.collect_runs` output,
:func:`widen` from any long frame with ``mean`` / ``std`` / ``n``; :func:`to_latex_table` and
:func:`write_table` render it.

Spread: ``std`` is the population standard deviation over seeds (``ddof=0``, as OpenOOD's
``scripts/eval_ood.py`` computes it), NaN where there is a single value, so a single-seed cell shows
only its mean.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from grood.io import atomic_write

STAT_LEVEL = "stat"
STATS = ("mean", "std", "n")
#: Which way is better for each metric name a table column may carry.
DIRECTIONS = {
    "FPR@95": "min",
    "AUROC": "max",
    "AUPR_IN": "max",
    "AUPR_OUT": "max",
    "ACC": "max",
    "ID_ACC": "max",
    "NCP_ACC": "max",
    "AUROC_std": "min",
    "seconds": "min",
}
#: Display names for benchmarks, groups, architectures and methods (anything else is shown as is).
DISPLAY_NAMES = {
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet200": "ImageNet-200", "imagenet": "ImageNet-1K",
    "near": "Near-OOD", "far": "Far-OOD", "nearood": "Near-OOD", "farood": "Far-OOD",
    "resnet18_32x32": "ResNet-18", "resnet18_224x224": "ResNet-18", "resnet50": "ResNet-50",
    "vit_b_16": "ViT-B-16", "swin_t": "Swin-T",
    "openmax": "OpenMax", "msp": "MSP", "odin": "ODIN", "mds": "MDS", "ebo": "EBO", "react": "ReAct",
    "mls": "MLS", "gradnorm": "GradNorm", "gaia": "GAIA", "cider": "CIDER", "vim": "VIM", "knn": "KNN",
    "dice": "DICE", "ash": "ASH", "she": "SHE", "gen": "GEN", "fdbd": "fDBD", "nci": "NCI", "grood": "GROOD",
    "sota": "SOTA", "ID_ACC": "ID Acc. (%)", "NCP_ACC": "NCP Acc. (%)", "method": "Method",
    "AUROC": "AUROC (%)", "FPR@95": "FPR@95 (%)", "AUROC_std": "Std of AUROC", "seconds": "Seconds",
}
QUOTED_NOTE = "Quoted from the paper; not run here."


def _as_list(names: str | Sequence[str] | None) -> list[str]:
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: missing column(s) {missing}; have {list(frame.columns)}")


def aggregate(
    long_df: pd.DataFrame,
    index: str | Sequence[str],
    columns: str | Sequence[str] | None = None,
    value: str = "AUROC",
    ddof: int = 0,
) -> pd.DataFrame:
    """Mean and std of ``value`` over seeds, as a wide table (see the module docstring).

    Args:
        long_df: one row per (run, dataset), e.g. :func:`collect_runs` output filtered to what the table shows
            (e.g. ``dataset in {"nearood", "farood"}``, one experiment).
        index: column(s) naming the table rows (e.g. ``"method"``).
        columns: column(s) naming the table columns (e.g. ``["benchmark", "group"]``); None = one column
            named after ``value``.
        value: the numeric column to summarise.
        ddof: 0 = population std (OpenOOD); 1 = sample std.
    Returns:
        Wide table; rows and columns in order of first appearance. ``n`` counts the non-NaN values.
    Raises:
        ValueError: two rows share (index, columns, seed): the frame mixes runs the table cannot tell apart
            (filter it, e.g. by experiment, first). Nothing is averaged across them silently.
    """
    index, column_keys = _as_list(index), _as_list(columns)
    _require_columns(long_df, [*index, *column_keys, value], "aggregate")
    keys = [*index, *column_keys]
    if "seed" in long_df.columns:
        clash = long_df.duplicated([*keys, "seed"], keep=False)
        if clash.any():
            shown = long_df.loc[clash, [*keys, "seed"] + (["run_dir"] if "run_dir" in long_df else [])]
            raise ValueError(
                f"aggregate: {int(clash.sum())} rows share {keys + ['seed']}; filter the frame so each cell has "
                f"one value per seed (e.g. by experiment or extra.*):\n{shown.head(10).to_string()}"
            )
    grouped = long_df.groupby(keys, sort=False, dropna=False)[value]
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=ddof), "n": grouped.count()})
    stats.loc[stats["n"] <= 1, "std"] = math.nan
    stats = stats.reset_index()
    if not column_keys:
        stats["value"] = value
        column_keys = ["value"]
    return widen(stats, index=index, columns=column_keys)


def widen(summary: pd.DataFrame, index: str | Sequence[str], columns: str | Sequence[str]) -> pd.DataFrame:
    """A long frame with ``mean`` (and optionally ``std``, ``n``) -> wide table (see the module docstring).

    Rows and columns keep their order of first appearance. Raises ValueError where two rows fall into the
    same cell (nothing is dropped or averaged silently).
    """
    index, columns = _as_list(index), _as_list(columns)
    if not columns:
        raise ValueError("widen: name at least one column key")
    _require_columns(summary, [*index, *columns, "mean"], "widen")
    frame = summary.copy()
    for stat in ("std", "n"):
        if stat not in frame.columns:
            frame[stat] = math.nan
    clash = frame.duplicated([*index, *columns], keep=False)
    if clash.any():
        raise ValueError(f"widen: several rows for the same cell {index + columns}:\n"
                         f"{frame.loc[clash, [*index, *columns, 'mean']].to_string()}")
    row_keys = list(dict.fromkeys(map(tuple, frame[index].itertuples(index=False, name=None))))
    col_keys = list(dict.fromkeys(map(tuple, frame[columns].itertuples(index=False, name=None))))
    row_index = (pd.MultiIndex.from_tuples(row_keys, names=index) if len(index) > 1
                 else pd.Index([k[0] for k in row_keys], name=index[0]))
    col_index = pd.MultiIndex.from_tuples([(*k, s) for k in col_keys for s in STATS], names=[*columns, STAT_LEVEL])
    table = pd.DataFrame(math.nan, index=row_index, columns=col_index, dtype=float)
    for record in frame.to_dict("records"):
        row = tuple(record[c] for c in index) if len(index) > 1 else record[index[0]]
        key = tuple(record[c] for c in columns)
        for stat in STATS:
            table.loc[row, (*key, stat)] = float(record[stat])
    return table


def _column_keys(table: pd.DataFrame) -> list[tuple]:
    if not isinstance(table.columns, pd.MultiIndex) or table.columns.names[-1] != STAT_LEVEL:
        raise ValueError(f"expected a wide table with a last column level {STAT_LEVEL!r} (from aggregate/widen); "
                         f"got columns {list(table.columns)[:6]}")
    return list(dict.fromkeys(c[:-1] for c in table.columns))


def format_mean_std(mean: float, std: float | None = None, decimals: int = 2, pm: str = "±",
                    missing: str = "--") -> str:
    """``"91.16 ± 0.12"``; only ``"91.16"`` where std is None/NaN (one seed); ``missing`` where mean is NaN."""
    if mean is None or np.isnan(mean):
        return missing
    text = f"{mean:.{decimals}f}"
    if std is not None and not np.isnan(std):
        text += f" {pm} {std:.{decimals}f}"
    return text


def metric_direction(metric: str) -> str:
    """``"max"`` or ``"min"``: which way is better for ``metric`` (see :data:`DIRECTIONS`)."""
    if metric not in DIRECTIONS:
        raise KeyError(f"unknown metric {metric!r}: say whether higher or lower is better; known: {sorted(DIRECTIONS)}")
    return DIRECTIONS[metric]


def _direction_of(key: tuple, metric: str | Mapping[tuple, str] | None) -> str:
    if isinstance(metric, Mapping):
        return metric_direction(metric[key])
    if metric is not None:
        return metric_direction(metric)
    found = [part for part in key if part in DIRECTIONS]
    if len(found) != 1:
        raise KeyError(f"cannot tell the metric of column {key}; pass metric= (one of {sorted(DIRECTIONS)})")
    return DIRECTIONS[found[0]]


def best_mask(table: pd.DataFrame, metric: str | Mapping[tuple, str] | None = "AUROC", decimals: int = 2,
              rows: Sequence[Any] | None = None) -> pd.DataFrame:
    """True where a cell's mean is the best of its column, compared at the displayed precision.

    ``metric``: one metric name for every column, a mapping column key -> metric, or None to read the metric
    from each column key. Best = max or min per :data:`DIRECTIONS` (max for AUROC/AUPR/ACC, min for FPR@95);
    ties (equal after rounding to ``decimals``) are all best; NaN is never best. ``rows``: the rows that
    compete (default all); the others are False.
    Returns a boolean DataFrame indexed like ``table`` with one column per column key.
    """
    keys = _column_keys(table)
    competing = table.index if rows is None else pd.Index(rows)
    mask = pd.DataFrame(False, index=table.index, columns=pd.MultiIndex.from_tuples(keys) if len(keys[0]) > 1
                        else pd.Index([k[0] for k in keys]))
    for key in keys:
        means = table.loc[competing, (*key, "mean")].astype(float).round(decimals)
        if means.isna().all():
            continue
        target = means.max() if _direction_of(key, metric) == "max" else means.min()
        winners = means.index[means == target]
        column = key if len(key) > 1 else key[0]
        mask.loc[winners, column] = True
    return mask


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters in a label (``fdbd_v2 & co`` -> ``fdbd\\_v2 \\& co``)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def _label(value: Any, names: Mapping[Any, str] | None) -> str:
    if names is not None and value in names:
        return latex_escape(names[value])
    if value in DISPLAY_NAMES:
        return latex_escape(DISPLAY_NAMES[value])
    return latex_escape(value)


def _cell(mean: float, std: float, decimals: int, bold: bool) -> str:
    text = format_mean_std(mean, std, decimals, pm=r"$\pm$")
    return rf"\textbf{{{text}}}" if bold and text != "--" else text


def _header_lines(keys: list[tuple], index_names: list[str], column_names: Mapping[Any, str] | None,
                  row_names: Mapping[Any, str] | None) -> list[str]:
    lead = len(index_names)
    depth = len(keys[0])
    lines = []
    for level in range(depth):
        cells = [""] * lead
        if level == depth - 1:
            cells = [_label(name, row_names) for name in index_names]
        rules = []
        position = 0
        while position < len(keys):
            prefix = keys[position][: level + 1]
            span = 1
            while position + span < len(keys) and keys[position + span][: level + 1] == prefix:
                span += 1
            name = _label(prefix[-1], column_names)
            if level < depth - 1:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{name}}}")
                start = lead + position + 1
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            else:
                cells.extend([name] * span)
            position += span
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    return lines


def _row_cells(table: pd.DataFrame, row: Any, keys: list[tuple], decimals: int, bold_row: Mapping[tuple, bool],
               merge: bool) -> list[str]:
    cells: list[str] = []
    position = 0
    while position < len(keys):
        key = keys[position]
        mean, std = table.loc[row, (*key, "mean")], table.loc[row, (*key, "std")]
        span = 1
        if merge:  # merge equal neighbours sharing all but the last key level (e.g. one ID accuracy per benchmark)
            while (position + span < len(keys) and keys[position + span][:-1] == key[:-1]
                   and _same(table.loc[row, (*keys[position + span], "mean")], mean)
                   and _same(table.loc[row, (*keys[position + span], "std")], std)):
                span += 1
        text = _cell(mean, std, decimals, bold_row.get(key, False))
        cells.append(text if span == 1 else rf"\multicolumn{{{span}}}{{c}}{{{text}}}")
        position += span
    return cells


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _row_label_cells(row: Any, nlevels: int, row_names: Mapping[Any, str] | None, dagger: bool) -> list[str]:
    parts = list(row) if nlevels > 1 else [row]
    cells = [_label(part, row_names) for part in parts]
    if dagger:
        cells[0] += r"$^\dagger$"
    return cells


def _is_quoted(row: Any, quoted: set) -> bool:
    if row in quoted:
        return True
    return isinstance(row, tuple) and row[0] in quoted


def to_latex_table(
    table: pd.DataFrame,
    metric: str | Mapping[tuple, str] | None = "AUROC",
    decimals: int = 2,
    quoted_rows: Sequence[Any] = (),
    quoted_note: str = QUOTED_NOTE,
    rank_quoted: bool = True,
    pre_rows: pd.DataFrame | None = None,
    caption: str | None = None,
    label: str | None = None,
    row_names: Mapping[Any, str] | None = None,
    column_names: Mapping[Any, str] | None = None,
    environment: str | None = "table",
) -> str:
    """Booktabs LaTeX for a wide table: ``mean $\\pm$ std`` cells, the best of each column in bold.

    Args:
        table: wide table (:func:`aggregate` / :func:`widen`).
        metric: decides best = max or min per column (see :func:`best_mask`).
        decimals: digits shown; ties are judged on the shown values.
        quoted_rows: row labels (or first index level values) of numbers quoted from the paper rather than
            run here (e.g. ``["cider", "gaia"]``): marked with a dagger and explained by ``quoted_note`` in a
            line below the table.
        rank_quoted: whether quoted rows compete for bold.
        pre_rows: optional wide table with the same column keys shown above the method rows (e.g. ID and
            NCP accuracy in Table 2); never bold; equal neighbouring cells under one key merge into one.
        caption, label: for the ``table`` environment.
        row_names, column_names: display names overriding :data:`DISPLAY_NAMES`; every label is escaped.
        environment: ``"table"`` (or ``"table*"``) wraps the tabular in a float; None gives the tabular only.
    """
    keys = _column_keys(table)
    if not table.index.is_unique:
        raise ValueError(f"to_latex_table: repeated row labels {list(table.index[table.index.duplicated()])}")
    index_names = [name if name is not None else "" for name in table.index.names]
    quoted = set(quoted_rows)
    present_quoted = [row for row in table.index if _is_quoted(row, quoted)]
    competing = [row for row in table.index if rank_quoted or not _is_quoted(row, quoted)]
    mask = best_mask(table, metric, decimals, rows=competing)
    lines = []
    if environment:
        lines += [rf"\begin{{{environment}}}[t]", r"\centering"]
        if caption:
            lines.append(rf"\caption{{{latex_escape(caption)}}}")
        if label:
            lines.append(rf"\label{{{label}}}")
    ncols = len(index_names) + len(keys)
    lines.append(rf"\begin{{tabular}}{{{'l' * len(index_names)}{'c' * len(keys)}}}")
    lines.append(r"\toprule")
    lines += _header_lines(keys, index_names, column_names, row_names)
    lines.append(r"\midrule")
    if pre_rows is not None and len(pre_rows):
        if _column_keys(pre_rows) != keys:
            raise ValueError(f"pre_rows has column keys {_column_keys(pre_rows)}, the table has {keys}")
        for row in pre_rows.index:
            cells = _row_label_cells(row, pre_rows.index.nlevels, row_names, False)
            cells += _row_cells(pre_rows, row, keys, decimals, {}, merge=True)
            lines.append(" & ".join(cells) + r" \\")
        lines.append(r"\midrule")
    for row in table.index:
        bold_row = {key: bool(mask.loc[row, key if len(key) > 1 else key[0]]) for key in keys}
        cells = _row_label_cells(row, table.index.nlevels, row_names, _is_quoted(row, quoted))
        cells += _row_cells(table, row, keys, decimals, bold_row, merge=False)
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    if present_quoted:
        lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\footnotesize $^\dagger$ {latex_escape(quoted_note)}}} \\")
    lines.append(r"\end{tabular}")
    if environment:
        lines.append(rf"\end{{{environment}}}")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out_dir: str | os.PathLike, name: str, **latex_kwargs: Any) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` (the wide table, numbers) and ``<name>.tex`` (:func:`to_latex_table`).

    Both writes are atomic. ``latex_kwargs`` go to :func:`to_latex_table`. Read the CSV back with
    :func:`read_table_csv`. Returns the two paths.
    """
    out_dir = Path(out_dir)
    _column_keys(table)
    if any(name is None for name in table.index.names):
        raise ValueError("write_table: name every index level (table.index.names) so the CSV reads back")
    tex = to_latex_table(table, **latex_kwargs)
    csv_path, tex_path = out_dir / f"{name}.csv", out_dir / f"{name}.tex"
    with atomic_write(csv_path) as handle:
        table.to_csv(handle)
    with atomic_write(tex_path) as handle:
        handle.write(tex)
    return csv_path, tex_path


def read_table_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a :func:`write_table` CSV back into the wide table (empty row labels read as ``""``)."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header_rows = next((i + 1 for i, row in enumerate(rows) if row and row[0] == STAT_LEVEL), None)
    if header_rows is None or header_rows >= len(rows):
        raise ValueError(f"{path}: no '{STAT_LEVEL}' header row; not a table written by write_table")
    names_row = rows[header_rows]
    nlevels = next((i for i, cell in enumerate(names_row) if cell == ""), len(names_row))
    if nlevels == 0:
        raise ValueError(f"{path}: line {header_rows + 1}: expected the index names")
    table = pd.read_csv(path, header=list(range(header_rows)), index_col=list(range(nlevels)))
    if nlevels == 1:
        table.index = pd.Index(["" if pd.isna(v) else v for v in table.index], name=table.index.name)
    else:
        table.index = pd.MultiIndex.from_tuples(
            [tuple("" if pd.isna(v) else v for v in row) for row in table.index], names=table.index.names)
    return table.astype(float)


def std_over_last_epochs(
    long_df: pd.DataFrame,
    last_n: int = 15,
    value: str = "AUROC",
    epoch_column: str = "extra.epoch",
    by: Sequence[str] = ("benchmark", "architecture", "method", "variant", "prototype", "seed"),
    ddof: int = 0,
) -> pd.DataFrame:
    """Table 5: the std of ``value`` over the last ``last_n`` epochs, per ``by`` and group (near / far).

    Uses the ``nearood`` / ``farood`` rows of :func:`collect_runs` output with one run per checkpoint epoch
    (``extra.epoch``). Returns columns ``*by, group, std, mean, n_epochs, first_epoch, last_epoch``.
    Raises ValueError where a key has fewer than ``last_n`` epochs or two runs for one epoch.
    """
    by = list(by)
    _require_columns(long_df, [*by, "dataset", epoch_column, value], "std_over_last_epochs")
    rows = long_df[long_df["dataset"].isin(["nearood", "farood"])].copy()
    rows["group"] = rows["dataset"].map({"nearood": "near", "farood": "far"})
    if rows[epoch_column].isna().any():
        raise ValueError(f"std_over_last_epochs: {int(rows[epoch_column].isna().sum())} rows have no {epoch_column}")
    clash = rows.duplicated([*by, "group", epoch_column], keep=False)
    if clash.any():
        raise ValueError(f"std_over_last_epochs: several runs for one epoch:\n"
                         f"{rows.loc[clash, [*by, 'group', epoch_column]].to_string()}")
    records = []
    for key, part in rows.groupby([*by, "group"], sort=False, dropna=False):
        part = part.sort_values(epoch_column)
        if len(part) < last_n:
            raise ValueError(f"std_over_last_epochs: {dict(zip([*by, 'group'], key))} has {len(part)} epochs "
                             f"({part[epoch_column].tolist()}); need at least {last_n}")
        last = part.tail(last_n)
        values = last[value].to_numpy(dtype=float)
        records.append({**dict(zip([*by, "group"], key)), "std": float(np.std(values, ddof=ddof)),
                        "mean": float(np.mean(values)), "n_epochs": last_n,
                        "first_epoch": last[epoch_column].iloc[0], "last_epoch": last[epoch_column].iloc[-1]})
    return pd.DataFrame.from_records(records)


def table5(long_df: pd.DataFrame, last_n: int = 15, value: str = "AUROC") -> pd.DataFrame:
    """Table 5 as a wide table: rows ``method``, columns ``group`` x ``AUROC_std``; the cell is the std over the
    last ``last_n`` epochs (mean over seeds where several, with their spread). Render with
    ``to_latex_table(table, metric="AUROC_std")`` (lower = better)."""
    per_seed = std_over_last_epochs(long_df, last_n=last_n, value=value)
    per_seed["metric"] = f"{value}_std"
    return aggregate(per_seed, index="method", columns=["group", "metric"], value="std")


def inference_time_table(records: pd.DataFrame) -> pd.DataFrame:
    """Appendix A.4: seconds per (method, index), a column per benchmark when ``records`` has one.

    ``records``: columns ``method, index, seconds`` (and optionally ``benchmark``, ``seed``); repeated
    measurements give mean and std. Render with ``to_latex_table(table, metric="seconds")``.
    """
    _require_columns(records, ["method", "index", "seconds"], "inference_time_table")
    frame = records.copy()
    frame["metric"] = "seconds"
    columns = ["benchmark", "metric"] if "benchmark" in frame.columns else ["metric"]
    if "seed" not in frame.columns:  # repeated timings of one setting are repeats, not clashes
        frame["seed"] = frame.groupby(["method", "index", *columns], sort=False).cumcount()
    return aggregate(frame, index=["method", "index"], columns=columns, value="seconds")

"""The paper's tables (1-4, 6, 7, A.4): merged run results -> wide ``mean ± std`` table (CSV + LaTeX),
quoted paper rows, the SOTA row, accuracy pre rows and ``paper_vs_ours.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from grood.reporting import (
    load_paper_table,
    paper_vs_ours,
    sota_rows,
    summarize_runs,
    to_latex_table,
    widen,
)
from grood.reporting.tables import STATS, STAT_LEVEL
from grood.reproduce.collect import _collect, cells_over_seeds, select_rows, value_frame
from grood.reproduce.output import Built, _write_text, write_wide_csv, write_wide_csv_plain
from grood.reproduce.specs import PAPER_SELECT_KEYS, PreRowEntry, RowEntry, Spec, SpecError


def _column_order(keys: list[tuple], names: list[str], preferred: Mapping[str, Sequence[Any]]) -> list[tuple]:
    """``keys`` sorted level by level: ``preferred`` values first in their order, then the others in order of
    first appearance."""
    orders = []
    for level, name in enumerate(names):
        order = list(preferred.get(name, []))
        order += [v for v in dict.fromkeys(k[level] for k in keys) if v not in order]
        orders.append(order)
    return sorted(dict.fromkeys(keys), key=lambda key: tuple(o.index(v) for o, v in zip(orders, key)))


def assemble_wide(cells: pd.DataFrame, row_header: str, columns: list[str], rows: Sequence[str],
                  preferred: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Long cells (``row, *columns, mean, std, n``) -> wide table with rows in ``rows`` order (rows without a
    cell shown as ``--``) and columns ordered by ``preferred`` values."""
    frame = cells.rename(columns={"row": row_header})
    wide = widen(frame, index=row_header, columns=columns)
    keys = _column_order([c[:-1] for c in wide.columns], columns, preferred)
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples([(*k, s) for k in keys for s in STATS],
                                                          names=[*columns, STAT_LEVEL]))
    return wide.reindex(index=pd.Index(list(rows), name=row_header))


def _paper_select(row: RowEntry) -> dict:
    if row.paper is not None:
        return dict(row.paper)
    return {k: v for k, v in row.select.items() if k in PAPER_SELECT_KEYS}


def _to_ours(frame: pd.DataFrame, aliases: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """Paper column values -> ours (the inverse of ``paper_aliases``)."""
    frame = frame.copy()
    for column, mapping in aliases.items():
        inverse: dict[str, str] = {}
        for ours, paper in mapping.items():
            inverse.setdefault(paper, ours)
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v, m=inverse: m.get(v, v))
    return frame


def _to_paper(frame: pd.DataFrame, aliases: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    frame = frame.copy()
    for column, mapping in aliases.items():
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v, m=mapping: m.get(v, v))
    return frame


def paper_cells(spec: Spec, paper: pd.DataFrame, rows: Sequence[RowEntry | PreRowEntry]) -> pd.DataFrame:
    """The paper's numbers for ``rows``: ``row, <columns>, metric, mean, std`` (paper spellings)."""
    parts = []
    base = select_rows(paper, spec.paper_filter, str(spec.path)) if spec.paper_filter else paper
    for row in rows:
        if isinstance(row, PreRowEntry):
            part = base[base["metric"] == row.metric]
        elif row.paper == {}:  # `paper: {}`: no counterpart in the paper
            continue
        else:
            part = select_rows(base[base["metric"] == spec.value], _paper_select(row), str(spec.path))
            if spec.value != "seconds":
                part = part[part["group"].isin(spec.groups)]
            elif "group" in spec.columns:  # the paper's inference times: network passes excluded
                part = part.assign(group="cached")
        parts.append(part.assign(row=row.label))
    frame = pd.concat(parts, ignore_index=True) if parts else paper.iloc[0:0].assign(row="")
    keys = ["row", *[c for c in spec.columns if c in frame.columns], "metric"]
    return frame[[*keys, "paper_name", "mean", "std"]]


def _preferred(spec: Spec) -> dict[str, list]:
    return {"benchmark": list(dict.fromkeys(e.dataset for e in spec.benchmarks)),
            "architecture": list(dict.fromkeys(e.backbone for e in spec.benchmarks if e.backbone)),
            "group": list(spec.groups)}


def _finish_table(spec: Spec, out_dir: Path, built: Built, table: pd.DataFrame, ours: pd.DataFrame,
                  paper_rows_for: Sequence[RowEntry | PreRowEntry], pre_rows: pd.DataFrame | None = None,
                  quoted: Sequence[str] = (), metric: str | None = None, compare_value: str = "mean") -> Built:
    """Write ``<name>.csv``, ``<name>.tex`` and ``paper_vs_ours.csv``; fill ``built``."""
    metric = metric or spec.value
    decimals = int(spec.options.get("decimals", 2))
    tex = to_latex_table(table, metric=metric, decimals=decimals, quoted_rows=list(quoted), rank_quoted=False,
                         pre_rows=pre_rows, caption=spec.title + (" (smoke benchmark)" if spec.smoke else ""),
                         label=f"tab:{spec.name}{'_smoke' if spec.smoke else ''}")
    built.files.append(write_wide_csv(out_dir / f"{spec.name}.csv", table, pre_rows))
    built.files.append(_write_text(out_dir / f"{spec.name}.tex", tex))
    built.table, built.pre_rows, built.quoted = table, pre_rows, list(quoted)
    if spec.paper_table is not None:
        paper = load_paper_table(spec.paper_table)
        theirs = paper_cells(spec, paper, paper_rows_for)
        if "benchmark" in spec.columns:  # the benchmarks this target evaluates (in the paper's names)
            aliases = spec.paper_aliases.get("benchmark", {})
            theirs = theirs[theirs["benchmark"].isin([aliases.get(e.dataset, e.dataset) for e in spec.benchmarks])]
        keys = [k for k in ["row", *spec.columns, "metric"] if k in theirs.columns]
        ours = _to_paper(ours, spec.paper_aliases)
        if compare_value == "std":
            theirs = theirs.drop(columns=["mean"])
        else:
            theirs = theirs.drop(columns=["std"])
        comparison = paper_vs_ours(ours[[*keys, compare_value]], theirs, value=compare_value, keys=keys)
        built.comparison = comparison
        built.files.append(write_wide_csv_plain(out_dir / "paper_vs_ours.csv", comparison))
        both = comparison.dropna(subset=["ours", "paper"])
        built.lines.append(f"paper vs ours: {len(both)} cells on both sides, {int(comparison['paper'].isna().sum())} "
                           f"only ours, {int(comparison['ours'].isna().sum())} only in the paper"
                           + (f"; mean |diff| {both['diff'].abs().mean():.2f}" if len(both) else ""))
    return built


def build_table(spec: Spec, runs_root: Path, out_dir: Path) -> Built:
    """Tables 1-4, 6, 7 and A.4: one row per spec row, ``mean ± std`` over seeds per column key."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    cells, our_rows = [], []
    if long is None:
        built.lines.append(f"no run folders below {root}")
    else:
        built.lines.append(f"merged {long['run_dir'].nunique()} run folder(s) below {root}")
        values = value_frame(long, spec.value)
        values = values[values["group"].isin(spec.groups)]
        for row in spec.rows:
            if row.source != "ours":
                continue
            chosen = select_rows(values, row.select, str(spec.path))
            if not len(chosen):
                built.lines.append(f"row {row.label!r}: no runs match {row.select}")
                continue
            our_rows.append(row)
            cells.append(cells_over_seeds(chosen, spec.columns, spec.value, f"row {row.label!r}").assign(
                row=row.label))
    quoted = [row.label for row in spec.rows if row.source == "paper"]
    if quoted:
        paper = load_paper_table(spec.paper_table)
        theirs = _to_ours(paper_cells(spec, paper, [r for r in spec.rows if r.source == "paper"]), spec.paper_aliases)
        if "benchmark" in spec.columns:  # only the benchmarks this table shows
            theirs = theirs[theirs["benchmark"].isin([e.dataset for e in spec.benchmarks])]
        cells.append(theirs.assign(n=math.nan)[["row", *spec.columns, "mean", "std", "n"]])  # dagger rows
    for row in spec.rows:
        if row.source == "sota":
            sota = _sota_cells(spec, runs_root, built)
            if sota is not None:
                cells.append(sota.assign(row=row.label))
    if not cells or all(len(c) == 0 for c in cells):
        built.lines.append(f"no results for any row: table not written (run the jobs, or merge results "
                           f"into {root})")
        return built
    cells = pd.concat([c for c in cells if len(c)], ignore_index=True)
    table = assemble_wide(cells, spec.row_header, spec.columns, [r.label for r in spec.rows], _preferred(spec))
    pre = _pre_rows(spec, long, table) if spec.pre_rows and long is not None else None
    ours = cells[cells["row"].isin([r.label for r in spec.rows if r.source != "paper"])].assign(metric=spec.value)
    if pre is not None:
        ours = pd.concat([ours, _pre_row_cells(spec, long)], ignore_index=True)
    for row in spec.rows:
        if row.source == "ours" and row not in our_rows:
            built.lines.append(f"row {row.label!r} shows '--': nothing ran for it")
    return _finish_table(spec, out_dir, built, table, ours, [*spec.rows, *spec.pre_rows], pre, quoted)


def _sota_cells(spec: Spec, runs_root: Path, built: Built) -> pd.DataFrame | None:
    """Table 1's SOTA: per column the best baseline of the ``sota_from`` experiment's runs (Table 2's)."""
    source = spec.options.get("sota_from")
    if not source:
        raise SpecError(f"{spec.path}: a row with source: sota needs options.sota_from (an experiment name)")
    experiment = f"{source}_smoke" if spec.smoke else str(source)
    long = _collect(runs_root / experiment)
    if long is None:
        built.lines.append(f"SOTA: no runs below {runs_root / experiment}; run `grood reproduce {source}"
                           f"{' --smoke' if spec.smoke else ''}` first (the row shows '--')")
        return None
    summary = summarize_runs(long, metrics=(spec.value,), accuracies=False)
    best = sota_rows(summary, exclude=list(spec.options.get("sota_exclude") or []), metric=spec.value)
    best = best[best["group"].isin(spec.groups)]
    for record in best.to_dict("records"):
        built.lines.append(f"SOTA {record['benchmark']} {record['group']}: {record['source']} "
                           f"({record['mean']:.2f}, from {runs_root / experiment})")
    return best[[*spec.columns, "mean", "std", "n"]]


def _pre_row_cells(spec: Spec, long: pd.DataFrame) -> pd.DataFrame:
    """ID / NCP accuracy per (benchmark, architecture) over seeds: ``row, benchmark, architecture, metric, ...``."""
    summary = summarize_runs(long, metrics=(), accuracies=True) if len(long) else None
    parts = []
    for pre in spec.pre_rows:
        if summary is None:
            continue
        part = summary[summary["metric"] == pre.metric]
        parts.append(part.assign(row=pre.label))
    if not parts:
        return pd.DataFrame(columns=["row", "metric", *STATS])
    frame = pd.concat(parts, ignore_index=True)
    keys = [c for c in spec.columns if c != "group"]
    return frame[["row", *keys, "metric", *STATS]].assign(group="")


def _pre_rows(spec: Spec, long: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows in the table's column layout (one value repeated under each group)."""
    cells = _pre_row_cells(spec, long)
    keys = [c for c in spec.columns if c != "group"]
    if not len(cells):
        return table.iloc[0:0]
    expanded = []
    for group in spec.groups if "group" in spec.columns else [None]:
        part = cells.drop(columns=["metric", "group"])
        expanded.append(part.assign(group=group) if group is not None else part)
    frame = pd.concat(expanded, ignore_index=True)[["row", *keys, *(["group"] if "group" in spec.columns else []),
                                                    *STATS]]
    if not len(frame):
        return table.iloc[0:0]
    wide = widen(frame.rename(columns={"row": spec.row_header}), index=spec.row_header, columns=spec.columns)
    return wide.reindex(columns=table.columns, index=pd.Index([p.label for p in spec.pre_rows],
                                                              name=spec.row_header))

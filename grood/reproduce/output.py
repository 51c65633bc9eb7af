"""What a target writes: the :class:`Built` record the report reads, and the writers of its files
(text, wide CSV, plain CSV) and of the report's Markdown table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from grood.io import atomic_write
from grood.reporting import best_mask, format_mean_std
from grood.reporting.tables import DISPLAY_NAMES


@dataclass
class Built:
    """What a target wrote, and what the report says about it."""

    files: list[Path] = field(default_factory=list)
    table: pd.DataFrame | None = None
    pre_rows: pd.DataFrame | None = None
    quoted: list[str] = field(default_factory=list)
    comparison: pd.DataFrame | None = None
    lines: list[str] = field(default_factory=list)  # report lines (merged folders, SOTA sources, ...)
    problems: list[str] = field(default_factory=list)  # a table that could not be built, and why


def _write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as handle:
        handle.write(text)
    return path


def write_wide_csv(path: Path, table: pd.DataFrame, pre_rows: pd.DataFrame | None = None) -> Path:
    """The wide table as CSV (pre rows, e.g. accuracies, first), readable with ``read_table_csv``."""
    frame = table if pre_rows is None or not len(pre_rows) else pd.concat([pre_rows, table])
    with atomic_write(path) as handle:
        frame.to_csv(handle)
    return path


def _display(value: Any) -> str:
    return str(DISPLAY_NAMES.get(value, value))


def markdown_table(table: pd.DataFrame, metric: str, pre_rows: pd.DataFrame | None = None,
                   quoted: Sequence[str] = (), decimals: int = 2) -> str:
    """The wide table as Markdown (``mean ± std``, best per column in bold among non-quoted rows)."""
    keys = list(dict.fromkeys(c[:-1] for c in table.columns))
    header = [str(table.index.name or "")] + [" ".join(_display(v) for v in key) for key in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    competing = [r for r in table.index if r not in set(quoted)]
    mask = best_mask(table, metric, decimals, rows=competing) if competing else None
    for frame, bold in ((pre_rows, False), (table, True)):
        if frame is None:
            continue
        for row in frame.index:
            cells = [f"{row} †" if row in set(quoted) else str(row)]
            for key in keys:
                text = format_mean_std(frame.loc[row, (*key, "mean")], frame.loc[row, (*key, "std")], decimals)
                column = key if len(key) > 1 else key[0]
                if bold and mask is not None and bool(mask.loc[row, column]):
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    if quoted:
        lines.append("")
        lines.append("† quoted from the paper, not run here (not ranked for bold).")
    return "\n".join(lines) + "\n"


def write_wide_csv_plain(path: Path, frame: pd.DataFrame) -> Path:
    with atomic_write(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.4f")
    return path

"""Reporting: results folders -> tables (CSV + LaTeX) and figures (PNG + PDF), and the paper's numbers.

- :mod:`grood.reporting.runs`: :func:`collect_runs` reads every ``run.json`` + ``metrics.csv`` below a root.
- :mod:`grood.reporting.tables`: mean / std over seeds, ``mean ± std`` cells, booktabs LaTeX, Table 5, A.4.
- :mod:`grood.reporting.paper`: the paper's published numbers (``grood/reporting/paper_numbers/*.csv``) and paper vs ours.
- :mod:`grood.reporting.figures`: Figures 2-5.
"""

from grood.reporting.figures import (
    epoch_curves,
    figure_auroc_per_epoch,
    figure_auroc_vs_k,
    figure_score_densities,
    figure_tsne,
    save_figure,
)
from grood.reporting.paper import (
    KEY_COLUMNS,
    PaperDataError,
    load_paper_table,
    load_paper_tables,
    paper_rows,
    paper_vs_ours,
    sota_rows,
    summarize_runs,
)
from grood.reporting.runs import DuplicateRunError, RunFormatError, collect_runs
from grood.reporting.tables import (
    aggregate,
    best_mask,
    format_mean_std,
    inference_time_table,
    latex_escape,
    read_table_csv,
    std_over_last_epochs,
    table5,
    to_latex_table,
    widen,
    write_table,
)

__all__ = [
    "DuplicateRunError", "KEY_COLUMNS", "PaperDataError", "RunFormatError", "aggregate", "best_mask",
    "collect_runs", "epoch_curves", "figure_auroc_per_epoch", "figure_auroc_vs_k", "figure_score_densities",
    "figure_tsne", "format_mean_std", "inference_time_table", "latex_escape", "load_paper_table",
    "load_paper_tables", "paper_rows", "paper_vs_ours", "read_table_csv", "save_figure", "sota_rows",
    "std_over_last_epochs", "summarize_runs", "table5", "to_latex_table", "widen", "write_table",
]

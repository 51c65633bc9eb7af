"""The paper's tables and figures, one target each: spec -> evaluation jobs -> merged results -> files.

A target (``table1`` ... ``table7``, ``figure2`` ... ``figure5``, ``appendix_a4``) is described by a spec,
``grood/reproduce/targets/<target>.yaml`` (package data; format below), with a full and a smoke variant. :func:`reproduce_target`

1. expands the spec into :class:`Job` s: one evaluation (``grood.pipeline.run_evaluation``) per
   benchmark x seed (x checkpoint epoch) x run, each with its own results folder
   ``<runs_root>/<experiment>/<dataset[-backbone]>/<tag[-epochNNN]>/seed<N>`` (the layout a Hydra multirun
   of ``scripts/run.py`` writes with the ``hydra.sweep.*`` overrides of :func:`cluster_commands`);
2. runs the jobs whose results are not there yet (``force`` re-runs them), skipping, with a line in the
   report, those whose data or checkpoint is absent (``FileNotFoundError`` / ``DataLayoutError``);
3. merges every run below ``<runs_root>/<experiment>`` (:func:`grood.reporting.collect_runs`: local runs
   and cluster jobs alike) into the target's table (CSV + booktabs LaTeX, ``mean ± std`` over seeds, best
   per column in bold), ``paper_vs_ours.csv`` and ``report.md``, or into its figure (PNG + PDF).

This package knows nothing of Hydra: the caller passes ``compose(overrides) -> config dict`` (``scripts/
reproduce.py`` builds it with Hydra's compose API, so that every job runs in one process on one feature cache).

Spec format (every key is checked; an unknown key is an error naming the file and the key)::

    table: table4               # = the file name
    kind: table                 # table | epochs_std | tsne | epoch_curves | densities | auroc_vs_k
    title: ...                  # the LaTeX caption
    paper_table: 4              # grood/reporting/paper_numbers/table4.csv ("A4" for appendix_a4.csv); null = none
    experiment: table4          # run folders go below <runs_root>/table4 (smoke: table4_smoke)
    columns: [group]            # table column keys: any of benchmark, architecture, group
    groups: [near, far]         # which OOD groups, in this order
    value: AUROC                # AUROC | FPR@95 | AUPR_IN | AUPR_OUT (nearood/farood rows) | seconds
    row_header: Ablation        # the row labels' column name
    runs:                       # the evaluations, each run on every benchmark x seed of the variant
      - {tag: grood-uniform, overrides: [method=grood, prototype=uniform]}
    rows:                       # the table rows, in order
      - label: "(4) Uniform noise prototype"
        select: {method: grood, prototype: uniform}   # collect_runs columns (method, variant, prototype,
                                                      # architecture, params.k, extra.index, ...)
        paper: {method: grood, prototype: uniform}    # the paper CSV's row (default: select's paper keys;
                                                      # {}: none)
        source: ours            # ours | paper (quoted from the paper, marked with a dagger) | sota
    pre_rows: [{label: ID Acc. (%), metric: ID_ACC}]  # rows above the methods (Table 2)
    paper_filter: {benchmark: cifar10}                # restricts the paper CSV
    options: {...}              # per kind, see OPTIONS
    notes: [...]                # lines copied into the report
    full:  {benchmarks: [...], overrides: [...], run_overrides: {<tag>: [...]}, options: {...},
            paper_aliases: {...}, notes: [...]}
    smoke: {...}                # the same keys; the smoke benchmark

    benchmarks: [{dataset: cifar10, seeds: [0, 1, 2], backbone: vit_b_16,
                  checkpoint: "{checkpoint_root}/trained/x/s{seed}/best.ckpt",
                  epochs: {glob: "{checkpoint_root}/trained/x/s{seed}/epoch_*.ckpt", last: 15},
                  overrides: [...]}]

``paper_aliases`` maps our column values to the paper's for the comparison (e.g. ``{benchmark:
{cifar10_smoke: cifar10}}``: the smoke numbers next to the paper's, which they do not reproduce).
Placeholders in ``checkpoint`` / ``epochs.glob``: ``{checkpoint_root}``, ``{shared_dir}``, ``{seed}``,
``{dataset}``.
"""

from __future__ import annotations

from grood.reproduce.specs import (
    BENCHMARK_KEYS,
    COLUMN_KEYS,
    EPOCH_KEYS,
    GROUPS,
    KINDS,
    OPTIONS,
    PAPER_SELECT_KEYS,
    PRE_ROW_KEYS,
    ROW_KEYS,
    ROW_SOURCES,
    RUN_KEYS,
    SPEC_DIR,
    TOP_KEYS,
    VALUES,
    VARIANT_KEYS,
    BenchmarkEntry,
    PreRowEntry,
    RowEntry,
    RunEntry,
    Spec,
    SpecError,
    available_specs,
    expand_targets,
    load_spec,
)
from grood.reproduce.jobs import (
    Compose,
    Evaluate,
    Job,
    Outcome,
    cluster_commands,
    expand_jobs,
    expected_methods,
    find_epoch_checkpoints,
    job_complete,
    run_jobs,
)
from grood.reproduce.collect import (
    cells_over_seeds,
    select_rows,
    value_frame,
)
from grood.reproduce.output import (
    Built,
    markdown_table,
    write_wide_csv,
    write_wide_csv_plain,
)
from grood.reproduce.tables import (
    assemble_wide,
    build_table,
    paper_cells,
)
from grood.reproduce.figures import (
    build_auroc_vs_k,
    build_densities,
    build_epoch_curves,
    build_epochs_std,
    build_tsne,
    read_groups,
)
from grood.reproduce.report import (
    TargetResult,
    reproduce_target,
    write_report,
)

__all__ = [
    "SPEC_DIR",
    "GROUPS",
    "SpecError",
    "KINDS",
    "TOP_KEYS",
    "VARIANT_KEYS",
    "BENCHMARK_KEYS",
    "EPOCH_KEYS",
    "RUN_KEYS",
    "ROW_KEYS",
    "PRE_ROW_KEYS",
    "ROW_SOURCES",
    "COLUMN_KEYS",
    "VALUES",
    "OPTIONS",
    "PAPER_SELECT_KEYS",
    "BenchmarkEntry",
    "RunEntry",
    "RowEntry",
    "PreRowEntry",
    "Spec",
    "available_specs",
    "expand_targets",
    "load_spec",
    "Compose",
    "Evaluate",
    "Job",
    "Outcome",
    "find_epoch_checkpoints",
    "expand_jobs",
    "expected_methods",
    "job_complete",
    "run_jobs",
    "cluster_commands",
    "select_rows",
    "value_frame",
    "cells_over_seeds",
    "Built",
    "write_wide_csv",
    "write_wide_csv_plain",
    "markdown_table",
    "assemble_wide",
    "paper_cells",
    "build_table",
    "build_epochs_std",
    "build_tsne",
    "build_epoch_curves",
    "build_densities",
    "read_groups",
    "build_auroc_vs_k",
    "write_report",
    "TargetResult",
    "reproduce_target",
]

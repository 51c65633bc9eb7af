"""The paper's tables and figures, one target each: spec -> evaluation jobs -> merged results -> files.

A target (``table1`` ... ``table7``, ``figure2`` ... ``figure5``, ``appendix_a4``) is described by a spec,
``configs/reproduce/<target>.yaml`` (format below), with a full and a smoke variant. :func:`reproduce_target`

1. expands the spec into :class:`Job` s: one evaluation (``grood.pipeline.run_evaluation``) per
   benchmark x seed (x checkpoint epoch) x run, each with its own results folder
   ``<runs_root>/<experiment>/<dataset[-backbone]>/<tag[-epochNNN]>/seed<N>`` (the layout a Hydra multirun
   of ``scripts/run.py`` writes with the ``hydra.sweep.*`` overrides of :func:`cluster_commands`);
2. runs the jobs whose results are not there yet (``force`` re-runs them), skipping, with a line in the
   report, those whose data or checkpoint is absent (``FileNotFoundError`` / ``DataLayoutError``);
3. merges every run below ``<runs_root>/<experiment>`` (:func:`grood.reporting.collect_runs`: local runs
   and cluster jobs alike) into the target's table (CSV + booktabs LaTeX, ``mean ± std`` over seeds, best
   per column in bold), ``paper_vs_ours.csv`` and ``report.md``, or into its figure (PNG + PDF).

This module knows nothing of Hydra: the caller passes ``compose(overrides) -> config dict`` (``scripts/
reproduce.py`` builds it with Hydra's compose API, so that every job runs in one process on one feature cache).

Spec format (every key is checked; an unknown key is an error naming the file and the key)::

    table: table4               # = the file name
    kind: table                 # table | epochs_std | tsne | epoch_curves | densities | auroc_vs_k
    title: ...                  # the LaTeX caption
    paper_table: 4              # results/paper/table4.csv ("A4" for appendix_a4.csv); null = none
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

import glob
import json
import logging
import math
import re
import shlex
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
import yaml

from grood.io import atomic_write
from grood.provenance import git_commit
from grood.reporting import (
    best_mask,
    collect_runs,
    epoch_curves,
    figure_auroc_per_epoch,
    figure_auroc_vs_k,
    figure_score_densities,
    figure_tsne,
    format_mean_std,
    load_paper_table,
    paper_vs_ours,
    sota_rows,
    std_over_last_epochs,
    summarize_runs,
    to_latex_table,
    widen,
)
from grood.reporting.runs import GROUP_ROWS, METRIC_COLUMNS
from grood.reporting.tables import DISPLAY_NAMES, STATS, STAT_LEVEL, table5

log = logging.getLogger("grood.reproduce")

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO_ROOT / "configs" / "reproduce"
#: Target groups of the command line / Makefile. ``all`` runs Table 2 before Table 1 (whose SOTA column
#: comes from the Table 2 runs) and Table 5 before Figure 3 (drawn from its runs).
GROUPS = {
    "figures": ["figure2", "figure3", "figure4", "figure5", "appendix_a4"],
    "all": ["table2", "table1", "table3", "table4", "table5", "table6", "table7",
            "figure2", "figure3", "figure4", "figure5", "appendix_a4"],
}

Compose = Callable[[Sequence[str]], dict]
Evaluate = Callable[[Mapping[str, Any], Path], Any]


class SpecError(ValueError):
    """A reproduction spec that cannot work; the message names the file and the key at fault."""


class _Skipped(Exception):
    """A computed figure whose data root or checkpoint is absent."""

    def __init__(self, dataset: str, seed: int, message: str) -> None:
        super().__init__(message)
        self.dataset, self.seed, self.message = dataset, seed, message


# ============================================================================================ specs
KINDS = ("table", "epochs_std", "tsne", "epoch_curves", "densities", "auroc_vs_k")
TOP_KEYS = {"table", "kind", "title", "paper_table", "experiment", "columns", "groups", "value", "row_header",
            "runs", "rows", "pre_rows", "paper_filter", "options", "notes", "full", "smoke"}
VARIANT_KEYS = {"benchmarks", "overrides", "run_overrides", "options", "paper_aliases", "notes"}
BENCHMARK_KEYS = {"dataset", "seeds", "backbone", "checkpoint", "epochs", "overrides"}
EPOCH_KEYS = {"glob", "last"}
RUN_KEYS = {"tag", "overrides"}
ROW_KEYS = {"label", "select", "paper", "source"}
PRE_ROW_KEYS = {"label", "metric"}
ROW_SOURCES = ("ours", "paper", "sota")
COLUMN_KEYS = ("benchmark", "architecture", "group")
VALUES = (*METRIC_COLUMNS, "seconds")
#: The options each kind accepts, with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "table": {"sota_from": None, "sota_exclude": ["grood"], "decimals": 2},
    "epochs_std": {"last_epochs": 15, "figure": None, "decimals": 2},
    "tsne": {"subsample": 5000, "perplexity": 30.0, "max_iter": 1000, "class_names": None},
    "epoch_curves": {"source": "table5"},
    "densities": {"method": "grood"},
    "auroc_vs_k": {"method": "grood"},
}
#: The paper CSV columns a row's ``select`` shares with the paper (the default ``paper`` filter).
PAPER_SELECT_KEYS = ("method", "variant", "prototype", "architecture", "benchmark")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
_EPOCH = re.compile(r"epoch_(\d+)")


@dataclass(frozen=True)
class BenchmarkEntry:
    """One benchmark of a spec variant: its seeds (checkpoints) and how to find its checkpoint."""

    dataset: str
    seeds: tuple[int, ...] = (0,)
    backbone: str | None = None
    checkpoint: str | None = None  # pattern; None = the dataset config's own checkpoint
    epochs_glob: str | None = None
    epochs_last: int | None = None
    overrides: tuple[str, ...] = ()

    @property
    def segment(self) -> str:
        """The folder name of this benchmark's runs: ``<dataset>`` or ``<dataset>-<backbone>``."""
        return self.dataset if self.backbone is None else f"{self.dataset}-{self.backbone}"


@dataclass(frozen=True)
class RunEntry:
    tag: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class RowEntry:
    label: str
    select: dict
    paper: dict | None
    source: str = "ours"


@dataclass(frozen=True)
class PreRowEntry:
    label: str
    metric: str


@dataclass
class Spec:
    """A loaded, checked spec with the chosen variant (full or smoke) folded in."""

    name: str
    kind: str
    path: Path
    smoke: bool
    title: str
    paper_table: str | None
    experiment: str
    columns: list[str]
    groups: list[str]
    value: str
    row_header: str
    runs: list[RunEntry]
    rows: list[RowEntry]
    pre_rows: list[PreRowEntry]
    paper_filter: dict
    options: dict
    notes: list[str]
    benchmarks: list[BenchmarkEntry]
    overrides: list[str]
    paper_aliases: dict[str, dict[str, str]]

    @property
    def variant(self) -> str:
        return "smoke" if self.smoke else "full"


def available_specs(spec_dir: str | Path = SPEC_DIR) -> list[str]:
    """The target names that have a spec file in ``spec_dir``."""
    return sorted(path.stem for path in Path(spec_dir).glob("*.yaml"))


def expand_targets(names: Iterable[str], spec_dir: str | Path = SPEC_DIR) -> list[str]:
    """Target names with the groups (``figures``, ``all``) expanded, in order, without repeats."""
    out: list[str] = []
    for name in names:
        for target in GROUPS.get(name, [name]):
            if target not in out:
                out.append(target)
    known = available_specs(spec_dir)
    unknown = [t for t in out if t not in known]
    if unknown:
        raise SpecError(f"unknown table/figure {unknown[0]!r}: no {Path(spec_dir) / (unknown[0] + '.yaml')}; "
                        f"known: {', '.join(known + sorted(GROUPS))}")
    return out


def _fail(path: Path, where: str, message: str) -> SpecError:
    return SpecError(f"{path}: {where}: {message}")


def _check_keys(mapping: Any, allowed: set[str], path: Path, where: str, required: Iterable[str] = ()) -> dict:
    if not isinstance(mapping, Mapping):
        raise _fail(path, where, f"expected a mapping, got {type(mapping).__name__} {mapping!r}")
    unknown = sorted(set(map(str, mapping)) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    missing = [key for key in required if key not in mapping]
    if missing:
        raise _fail(path, where, f"missing key {missing[0]!r}")
    return dict(mapping)


def _str_list(value: Any, path: Path, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, f"expected a list of strings, got {value!r}")
    return list(value)


def _benchmark(raw: Any, path: Path, where: str) -> BenchmarkEntry:
    raw = _check_keys(raw, BENCHMARK_KEYS, path, where, required=["dataset"])
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise _fail(path, f"{where}.seeds", f"expected a non-empty list of integers, got {seeds!r}")
    epochs_glob = epochs_last = None
    if raw.get("epochs") is not None:
        epochs = _check_keys(raw["epochs"], EPOCH_KEYS, path, f"{where}.epochs", required=["glob", "last"])
        epochs_glob, epochs_last = str(epochs["glob"]), epochs["last"]
        if not isinstance(epochs_last, int) or epochs_last < 1:
            raise _fail(path, f"{where}.epochs.last", f"expected a positive integer, got {epochs_last!r}")
        if raw.get("checkpoint") is not None:
            raise _fail(path, where, "give either 'checkpoint' or 'epochs', not both")
    return BenchmarkEntry(
        dataset=str(raw["dataset"]), seeds=tuple(seeds),
        backbone=None if raw.get("backbone") is None else str(raw["backbone"]),
        checkpoint=None if raw.get("checkpoint") is None else str(raw["checkpoint"]),
        epochs_glob=epochs_glob, epochs_last=epochs_last,
        overrides=tuple(_str_list(raw.get("overrides"), path, f"{where}.overrides")),
    )


def load_spec(name: str, smoke: bool = False, spec_dir: str | Path = SPEC_DIR) -> Spec:
    """Read and check ``<spec_dir>/<name>.yaml`` and fold in its ``full`` or ``smoke`` variant.

    Raises:
        SpecError: unknown target (lists the known ones), unreadable YAML, or a bad key / value (names the
            file and the key).
    """
    path = Path(spec_dir) / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"unknown table/figure {name!r}: no spec {path}; known: "
                        f"{', '.join(available_specs(spec_dir) + sorted(GROUPS))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    raw = _check_keys(raw, TOP_KEYS, path, "top level", required=["table", "kind", "experiment", "full", "smoke"])
    if raw["table"] != name:
        raise _fail(path, "table", f"{raw['table']!r} must equal the file name {name!r}")
    kind = raw["kind"]
    if kind not in KINDS:
        raise _fail(path, "kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    variant_name = "smoke" if smoke else "full"
    variant = _check_keys(raw[variant_name], VARIANT_KEYS, path, variant_name)
    benchmarks_raw = variant.get("benchmarks") or []
    if not isinstance(benchmarks_raw, list):
        raise _fail(path, f"{variant_name}.benchmarks", f"expected a list, got {benchmarks_raw!r}")
    benchmarks = [_benchmark(b, path, f"{variant_name}.benchmarks[{i}]") for i, b in enumerate(benchmarks_raw)]

    columns = _str_list(raw.get("columns", ["benchmark", "group"]), path, "columns")
    for column in columns:
        if column not in COLUMN_KEYS:
            raise _fail(path, "columns", f"{column!r} is not one of {', '.join(COLUMN_KEYS)}")
    groups = _str_list(raw.get("groups", ["near", "far"]), path, "groups")
    for group in groups:
        if group not in ("near", "far"):
            raise _fail(path, "groups", f"{group!r} is not 'near' or 'far'")
    value = raw.get("value", "AUROC")
    if value not in VALUES:
        raise _fail(path, "value", f"{value!r} is not one of {', '.join(VALUES)}")
    if value == "seconds" and "group" in columns:
        raise _fail(path, "columns", "timings (value: seconds) have no OOD group; drop 'group'")

    runs = []
    for i, run in enumerate(raw.get("runs") or []):
        run = _check_keys(run, RUN_KEYS, path, f"runs[{i}]", required=["tag", "overrides"])
        if not _TAG.match(str(run["tag"])):
            raise _fail(path, f"runs[{i}].tag", f"{run['tag']!r}: use letters, digits, '_', '.', '-' only")
        runs.append(RunEntry(str(run["tag"]), tuple(_str_list(run["overrides"], path, f"runs[{i}].overrides"))))
    tags = [r.tag for r in runs]
    if len(set(tags)) != len(tags):
        raise _fail(path, "runs", f"repeated tag(s) {sorted({t for t in tags if tags.count(t) > 1})}")
    run_overrides = _check_keys(variant.get("run_overrides") or {}, set(tags), path, f"{variant_name}.run_overrides")
    runs = [RunEntry(r.tag, r.overrides + tuple(_str_list(run_overrides.get(r.tag), path,
                                                          f"{variant_name}.run_overrides.{r.tag}"))) for r in runs]

    rows = []
    for i, row in enumerate(raw.get("rows") or []):
        row = _check_keys(row, ROW_KEYS, path, f"rows[{i}]", required=["label"])
        source = row.get("source", "ours")
        if source not in ROW_SOURCES:
            raise _fail(path, f"rows[{i}].source", f"{source!r} is not one of {', '.join(ROW_SOURCES)}")
        for key in ("select", "paper"):
            if row.get(key) is not None and not isinstance(row[key], Mapping):
                raise _fail(path, f"rows[{i}].{key}", f"expected a mapping of column: value, got {row[key]!r}")
        if source != "sota" and not row.get("select"):
            raise _fail(path, f"rows[{i}]", "needs 'select' (the runs, or the paper's row, it shows)")
        rows.append(RowEntry(str(row["label"]), dict(row.get("select") or {}),
                             None if row.get("paper") is None else dict(row["paper"]), source))
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise _fail(path, "rows", f"repeated label(s) {sorted({l for l in labels if labels.count(l) > 1})}")
    pre_rows = [PreRowEntry(**_check_keys(r, PRE_ROW_KEYS, path, f"pre_rows[{i}]", required=["label", "metric"]))
                for i, r in enumerate(raw.get("pre_rows") or [])]
    for i, pre in enumerate(pre_rows):
        if pre.metric not in ("ID_ACC", "NCP_ACC"):
            raise _fail(path, f"pre_rows[{i}].metric", f"{pre.metric!r} is not ID_ACC or NCP_ACC")

    options = dict(OPTIONS[kind])
    for where, extra in (("options", raw.get("options")), (f"{variant_name}.options", variant.get("options"))):
        if extra is not None:
            options.update(_check_keys(extra, set(OPTIONS[kind]), path, where))
    aliases = _check_keys(variant.get("paper_aliases") or {}, set(COLUMN_KEYS), path, f"{variant_name}.paper_aliases")
    for column, mapping in aliases.items():
        if not isinstance(mapping, Mapping):
            raise _fail(path, f"{variant_name}.paper_aliases.{column}", f"expected ours: paper values, got {mapping!r}")
    paper_table = raw.get("paper_table")
    if kind == "table" and any(r.source == "paper" for r in rows) and paper_table is None:
        raise _fail(path, "paper_table", "rows with source: paper need the paper table they quote")
    if kind in ("table", "epochs_std") and not rows:
        raise _fail(path, "rows", "a table needs at least one row")
    if kind not in ("epoch_curves",) and not benchmarks:
        raise _fail(path, f"{variant_name}.benchmarks", "name at least one benchmark")
    return Spec(
        name=name, kind=kind, path=path, smoke=smoke, title=str(raw.get("title") or name),
        paper_table=None if paper_table is None else str(paper_table), experiment=str(raw["experiment"]) + (
            "_smoke" if smoke else ""),
        columns=columns, groups=groups, value=value, row_header=str(raw.get("row_header", "method")),
        runs=runs, rows=rows, pre_rows=pre_rows, paper_filter=dict(raw.get("paper_filter") or {}), options=options,
        notes=_str_list(raw.get("notes"), path, "notes") + _str_list(variant.get("notes"), path,
                                                                     f"{variant_name}.notes"),
        benchmarks=benchmarks, overrides=_str_list(variant.get("overrides"), path, f"{variant_name}.overrides"),
        paper_aliases={k: {str(a): str(b) for a, b in dict(v).items()} for k, v in aliases.items()},
    )


# ============================================================================================= jobs
@dataclass(frozen=True)
class Job:
    """One evaluation: ``run_evaluation(compose(overrides), <runs_root>/<experiment>/<relative_dir>)``."""

    experiment: str
    benchmark: BenchmarkEntry
    run: RunEntry
    seed: int
    overrides: tuple[str, ...]
    epoch: int | None = None

    @property
    def tag(self) -> str:
        return self.run.tag if self.epoch is None else f"{self.run.tag}-epoch{self.epoch:03d}"

    @property
    def relative_dir(self) -> str:
        return f"{self.benchmark.segment}/{self.tag}/seed{self.seed}"

    def directory(self, runs_root: str | Path) -> Path:
        return Path(runs_root) / self.experiment / self.relative_dir


@dataclass
class Outcome:
    """What happened to a job (or to a benchmark before any job existed): the report's raw material.

    status: ``ran``, ``existing`` (results were there), ``skipped`` (data / checkpoint absent), ``failed``,
    ``missing`` (``tables_only`` and no results), ``note`` (e.g. fewer epoch checkpoints than asked for).
    """

    name: str
    dataset: str
    seed: int | None
    status: str
    message: str = ""
    seconds: float | None = None


def _quote_value(value: str) -> str:
    """A Hydra override value; quoted where it holds characters other than ``[A-Za-z0-9_./-]`` and
    ``${...}`` interpolations (which Hydra resolves unquoted)."""
    if re.fullmatch(r"(?:[A-Za-z0-9_./-]|\$\{[A-Za-z0-9_.]+\})+", value):
        return value
    if "'" in value:
        raise SpecError(f"cannot pass {value!r} as a Hydra override value (it contains a single quote)")
    return f"'{value}'"


def _placeholders(pattern: str, paths: Mapping[str, Any], seed: int | str, dataset: str, where: str) -> str:
    try:
        return pattern.format(checkpoint_root=paths.get("checkpoint_root", "checkpoints"),
                              shared_dir=paths.get("shared_dir", "../shared"), seed=seed, dataset=dataset)
    except (KeyError, IndexError, ValueError) as error:
        raise SpecError(f"{where}: bad placeholder in {pattern!r} ({error}); valid: {{checkpoint_root}}, "
                        "{shared_dir}, {seed}, {dataset}") from None


def find_epoch_checkpoints(pattern: str, last: int) -> list[tuple[int, str]]:
    """``[(epoch, path)]`` of the files matching ``pattern`` whose name holds ``epoch_<N>``, the last ``last``."""
    found = []
    for path in glob.glob(pattern):
        match = _EPOCH.search(Path(path).name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)[-last:]


def expand_jobs(spec: Spec, paths: Mapping[str, Any],
                extra_overrides: Sequence[str] = ()) -> tuple[list[Job], list[Outcome]]:
    """The spec's jobs (benchmark x seed x [epoch] x run) and the benchmarks skipped before any job exists
    (no checkpoint matches an ``epochs.glob``, or fewer than ``epochs.last`` do: noted, not skipped)."""
    jobs: list[Job] = []
    notes: list[Outcome] = []
    for entry in spec.benchmarks:
        for seed in entry.seeds:
            base = [f"dataset={entry.dataset}"]
            if entry.backbone:
                base.append(f"backbone={entry.backbone}")
            base += [f"seed={seed}", f"experiment_name={spec.experiment}"]
            checkpoints: list[tuple[int | None, str | None]] = [(None, None)]
            if entry.checkpoint:  # {seed} -> Hydra's ${seed}: one command serves every seed
                checkpoints = [(None, _placeholders(entry.checkpoint, paths, "${seed}", entry.dataset,
                                                    f"{spec.path}: checkpoint"))]
            elif entry.epochs_glob:
                pattern = _placeholders(entry.epochs_glob, paths, seed, entry.dataset, f"{spec.path}: epochs.glob")
                found = find_epoch_checkpoints(pattern, entry.epochs_last or 1)
                if not found:
                    notes.append(Outcome(f"{entry.segment}/*/seed{seed}", entry.dataset, seed, "skipped",
                                         f"no checkpoint matches {pattern}; train them first "
                                         "(scripts/train.py) or point the spec's epochs.glob at them"))
                    continue
                if len(found) < (entry.epochs_last or 1):
                    notes.append(Outcome(f"{entry.segment}/*/seed{seed}", entry.dataset, seed, "note",
                                         f"only {len(found)} of the last {entry.epochs_last} epochs found "
                                         f"({pattern})"))
                checkpoints = [(epoch, path) for epoch, path in found]
            for epoch, checkpoint in checkpoints:
                tail = []
                if checkpoint is not None:
                    tail.append(f"dataset.checkpoint={_quote_value(checkpoint)}")
                if epoch is not None:
                    tail.append(f"++extra.epoch={epoch}")
                for run in spec.runs:
                    overrides = (*base, *tail, *spec.overrides, *entry.overrides, *run.overrides, *extra_overrides)
                    jobs.append(Job(spec.experiment, entry, run, seed, tuple(overrides), epoch))
    return jobs, notes


def expected_methods(config: Mapping[str, Any]) -> list[str]:
    """The method folders a composed config writes (one per method for ``method=all``)."""
    from grood.pipeline import method_list

    return [name for name, _ in method_list(config["method"])]


def job_complete(directory: Path, methods: Sequence[str]) -> bool:
    """Whether a job's results are all there: ``run.json`` + ``metrics.csv`` (per method for several)."""
    folders = [directory] if len(methods) == 1 else [directory / m for m in methods]
    return all((f / "run.json").is_file() and (f / "metrics.csv").is_file() for f in folders)


def run_jobs(jobs: Sequence[Job], compose: Compose, runs_root: str | Path, force: bool = False,
             tables_only: bool = False, evaluate: Evaluate | None = None) -> list[Outcome]:
    """Run every job whose results are missing (all with ``force``; none with ``tables_only``).

    Every job is composed first, so a bad override stops everything before any evaluation. A job whose
    data root or checkpoint is absent (``FileNotFoundError``, ``DataLayoutError``) is ``skipped``; any other
    error marks it ``failed`` (traceback in the message) and the next job runs.
    """
    if evaluate is None:
        from grood.pipeline import run_evaluation as evaluate
    composed = []
    for job in jobs:
        try:
            config = compose(list(job.overrides))
            methods = expected_methods(config)
        except Exception as error:  # Hydra's override / config errors, an unknown method: before any run
            raise SpecError(f"job {job.experiment}/{job.relative_dir}: cannot compose the config from "
                            f"{list(job.overrides)}: {error}") from error
        composed.append((config, methods))
    outcomes = []
    for number, (job, (config, methods)) in enumerate(zip(jobs, composed), start=1):
        directory = job.directory(runs_root)
        name = f"{job.experiment}/{job.relative_dir}"
        common = dict(name=name, dataset=job.benchmark.dataset, seed=job.seed)
        if not force and job_complete(directory, methods):
            outcomes.append(Outcome(**common, status="existing"))
            continue
        if tables_only:
            outcomes.append(Outcome(**common, status="missing", message="no results (tables only: not run)"))
            continue
        log.info("[%d/%d] %s", number, len(jobs), name)
        started = time.perf_counter()
        try:
            evaluate(config, directory)
        except FileNotFoundError as error:  # DataLayoutError is one: data root or checkpoint absent
            outcomes.append(Outcome(**common, status="skipped", message=str(error)))
            log.warning("skipped %s: %s", name, error)
            continue
        except Exception as error:  # noqa: BLE001 - recorded; the other jobs go on
            outcomes.append(Outcome(**common, status="failed", message=f"{type(error).__name__}: {error}\n"
                                    + "".join(traceback.format_exc(limit=-3))))
            log.error("failed %s: %s", name, error)
            continue
        outcomes.append(Outcome(**common, status="ran", seconds=time.perf_counter() - started))
    return outcomes


def cluster_commands(jobs: Sequence[Job], runs_root: str | Path, launcher: str | None = None,
                     python: str = "python") -> list[str]:
    """Hydra multirun commands of ``scripts/run.py`` doing the same jobs, one per group of jobs that differ
    only by seed (``seed=0,1,2``: one cluster job per checkpoint). Each job writes the folder
    :meth:`Job.directory` would (``hydra.sweep.dir`` / ``hydra.sweep.subdir``), so ``--tables-only``
    merges the results wherever they ran."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (job.experiment, job.benchmark.segment, job.tag, tuple(o for o in job.overrides
                                                                     if not o.startswith("seed=")))
        groups.setdefault(key, []).append(job)
    commands = []
    for (experiment, segment, tag, overrides), members in groups.items():
        seeds = ",".join(str(job.seed) for job in members)
        parts = [python, "scripts/run.py", "-m"]
        if launcher:
            parts.append(f"hydra/launcher={launcher}")
        parts += [*overrides, f"seed={seeds}", f"paths.results_dir={runs_root}",
                  f"hydra.sweep.dir={Path(runs_root) / experiment}",
                  f"hydra.sweep.subdir={segment}/{tag}/seed${{seed}}"]
        commands.append(" ".join(shlex.quote(p) for p in parts))
    return commands


# ====================================================================================== collecting
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


# ========================================================================================= tables
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
        parts.append(part.assign(row=row.label))
    frame = pd.concat(parts, ignore_index=True) if parts else paper.iloc[0:0].assign(row="")
    keys = ["row", *[c for c in spec.columns if c in frame.columns], "metric"]
    return frame[[*keys, "paper_name", "mean", "std"]]


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


def write_wide_csv_plain(path: Path, frame: pd.DataFrame) -> Path:
    with atomic_write(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.4f")
    return path


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
        values = values[values["group"].isin(spec.groups)] if spec.value != "seconds" else values
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
        built.lines.append(f"SOTA: no runs below {runs_root / experiment}; run `scripts/reproduce.py {source}"
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


def build_epochs_std(spec: Spec, runs_root: Path, out_dir: Path, figures_dir: Path) -> Built:
    """Table 5: the std of AUROC over the last ``last_epochs`` checkpoints per method (+ Figure 3)."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no run folders below {root}: table not written")
        return built
    built.lines.append(f"merged {long['run_dir'].nunique()} run folder(s) below {root}")
    parts = []
    for row in spec.rows:
        chosen = select_rows(long, row.select, str(spec.path))
        if not len(chosen):
            built.lines.append(f"row {row.label!r}: no runs match {row.select}")
        parts.append(chosen.assign(row=row.label))
    long = pd.concat(parts, ignore_index=True)
    if not len(long):
        built.lines.append("no runs match any row: table not written")
        return built
    last = int(spec.options["last_epochs"])
    try:
        stds = std_over_last_epochs(long.assign(method=long["row"]), last_n=last, value=spec.value)
    except (ValueError, KeyError) as error:
        built.problems.append(f"Table 5 needs {last} epochs per method and seed: {error}")
        return built
    table = table5(long.assign(method=long["row"]), last_n=last, value=spec.value)
    table.index.name = spec.row_header
    table = table.reindex(index=pd.Index([r.label for r in spec.rows], name=spec.row_header))  # '--' if none
    order = [(g, f"{spec.value}_std", s) for g in spec.groups for s in STATS]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(order, names=table.columns.names))
    epochs = sorted(long["extra.epoch"].dropna().unique().tolist())
    built.lines.append(f"epochs found: {[int(e) for e in epochs]}; std over the last {last} per method and seed "
                       f"(then the mean over seeds)")
    ours = stds.groupby(["method", "group"], as_index=False, sort=False)["std"].mean().rename(
        columns={"method": "row"}).assign(metric=spec.value)
    built = _finish_table(spec, out_dir, built, table, ours, spec.rows, metric=f"{spec.value}_std",
                          compare_value="std")
    figure = spec.options.get("figure")
    if figure:
        curves = epoch_curves(long, value=spec.value)
        built.files += figure_auroc_per_epoch(curves, figures_dir, str(figure), value=spec.value,
                                              method_names=_method_names(spec.rows))
        built.files.append(write_wide_csv_plain(figures_dir / f"{figure}.csv", curves))
    return built


def _method_names(rows: Sequence[RowEntry]) -> dict[str, str]:
    """Registry name -> row label, for rows that select one method."""
    return {str(r.select["method"]): r.label for r in rows if "method" in r.select}


# ======================================================================================== figures
def build_tsne(spec: Spec, compose: Compose, figures_dir: Path, extra_overrides: Sequence[str] = ()) -> Built:
    """Figure 2: t-SNE of penultimate features (ID test + every OOD test set, with the OOD prototype) and of
    their GROOD gradients (eq. 5), recomputed from the feature cache with :mod:`grood.method`."""
    from grood.method import class_prototypes, grood_gradient
    from grood.pipeline import grood_prototype, prepare_run

    built = Built()
    entry = spec.benchmarks[0]
    seed = entry.seeds[0]
    overrides = [f"dataset={entry.dataset}", *([f"backbone={entry.backbone}"] if entry.backbone else []),
                 f"seed={seed}", *spec.overrides, *entry.overrides, *extra_overrides]
    config = compose(overrides)
    try:
        run = prepare_run(config)
    except FileNotFoundError as error:  # the caller turns this into a skipped line of the report
        raise _Skipped(entry.dataset, seed, str(error)) from error
    prototype_cfg = dict(config.get("prototype") or {"strategy": "mixup"})
    strategy = str(prototype_cfg.get("strategy"))
    if "oracle" in strategy:
        raise SpecError(f"{spec.path}: Figure 2 needs one OOD prototype; prototype={strategy} makes one per OOD set")
    train = run.split_outputs("train", accumulate_early=strategy == "mixup").features
    protos = class_prototypes(train.features, train.labels, run.benchmark.num_classes)
    p_ood = grood_prototype(run, prototype_cfg, protos)
    test = run.features("test")
    ood_names = [*run.benchmark.near, *run.benchmark.far]
    features = torch.cat([test.features, *[run.features(n).features for n in ood_names]])
    labels = torch.cat([test.labels, *[torch.full((len(run.features(n)),), -1, dtype=torch.long) for n in ood_names]])
    features, protos, p_ood = features.float().cpu(), protos.float().cpu(), p_ood.float().cpu()  # t-SNE: CPU
    gradients = grood_gradient(features, protos, p_ood)
    options = spec.options
    subsample = options.get("subsample")
    built.files += figure_tsne(features, gradients, labels, p_ood, figures_dir, name=spec.name,
                               subsample=None if subsample is None else int(subsample),
                               perplexity=float(options["perplexity"]), seed=seed,
                               class_names=options.get("class_names"), max_iter=int(options["max_iter"]))
    built.lines.append(f"{entry.dataset} seed {seed}: {len(test)} ID test + "
                       f"{int((labels < 0).sum())} OOD test points ({', '.join(ood_names)}), "
                       f"prototype={strategy}, t-SNE of {min(len(labels), subsample or len(labels))} points")
    return built


def build_epoch_curves(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 3 alone, from the runs of another target (``options.source``, Table 5's)."""
    built = Built()
    source = str(spec.options["source"])
    source_spec = load_spec(source, spec.smoke, spec.path.parent)
    root = runs_root / source_spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no runs below {root}: run `scripts/reproduce.py {source}"
                           f"{' --smoke' if spec.smoke else ''}` first (it also draws this figure)")
        return built
    long = pd.concat([select_rows(long, row.select, str(spec.path)) for row in source_spec.rows], ignore_index=True)
    if not len(long):
        built.lines.append(f"no runs below {root} match the rows of {source_spec.path}: figure not drawn")
        return built
    curves = epoch_curves(long, value=source_spec.value)
    built.files += figure_auroc_per_epoch(curves, figures_dir, spec.name, value=source_spec.value,
                                          method_names=_method_names(source_spec.rows))
    built.files.append(write_wide_csv_plain(figures_dir / f"{spec.name}.csv", curves))
    built.lines.append(f"{curves['epoch'].nunique()} epochs x {curves['method'].nunique()} methods from {root}")
    return built


def build_densities(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 4: GROOD score densities for ID, near- and far-OOD test data, one panel per benchmark
    (``scores.pt`` of each benchmark's first seed)."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no run folders below {root}: figure not drawn")
        return built
    runs = long.drop_duplicates("run_dir")
    panels: dict[str, dict[str, torch.Tensor]] = {}
    for entry in spec.benchmarks:
        chosen = runs[(runs["benchmark"] == entry.dataset) & (runs["method"] == spec.options["method"])]
        if entry.backbone:
            chosen = chosen[chosen["architecture"] == entry.backbone]
        if not len(chosen):
            built.lines.append(f"{entry.segment}: no {spec.options['method']} run: no panel")
            continue
        chosen = chosen.sort_values("seed").iloc[0]
        folder = root / chosen["run_dir"]
        scores = torch.load(folder / "scores.pt", map_location="cpu", weights_only=True)
        if isinstance(scores["id"], Mapping):
            raise ValueError(f"{folder}/scores.pt: ID scores per OOD set (an oracle prototype); Figure 4 needs one")
        groups = read_groups(folder)
        panels[entry.segment] = {"id": scores["id"], **{
            group: torch.cat([scores["ood"][name] for name in groups.get(group, [])])
            for group in spec.groups if groups.get(group)}}
        built.lines.append(f"{entry.segment}: {folder}")
    if not panels:
        built.lines.append("no benchmark has a run: figure not drawn")
        return built
    built.files += figure_score_densities(panels, figures_dir, spec.name,
                                          score_label="GROOD score (higher = more ID)")
    return built


def read_groups(folder: Path) -> dict[str, list[str]]:
    """The ``groups`` (near / far OOD set names) of a run folder's ``run.json``."""
    return json.loads((folder / "run.json").read_text())["groups"]


def build_auroc_vs_k(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 5: near / far AUROC of GROOD against k (``method.params.k``), mean ± std over seeds."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None or "params.k" not in long.columns:
        built.lines.append(f"no GROOD runs with method.params.k below {root}: figure not drawn")
        return built
    rows = value_frame(long, spec.value)
    rows = rows[(rows["method"] == spec.options["method"]) & rows["params.k"].notna() & rows["group"].isin(spec.groups)]
    data = pd.DataFrame({"k": rows["params.k"].astype(int), "group": rows["group"], "seed": rows["seed"],
                         "benchmark": rows["benchmark"], spec.value: rows[spec.value]})
    if data["benchmark"].nunique() > 1:
        raise ValueError(f"{root}: runs of several benchmarks {sorted(data['benchmark'].unique())}; Figure 5 "
                         "draws one")
    title = _display(data["benchmark"].iloc[0]) if len(data) else None
    built.files += figure_auroc_vs_k(data, figures_dir, spec.name, value=spec.value, title=title)
    summary = data.groupby(["k", "group"], as_index=False)[spec.value].agg(["mean", "std", "count"])
    built.files.append(write_wide_csv_plain(figures_dir / f"{spec.name}.csv", summary))
    built.lines.append("AUROC per k: " + "; ".join(
        f"k={int(r['k'])} {r['group']} {r['mean']:.2f}" for r in summary.to_dict("records")))
    return built


# ========================================================================================= report
def _status_counts(outcomes: Sequence[Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no jobs"


def _skip_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """Skipped jobs grouped by (dataset, reason): one line per missing dataset / checkpoint."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.status == "skipped":
            groups.setdefault((outcome.dataset, outcome.message), []).append(outcome)
    lines = []
    for (dataset, message), members in groups.items():
        seeds = sorted({m.seed for m in members if m.seed is not None})
        first, _, rest = message.partition("\n")
        lines.append(f"- **{dataset}** skipped ({len(members)} job(s), seeds {seeds}): {first}")
        if rest.strip():
            lines += ["", "  ```", *[f"  {line}" for line in rest.rstrip().splitlines()], "  ```", ""]
    return lines


def write_report(spec: Spec, out_path: Path, outcomes: Sequence[Outcome], built: Built, commands: Sequence[str],
                 runs_root: Path, argv: str) -> Path:
    """``report.md``: what ran, what was skipped and why, what was written, the numbers, the commands."""
    smoke = " --smoke" if spec.smoke else ""
    make_smoke = "SMOKE=1 " if spec.smoke else ""
    spec_path = spec.path.relative_to(REPO_ROOT) if spec.path.is_relative_to(REPO_ROOT) else spec.path
    lines = [f"# {spec.title}{' (smoke)' if spec.smoke else ''}: reproduction report", "",
             f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{argv}` "
             f"(git {git_commit() or 'unknown'}); spec `{spec_path}` ({spec.variant}); runs below "
             f"`{runs_root / spec.experiment}`.", ""]
    if spec.smoke:
        lines += ["Smoke version: the shared CIFAR-10 smoke benchmark (subsets of real images, a ResNet-20, near = "
                  "tin, far = mnist, fashionmnist, texture). It checks the pipeline end to end; its numbers do not "
                  "reproduce the paper's (the paper columns of `paper_vs_ours.csv` are CIFAR-10 / ResNet-18).", ""]
    count = len([o for o in outcomes if o.status != "note"])
    lines += ["## Jobs", "", f"{count} job(s): {_status_counts(outcomes)}.", ""]
    job_rows = [o for o in outcomes if o.status not in ("skipped", "note")]
    if job_rows:
        lines += ["| job | status | seconds |", "|---|---|---|"]
        lines += [f"| {o.name} | {o.status} | {'' if o.seconds is None else f'{o.seconds:.1f}'} |" for o in job_rows]
        lines.append("")
    skipped = _skip_lines(outcomes)
    lines += ["## Skipped", ""] + (skipped or ["Nothing skipped."]) + [""]
    notes = [o for o in outcomes if o.status == "note"]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed or built.problems or notes:
        lines += ["## Problems", ""]
        lines += [f"- {o.name}: {o.message}" for o in notes]
        lines += [f"- {p}" for p in built.problems]
        for outcome in failed:
            lines += [f"- **{outcome.name} failed**:", "", "```", outcome.message.strip(), "```"]
        lines.append("")
    lines += ["## Results", ""] + [f"- {line}" for line in built.lines]
    lines += [f"- wrote `{path}`" for path in built.files] + [""]
    if built.table is not None:
        metric = f"{spec.value}_std" if spec.kind == "epochs_std" else spec.value
        lines += [markdown_table(built.table, metric, built.pre_rows, built.quoted,
                                 int(spec.options.get("decimals", 2))), ""]
    if spec.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in spec.notes] + [""]
    target = spec.name
    lines += ["## Commands", "",
              f"- this target: `{make_smoke}make reproduce-{target if target.startswith('table') else 'figures'}` "
              f"= `python scripts/reproduce.py {target}{smoke}` (finished jobs are kept; `--force` re-runs them)",
              f"- merge existing results only (e.g. from a cluster): `python scripts/reproduce.py {target}{smoke} "
              "--tables-only`",
              f"- one SLURM job per (dataset, checkpoint): `python scripts/reproduce.py {target}{smoke} "
              "--print-commands --launcher submitit_slurm`, run the printed commands, then `--tables-only`", ""]
    if commands:
        lines += ["The same jobs as `scripts/run.py` multiruns (local launcher):", "", "```", *commands, "```", ""]
    return _write_text(out_path, "\n".join(lines))


# ====================================================================================== a target
@dataclass
class TargetResult:
    spec: Spec
    outcomes: list[Outcome]
    built: Built
    report: Path

    @property
    def ok(self) -> bool:
        return not any(o.status == "failed" for o in self.outcomes) and not self.built.problems


def reproduce_target(spec: Spec, compose: Compose, runs_root: str | Path, out_root: str | Path,
                     force: bool = False, tables_only: bool = False, extra_overrides: Sequence[str] = (),
                     paths: Mapping[str, Any] | None = None, evaluate: Evaluate | None = None,
                     argv: str = "scripts/reproduce.py") -> TargetResult:
    """Run (or, with ``tables_only``, only merge) one target; write its files and ``report.md``.

    Tables go to ``<out_root>/<name>/`` (``<name>.csv``, ``<name>.tex``, ``paper_vs_ours.csv``,
    ``report.md``); figures to ``<out_root>/figures/`` with ``<name>_report.md``.
    """
    runs_root, out_root = Path(runs_root), Path(out_root)
    if paths is None:
        paths = compose(list(extra_overrides))["paths"]
    jobs, outcomes = expand_jobs(spec, paths, extra_overrides)
    outcomes += run_jobs(jobs, compose, runs_root, force=force, tables_only=tables_only, evaluate=evaluate)
    figures_dir = out_root / "figures"
    is_figure = spec.kind in ("tsne", "epoch_curves", "densities", "auroc_vs_k")
    out_dir = figures_dir if is_figure else out_root / spec.name
    try:
        if spec.kind == "table":
            built = build_table(spec, runs_root, out_dir)
        elif spec.kind == "epochs_std":
            built = build_epochs_std(spec, runs_root, out_dir, figures_dir)
        elif spec.kind == "tsne":
            built = Built(lines=["tables only: Figure 2 is computed, not merged; run without --tables-only"]) \
                if tables_only else build_tsne(spec, compose, figures_dir, extra_overrides)
        elif spec.kind == "epoch_curves":
            built = build_epoch_curves(spec, runs_root, figures_dir)
        elif spec.kind == "densities":
            built = build_densities(spec, runs_root, figures_dir)
        else:
            built = build_auroc_vs_k(spec, runs_root, figures_dir)
    except SpecError:
        raise
    except _Skipped as skipped:
        built = Built(lines=["figure not drawn: its data is absent"])
        outcomes.append(Outcome(f"{spec.name}/{skipped.dataset}/seed{skipped.seed}", skipped.dataset, skipped.seed,
                                "skipped", skipped.message))
    except Exception as error:  # noqa: BLE001 - a merge that fails is reported with the jobs that ran
        built = Built(problems=[f"building {spec.name} failed: {type(error).__name__}: {error}"])
        log.error("building %s failed", spec.name, exc_info=True)
    report = out_dir / (f"{spec.name}_report.md" if is_figure else "report.md")
    commands = cluster_commands(jobs, runs_root)
    result = TargetResult(spec, outcomes, built, write_report(spec, report, outcomes, built, commands, runs_root, argv))
    log.info("%s: %s; report %s", spec.name, _status_counts(outcomes), report)
    return result

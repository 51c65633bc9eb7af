"""Reproduction specs: ``grood/reproduce/targets/<target>.yaml`` (package data) read, checked and folded into a :class:`Spec`.

The spec constants (valid keys, kinds, values, per-kind options), the target groups, :class:`SpecError`,
the entry dataclasses and :func:`load_spec`; the format is described in :mod:`grood.reproduce`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from grood.io import package_data_dir
from grood.reporting.runs import METRIC_COLUMNS

SPEC_DIR = package_data_dir("grood.reproduce", "targets")
#: Target groups of the command line / Makefile. ``all`` runs Table 2 before Table 1 (whose SOTA column
#: comes from the Table 2 runs) and Table 5 before Figure 3 (drawn from its runs).
GROUPS = {
    "figures": ["figure2", "figure3", "figure4", "figure5", "appendix_a4"],
    "all": ["table2", "table1", "table3", "table4", "table5", "table6", "table7",
            "figure2", "figure3", "figure4", "figure5", "appendix_a4", "author"],
}


class SpecError(ValueError):
    """A reproduction spec that cannot work; the message names the file and the key at fault."""


KINDS = ("table", "epochs_std", "tsne", "epoch_curves", "densities", "auroc_vs_k")
TOP_KEYS = {"table", "kind", "title", "paper_table", "experiment", "columns", "groups", "value", "row_header",
            "runs", "rows", "pre_rows", "paper_filter", "options", "notes", "full", "smoke"}
#: Overrides of every smoke job: the shared smoke benchmark's data root (``paths.smoke_data_root``).
SMOKE_OVERRIDES: tuple[str, ...] = ("paths.data_root=${paths.smoke_data_root}",)
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
    value = raw.get("value", "AUROC")
    if value not in VALUES:
        raise _fail(path, "value", f"{value!r} is not one of {', '.join(VALUES)}")
    # timings have two groups: on cached outputs, and extra network passes (grood/reproduce/collect.py)
    valid_groups = ("cached", "network") if value == "seconds" else ("near", "far")
    groups = _str_list(raw.get("groups", list(valid_groups)), path, "groups")
    for group in groups:
        if group not in valid_groups:
            raise _fail(path, "groups", f"{group!r} is not one of {list(valid_groups)} (value: {value})")

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
        benchmarks=benchmarks,
        overrides=(list(SMOKE_OVERRIDES) if smoke else []) + _str_list(variant.get("overrides"), path,
                                                                      f"{variant_name}.overrides"),
        paper_aliases={k: {str(a): str(b) for a, b in dict(v).items()} for k, v in aliases.items()},
    )

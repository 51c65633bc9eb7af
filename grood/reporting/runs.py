"""Read evaluation results folders into one long DataFrame.

Every evaluation run writes one folder holding ``run.json`` (what produced the numbers) and
``metrics.csv`` (OpenOOD's table: index ``dataset`` = the OOD sets, then ``nearood`` / ``farood``;
columns ``FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC`` in percent). :func:`collect_runs` finds every
``run.json`` below a root (any depth, e.g. one folder per cluster job) and returns one row per
(run, dataset). A malformed file stops it with an error naming the file and the key or line at fault;
two folders describing the same run stop it with an error naming both.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

METRIC_COLUMNS = ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
#: The mean rows of OpenOOD's table and the group each one averages.
GROUP_ROWS = {"nearood": "near", "farood": "far"}
#: Columns that identify a run (with every ``extra.*`` and ``params.*`` column).
RUN_KEY_COLUMNS = ["benchmark", "method", "seed", "checkpoint", "experiment", "architecture", "variant",
                   "prototype"]
BASE_COLUMNS = [*RUN_KEY_COLUMNS, "dataset", "group", *METRIC_COLUMNS, "ncp_accuracy", "id_accuracy",
                "run_dir"]
REQUIRED_KEYS = ("benchmark", "method", "seed", "groups")


class RunFormatError(ValueError):
    """A ``run.json`` or ``metrics.csv`` that cannot be read; the message names the file and the key/line."""


class DuplicateRunError(ValueError):
    """Two results folders describe the same run (same benchmark, method, seed, checkpoint, experiment, extra)."""


def collect_runs(root: str | os.PathLike) -> pd.DataFrame:
    """Every run below ``root`` as one long DataFrame, one row per (run, dataset).

    Columns: ``benchmark, method, seed, checkpoint, experiment, architecture, variant, prototype, dataset,
    group, FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC, ncp_accuracy, id_accuracy, run_dir``, then the flattened
    ``extra.*`` (run.json ``extra``), ``params.*`` (``method_params``) and ``timings_s.*`` entries, sorted.

    - ``group`` is ``near`` / ``far`` for the OOD sets listed in run.json ``groups`` and for the mean rows
      ``nearood`` / ``farood``; empty for a row in no group.
    - ``architecture``: ``extra.architecture``, else run.json ``backbone`` (its ``name`` when a mapping),
      else ``config.backbone.name``; empty when none is recorded.
    - ``variant``: ``extra.variant``, else ``method_params.variant``, else ``config.method.params.variant``;
      ``"grood"`` for a GROOD run that records none (the detector's default); empty for other methods.
    - ``prototype``: ``extra.prototype``, else ``config.prototype.strategy`` (GROOD runs only); empty if none.
    - ``run_dir``: the run's folder relative to ``root`` (POSIX).
    - Left out: runs whose ``run.json`` has ``status: failed``, and folders named ``*.superseded-<n>``.
    - ``ncp_accuracy`` / ``id_accuracy`` in percent, NaN where the run records null.

    Raises:
        FileNotFoundError: no ``run.json`` below ``root``.
        RunFormatError: a malformed ``run.json`` / ``metrics.csv`` (names the file and the key or line).
        DuplicateRunError: two folders with the same run key (names both folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {root} is not a directory")
    # folders set aside by a reproduction (results of another configuration) are not current runs
    run_files = sorted(path for path in root.rglob("run.json")
                       if not any(".superseded-" in part for part in path.relative_to(root).parts))
    if not run_files:
        raise FileNotFoundError(f"no run.json found below {root}; point collect_runs at a results folder")
    frames: list[pd.DataFrame] = []
    seen: dict[str, Path] = {}
    for run_file in run_files:
        run = read_run_json(run_file)
        if run.get("status", "ok") == "failed":  # a method that could not run: its reason is in run.json
            continue
        info = run_identity(run, run_file)
        key = json.dumps({k: v for k, v in info.items() if not k.startswith("timings_s.")}, sort_keys=True,
                         default=str)
        if key in seen:
            raise DuplicateRunError(
                f"two results folders describe the same run: {seen[key].parent} and {run_file.parent} "
                f"(same benchmark/method/seed/checkpoint/experiment/extra: {key}); delete or move one of them, "
                "or give them different 'experiment' names or 'extra' entries"
            )
        seen[key] = run_file
        metrics = read_metrics_csv(run_file.parent / "metrics.csv")
        frames.append(_run_rows(run, info, metrics, run_file, root))
    if not frames:
        raise FileNotFoundError(f"no successful run below {root} (every run.json records status: failed)")
    long = pd.concat(frames, ignore_index=True)
    extra_columns = sorted(c for c in long.columns if c not in BASE_COLUMNS)
    return long[BASE_COLUMNS + extra_columns]


def read_run_json(path: Path) -> dict[str, Any]:
    """Parse and check one ``run.json`` (required keys and their types); errors name the file and key."""
    try:
        text = path.read_text()
    except OSError as error:
        raise RunFormatError(f"{path}: cannot read ({error})") from error
    try:
        run = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFormatError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") \
            from error
    if not isinstance(run, dict):
        raise RunFormatError(f"{path}: expected a JSON object at the top level, got {type(run).__name__}")
    for key in REQUIRED_KEYS:
        if key not in run:
            raise RunFormatError(f"{path}: missing key {key!r} (required: {', '.join(REQUIRED_KEYS)})")
    for key in ("benchmark", "method"):
        if not isinstance(run[key], str) or not run[key]:
            raise RunFormatError(f"{path}: key {key!r} must be a non-empty string, got {run[key]!r}")
    if isinstance(run["seed"], bool) or not isinstance(run["seed"], int):
        raise RunFormatError(f"{path}: key 'seed' must be an integer, got {run['seed']!r}")
    groups = run["groups"]
    if not isinstance(groups, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in groups.values()
    ):
        raise RunFormatError(f"{path}: key 'groups' must map group names to lists of OOD set names, got {groups!r}")
    for key in ("ncp_accuracy", "id_accuracy"):
        value = run.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunFormatError(f"{path}: key {key!r} must be a number (percent) or null, got {value!r}")
    for key in ("extra", "method_params", "config", "timings_s"):
        if run.get(key) is not None and not isinstance(run[key], dict):
            raise RunFormatError(f"{path}: key {key!r} must be a JSON object, got {run[key]!r}")
    for key in ("checkpoint", "experiment"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise RunFormatError(f"{path}: key {key!r} must be a string or null, got {run[key]!r}")
    return run


def read_metrics_csv(path: Path) -> pd.DataFrame:
    """Read one OpenOOD ``metrics.csv`` -> DataFrame indexed by ``dataset`` with :data:`METRIC_COLUMNS`.

    Empty cells and ``nan`` read as NaN; any other non-number is an error naming the file, line and column.
    """
    if not path.is_file():
        raise RunFormatError(f"{path}: missing; every run.json needs its metrics.csv in the same folder")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise RunFormatError(f"{path}: cannot read as CSV ({error})") from error
    if not rows:
        raise RunFormatError(f"{path}: empty file; expected a header 'dataset,{','.join(METRIC_COLUMNS)}'")
    header = rows[0]
    if not header or header[0] != "dataset":
        raise RunFormatError(f"{path}: line 1: the first column must be 'dataset', got {header[:1]}")
    missing = [c for c in METRIC_COLUMNS if c not in header]
    if missing:
        raise RunFormatError(f"{path}: line 1: missing column(s) {missing}; header is {header}")
    positions = {column: header.index(column) for column in METRIC_COLUMNS}
    records: dict[str, dict[str, float]] = {}
    for line_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise RunFormatError(f"{path}: line {line_number}: {len(row)} fields, the header has {len(header)}")
        dataset = row[0].strip()
        if not dataset:
            raise RunFormatError(f"{path}: line {line_number}: empty dataset name")
        if dataset in records:
            raise RunFormatError(f"{path}: line {line_number}: dataset {dataset!r} appears twice")
        values = {}
        for column, position in positions.items():
            cell = row[position].strip()
            try:
                values[column] = float(cell) if cell else math.nan
            except ValueError:
                raise RunFormatError(
                    f"{path}: line {line_number}, column {column!r}: {cell!r} is not a number"
                ) from None
        records[dataset] = values
    if not records:
        raise RunFormatError(f"{path}: no data rows below the header")
    table = pd.DataFrame.from_dict(records, orient="index", columns=METRIC_COLUMNS)
    table.index.name = "dataset"
    return table


def flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"<prefix>.a.b": 1, "<prefix>.c": "[1, 2]"}`` (lists as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = value
    return flat


def _nested(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None and value != "":
            return value
    return None


def run_identity(run: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The columns that identify a run: :data:`RUN_KEY_COLUMNS`, ``extra.*``, ``params.*`` (and timings)."""
    extra = run.get("extra") or {}
    params = run.get("method_params") or {}
    config = run.get("config") or {}
    backbone = run.get("backbone")
    if isinstance(backbone, Mapping):
        backbone = backbone.get("name")
    architecture = _first(extra.get("architecture"), backbone, _nested(config, "backbone", "name"))
    variant = _first(extra.get("variant"), params.get("variant"), _nested(config, "method", "params", "variant"))
    if variant is None and run["method"] == "grood":
        variant = "grood"
    prototype = extra.get("prototype")
    if prototype is None and run["method"] == "grood":
        prototype = _nested(config, "prototype", "strategy")
    info: dict[str, Any] = {
        "benchmark": run["benchmark"],
        "method": run["method"],
        "seed": run["seed"],
        "checkpoint": run.get("checkpoint") or "",
        "experiment": run.get("experiment") or "",
        "architecture": str(architecture or ""),
        "variant": str(variant or ""),
        "prototype": str(prototype or ""),
    }
    info.update(flatten(extra, "extra"))
    info.update(flatten(params, "params"))
    info.update(flatten(run.get("timings_s") or {}, "timings_s"))
    return info


def _run_rows(run: Mapping[str, Any], info: Mapping[str, Any], metrics: pd.DataFrame, run_file: Path,
              root: Path) -> pd.DataFrame:
    group_of: dict[str, str] = {}
    for group, names in run["groups"].items():
        for name in names:
            if name not in metrics.index:
                raise RunFormatError(
                    f"{run_file.parent / 'metrics.csv'}: no row for OOD set {name!r}, which run.json lists in "
                    f"group {group!r}; rows are {list(metrics.index)}"
                )
            group_of[name] = group
    rows = metrics.reset_index()
    rows["group"] = [group_of.get(d, GROUP_ROWS.get(d, "")) for d in rows["dataset"]]
    for column, value in info.items():
        rows[column] = value
    rows["ncp_accuracy"] = math.nan if run.get("ncp_accuracy") is None else float(run["ncp_accuracy"])
    rows["id_accuracy"] = math.nan if run.get("id_accuracy") is None else float(run["id_accuracy"])
    rows["run_dir"] = run_file.parent.relative_to(root).as_posix()
    return rows

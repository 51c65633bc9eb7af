"""Results: one results folder per method (``metrics.csv``, ``run.json``, ``scores.pt``) and
:func:`run_evaluation`, the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from grood.components import load
from grood.config import ConfigError, RunConfig, check_parameters, config_hash, to_plain, validate
from grood.evaluation import fsood_table, metrics_table, pooled_accuracy
from grood.feature_store import CacheSpaceError
from grood.io import atomic_write, write_json
from grood.metrics import accuracy
from grood.provenance import git_commit, package_versions
from grood.run_lock import results_folder_lock
from grood.timings import forward_timings, timings_record
from grood.pipeline.prepare import (
    BenchmarkRun,
    MethodsFailedError,
    RunInputError,
    adapt_parameters,
    method_list,
    method_problem,
    prepare_run,
)
from grood.pipeline.scoring import MethodScores, _csid, _groups, score_method, search_baseline_parameters

log = logging.getLogger(__name__)


def run_record(run: BenchmarkRun, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` says of every method's run: the config, the inputs and what produced them."""
    config = run.config
    plain = to_plain(config)
    return {
        "benchmark": run.benchmark.name,
        "dataset": config.dataset.name,
        "method": method,
        "method_params": dict(params),
        "seed": config.seed,
        "data_root": str(run.data_root),
        "checkpoint": config.dataset.checkpoint,
        "checkpoint_sha256": run.checkpoint_sha256,
        "backbone": plain["backbone"],
        "input_normalisation": run.normalisation,
        "input_images": run.input_images,
        "groups": _groups(run),
        "experiment": config.experiment_name,
        "config": plain,
        "config_hash": config_hash(plain),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def write_method_results(
    out_dir: Path, run: BenchmarkRun, method: str, params: Mapping[str, Any], table: pd.DataFrame,
    scores: MethodScores, id_accuracy: float, aps_record: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (), fsood: tuple[pd.DataFrame, dict[str, Any]] | None = None,
) -> None:
    """``metrics.csv``, ``metrics.json``, ``scores.pt`` and, last, ``run.json`` for one method (atomic writes:
    a folder with ``run.json`` is complete).

    ``aps_record``: the parameter search that chose ``params`` (:meth:`grood.aps.SearchResult.record`),
    written to ``run.json`` as ``aps`` (None: no search ran). ``notes``: parameter adaptations.
    ``fsood``: ``(table, record)`` of the full-spectrum evaluation (:func:`full_spectrum`), written to
    ``metrics_fsood.csv`` and ``run.json`` ``fsood``; ``metrics.csv`` stays OpenOOD's plain OOD table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "metrics.csv") as handle:
        table.to_csv(handle, float_format="%.4f")
    tables = {"table": table.reset_index().to_dict(orient="records")}
    if fsood is not None:
        with atomic_write(out_dir / "metrics_fsood.csv") as handle:
            fsood[0].to_csv(handle, float_format="%.4f")
        tables["fsood_table"] = json.loads(fsood[0].reset_index().to_json(orient="records"))
    else:
        (out_dir / "metrics_fsood.csv").unlink(missing_ok=True)  # never beside a run without fsood
    write_json(out_dir / "metrics.json", tables)
    with atomic_write(out_dir / "scores.pt", "wb") as handle:
        torch.save({"id": scores.id_scores, "ood": scores.ood_scores, "csid": scores.csid_scores}, handle)
    extra = {k: v for k, v in dataclasses.asdict(run.config.extra).items() if v is not None}
    write_json(out_dir / "run.json", {
        **run_record(run, method, params),
        "status": "ok",
        "aps": None if aps_record is None else dict(aps_record),
        "parameter_notes": list(notes),
        "id_accuracy": 100.0 * id_accuracy,
        "ncp_accuracy": scores.info.get("ncp_accuracy"),
        "extra": {**extra, **{k: v for k, v in scores.info.items() if k != "ncp_accuracy"}},
        "fsood": None if fsood is None else fsood[1],
        **timings_record(run, method),
        **({"ood_prototype": dict(run.prototype_record)} if load("method", method).uses_ood_prototype else {}),
    })


def full_spectrum(run: BenchmarkRun, scores: MethodScores) -> tuple[pd.DataFrame, dict[str, Any]]:
    """OpenOOD's ``eval_ood(fsood=True)`` for one method (:func:`grood.evaluation.fsood_table`): the table
    and what ``run.json`` records of it (csid sets, their sizes and accuracies, the pooled accuracy)."""
    csid = _csid(run)
    test = run.features("test")
    outputs = [test] + [run.features(split) for split in csid.values()]
    pooled = pooled_accuracy([o.logits.argmax(1) for o in outputs], [o.labels for o in outputs])
    per_set = {name: accuracy(run.features(split).logits, run.features(split).labels)
               for name, split in csid.items()}
    table = fsood_table(scores.id_scores, scores.csid_scores, scores.ood_scores, _groups(run), pooled, per_set)
    record = {
        "csid": {name: {"list": run.benchmark.csid[name], "samples": len(run.features(split)),
                        "accuracy": 100.0 * per_set[name]} for name, split in csid.items()},
        "accuracy": 100.0 * pooled,
        "near_auroc": _auroc(table, "nearood"),
        "far_auroc": _auroc(table, "farood"),
    }
    return table, record


def _failure_record(run: BenchmarkRun, name: str, params: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {**run_record(run, name, params), "status": "failed", "error": reason,
            **timings_record(run, name)}


def check_results_folder(output_dir: str | Path, config: RunConfig) -> None:
    """Refuse a results folder that holds a run of another configuration (its ``run.json`` or
    ``summary.json`` records another config hash); a run of the same configuration is replaced, with a
    log line."""
    output_dir = Path(output_dir)
    wanted = config_hash(to_plain(config))
    for record_path in (output_dir / "summary.json", output_dir / "run.json"):
        if not record_path.is_file():
            continue
        try:
            recorded = json.loads(record_path.read_text()).get("config_hash")
        except (OSError, ValueError) as error:
            raise RunInputError(f"{record_path} is unreadable ({error}); move the folder away or delete it") from None
        if recorded != wanted:
            raise RunInputError(
                f"results folder {output_dir} holds a run of another configuration ({record_path.name}: config "
                f"hash {recorded}, this run: {wanted}); choose another folder (hydra.run.dir=...) or move it away"
            )
        log.info("results folder %s holds a run of this very configuration: its files are replaced", output_dir)


def run_evaluation(config: RunConfig, output_dir: str | Path, run: BenchmarkRun | None = None) -> dict[str, pd.DataFrame]:
    """Evaluate every configured method on one benchmark; write one results folder per method.

    Every input is checked first (:func:`prepare_run`). With ``method=all`` a method that cannot run (a
    parameter invalid for this network, a numerical failure) is recorded, with its reason, in its folder's
    ``run.json`` and in ``summary.json``; the others still run.

    ``run``: the run :func:`prepare_run` already built for ``config`` (a shared extraction), else built here.

    Returns method name -> OpenOOD table (percent).

    The results folder is locked while the run writes it (:mod:`grood.run_lock`): a second run on it stops
    at once.

    Raises:
        MethodsFailedError: at the end, when any method failed (every other result is written).
        ResultsFolderBusyError: another live run writes ``output_dir``.
    """
    output_dir = Path(output_dir)
    with results_folder_lock(output_dir):
        return _evaluate_methods(config, output_dir, run)


def _evaluate_methods(config: RunConfig, output_dir: Path, run: BenchmarkRun | None) -> dict[str, pd.DataFrame]:
    """:func:`run_evaluation`'s work, with the results folder locked."""
    config = validate(config)
    check_parameters(config)
    methods = method_list(config.method)
    run = prepare_run(config) if run is None else run
    several = len(methods) > 1
    if any(load("method", name).uses_ood_prototype for name, _ in methods) and config.prototype.strategy == "mixup":
        run.split_outputs("train", accumulate_early=True)  # one train pass serves the mixup and every method
    test = run.features("test")
    id_accuracy = accuracy(test.logits, test.labels)
    tables: dict[str, pd.DataFrame] = {}
    failures: dict[str, str] = {}
    for name, params in methods:
        target = output_dir / name if several else output_dir
        try:
            problem = method_problem(name, params, run.feature_dim, config)
            if problem is not None:
                raise ConfigError(problem)
            aps_record = None
            params, sweep, notes = adapt_parameters(name, params, run.feature_dim, config)
            for note in notes:
                log.warning("%s", note)
            if config.aps and load("method", name).sweep:
                result = search_baseline_parameters(run, name, params, sweep)
                params = result.chosen
                aps_record = result.record() if result.trials else None
            scores = score_method(run, name, params)
            table = metrics_table(scores.id_scores, scores.ood_scores, _groups(run), id_accuracy)
            fsood = full_spectrum(run, scores) if config.fsood else None
        except CacheSpaceError:  # a full disk stops the run: the next method would need the disk too
            raise
        except Exception as error:  # noqa: BLE001 - recorded; the other methods still run
            reason = f"{type(error).__name__}: {error}"
            failures[name] = reason
            log.error("method %s failed: %s", name, reason)
            target.mkdir(parents=True, exist_ok=True)
            # never beside a failed run.json
            for stale in ("metrics.csv", "metrics_fsood.csv", "metrics.json", "scores.pt"):
                (target / stale).unlink(missing_ok=True)
            write_json(target / "run.json", _failure_record(run, name, params, reason))
            if not several:
                raise
            continue
        write_method_results(target, run, name, params, table, scores, id_accuracy, aps_record, notes, fsood)
        tables[name] = table
    if several:
        write_json(output_dir / "summary.json", {
            "config_hash": config_hash(to_plain(config)),
            "forward_passes_s": forward_timings(run.timings),  # shared by every method, recorded once
            "methods": {name: ({"status": "failed", "error": failures[name]} if name in failures
                               else {"status": "ok", "near_auroc": _auroc(tables[name], "nearood"),
                                     "far_auroc": _auroc(tables[name], "farood")})
                        for name, _ in methods},
        })
    if failures:
        raise MethodsFailedError(
            f"{len(failures)} of {len(methods)} method(s) failed (the others' results are in {output_dir}):\n"
            + "\n".join(f"  {name}: {reason}" for name, reason in failures.items())
        )
    return tables


def _auroc(table: pd.DataFrame, row: str) -> float | None:
    return None if row not in table.index else round(float(table.loc[row, "AUROC"]), 4)

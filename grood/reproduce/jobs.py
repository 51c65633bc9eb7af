"""Evaluation jobs: a spec expanded into :class:`Job` s, run where their results are missing, and the same
jobs as ``grood run`` Hydra multirun commands for a cluster.
"""

from __future__ import annotations

import glob
import logging
import re
import shlex
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from grood.reproduce.specs import BenchmarkEntry, RunEntry, Spec, SpecError

log = logging.getLogger("grood.reproduce")

Compose = Callable[[Sequence[str]], Any]  # overrides -> a validated grood.config.RunConfig
Evaluate = Callable[[Mapping[str, Any], Path], Any]
_EPOCH = re.compile(r"epoch_(\d+)")


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
                                         "(grood train) or point the spec's epochs.glob at them"))
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
                    tail.append(f"extra.epoch={epoch}")
                for run in spec.runs:
                    overrides = (*base, *tail, *spec.overrides, *entry.overrides, *run.overrides, *extra_overrides)
                    jobs.append(Job(spec.experiment, entry, run, seed, tuple(overrides), epoch))
    return jobs, notes


def expected_methods(config: Any) -> list[str]:
    """The method folders a composed config (a :class:`grood.config.RunConfig`) writes (one per method for
    ``method=all``)."""
    from grood.pipeline import method_list

    return [name for name, _ in method_list(config.method)]


def job_complete(directory: Path, methods: Sequence[str], config: Any | None = None) -> bool:
    """Whether a job's results are all there: ``run.json`` (status ok) + ``metrics.csv`` per method folder,
    and, given ``config``, made with that very configuration (``run.json``'s ``config_hash``)."""
    import json

    from grood.config import config_hash, to_plain

    wanted = None if config is None else config_hash(to_plain(config))
    folders = [directory] if len(methods) == 1 else [directory / m for m in methods]
    for folder in folders:
        if not ((folder / "run.json").is_file() and (folder / "metrics.csv").is_file()):
            return False
        try:
            record = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            return False
        if record.get("status", "ok") != "ok" or (wanted is not None and record.get("config_hash") != wanted):
            return False
    return True


def set_aside(directory: Path) -> Path:
    """Move a results folder made with another configuration to ``<name>.superseded-<n>`` (never deleted)."""
    number = 1
    while directory.with_name(f"{directory.name}.superseded-{number}").exists():
        number += 1
    target = directory.with_name(f"{directory.name}.superseded-{number}")
    directory.rename(target)
    return target


def _recorded_elsewhere(directory: Path, methods: Sequence[str], config: Any) -> bool:
    """Whether ``directory`` holds results (complete or not) of a configuration other than ``config``."""
    import json

    from grood.config import config_hash, to_plain

    wanted = config_hash(to_plain(config))
    records = [directory / "summary.json", directory / "run.json", *[directory / m / "run.json" for m in methods]]
    for path in records:
        if path.is_file():
            try:
                if json.loads(path.read_text()).get("config_hash") != wanted:
                    return True
            except (OSError, ValueError):
                return True
    return False


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
        if not force and job_complete(directory, methods, config):
            outcomes.append(Outcome(**common, status="existing"))
            continue
        if tables_only:
            outcomes.append(Outcome(**common, status="missing", message="no results (tables only: not run)"))
            continue
        if directory.exists() and _recorded_elsewhere(directory, methods, config):
            moved = set_aside(directory)  # a run of other settings: kept, never mistaken for this one
            log.warning("%s holds a run of another configuration: moved to %s", directory, moved)
            outcomes.append(Outcome(**common, status="note", message=f"results of another configuration moved "
                                    f"to {moved}"))
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
    """Hydra multirun commands of ``grood run`` (``python -m grood run -m``) doing the same jobs, one per group of jobs that differ
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
        parts = [python, "-m", "grood", "run", "-m"]
        if launcher:
            parts.append(f"hydra/launcher={launcher}")
        parts += [*overrides, f"seed={seeds}", f"paths.results_dir={runs_root}",
                  f"hydra.sweep.dir={Path(runs_root) / experiment}",
                  f"hydra.sweep.subdir={segment}/{tag}/seed${{seed}}"]
        commands.append(" ".join(shlex.quote(p) for p in parts))
    return commands

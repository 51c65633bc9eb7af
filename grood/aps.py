"""OpenOOD v1.5's automatic parameter search (APS) for the baselines.

OpenOOD's ``Evaluator`` runs, for every postprocessor whose config sets ``APS_mode: True``, a grid search
over its ``postprocessor_sweep`` before the test: each combination is fitted, scored on the ID
validation list and the validation OOD lists, and the one with the highest AUROC (the first, on ties)
is kept. grood's detectors carry that grid in their ``sweep`` attribute (empty for the methods OpenOOD
runs without APS), and :func:`search_parameters` repeats the search on the same lists
(``val`` and ``val_ood:<name>`` of the benchmark, e.g. ``val_cifar10.txt`` and ``val_tin.txt``).

Parameters the user sets (``method.params``) are kept fixed and only the others are searched. A
combination the detector rejects (e.g. ViM's ``dim=1000`` on 512-dimensional features) is recorded with
its error and skipped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from grood.components import components, load
from grood.data.benchmarks import VAL_OOD_PREFIX, Benchmark
from grood.metrics import auroc
from grood.progress import track

log = logging.getLogger(__name__)

#: ``fit_and_score(name, params, splits) -> {split: scores [N]}`` (higher = more ID), as the pipeline does.
FitAndScore = Callable[[str, Mapping[str, Any], list[str]], dict[str, torch.Tensor]]


class APSError(ValueError):
    """The search cannot run (no validation lists) or no combination could be fitted."""


@dataclass
class SearchResult:
    """What :func:`search_parameters` found.

    Attributes:
        chosen: the parameters to evaluate with (the user's fixed ones plus the best combination).
        searched: parameter name -> values tried (empty when nothing was searched).
        trials: one dict per combination: ``params``, and ``auroc`` (percent) or ``error``.
        id_split, ood_splits: the validation lists used.
    """

    chosen: dict[str, Any]
    searched: dict[str, list[Any]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    id_split: str = "val"
    ood_splits: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for ``run.json``."""
        return {
            "metric": "AUROC", "id_split": self.id_split, "ood_splits": self.ood_splits,
            "searched": self.searched, "trials": self.trials, "chosen": self.chosen,
        }


def search_space(name: str, fixed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The sweep of detector ``name`` without the parameters in ``fixed``; empty when it has none."""
    if name not in components("method"):
        raise APSError(f"unknown detector {name!r}; valid names: {', '.join(sorted(components('method')))}")
    return {key: list(values) for key, values in load("method", name).sweep.items() if key not in fixed}


def validation_splits(benchmark: Benchmark) -> tuple[str, list[str]]:
    """``("val", ["val_ood:<name>", ...])`` of ``benchmark``; a clear error when it lacks either."""
    missing = []
    if not benchmark.has_split("val"):
        missing.append("an ID validation list (benchmark key 'val')")
    if not benchmark.val_ood:
        missing.append("validation OOD lists (benchmark key 'val_ood')")
    if missing:
        raise APSError(
            f"aps=true needs {' and '.join(missing)}, which benchmark {benchmark.name!r} does not have; "
            "add them to the benchmark or run with aps=false"
        )
    return "val", [VAL_OOD_PREFIX + name for name in benchmark.val_ood]


def search_parameters(
    name: str,
    fixed: Mapping[str, Any],
    benchmark: Benchmark,
    fit_and_score: FitAndScore,
    progress: bool = False,
    space: Mapping[str, list[Any]] | None = None,
) -> SearchResult:
    """OpenOOD's APS for detector ``name``: the grid of its sweep (minus ``fixed``), best validation AUROC.

    ``space``: the values to search (None = the detector's sweep; the pipeline leaves out values invalid for
    the network). Returns ``SearchResult(chosen=fixed)`` without scoring anything when there is nothing to search
    (no sweep, a single combination, or every swept parameter fixed by the user).

    Raises:
        APSError: the benchmark lacks validation lists, or every combination failed (their errors listed).
    """
    space = search_space(name, fixed) if space is None else {k: list(v) for k, v in space.items() if k not in fixed}
    combinations = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    if len(combinations) <= 1:
        return SearchResult(chosen={**fixed, **(combinations[0] if combinations else {})}, searched=space)
    id_split, ood_splits = validation_splits(benchmark)
    result = SearchResult(chosen={}, searched=space, id_split=id_split, ood_splits=ood_splits)
    best: tuple[float, dict[str, Any]] | None = None
    for combination in track(combinations, f"APS {name}", progress, unit="combinations"):
        params = {**fixed, **combination}
        try:
            scores = fit_and_score(name, params, [id_split, *ood_splits])
        except ValueError as error:
            result.trials.append({"params": combination, "error": str(error)})
            log.info("APS %s %s: skipped (%s)", name, combination, error)
            continue
        value = 100.0 * auroc(scores[id_split], torch.cat([scores[split] for split in ood_splits]))
        result.trials.append({"params": combination, "auroc": round(value, 4)})
        log.info("APS %s %s: validation AUROC %.2f", name, combination, value)
        if best is None or value > best[0]:  # strictly greater: the first best is kept, as OpenOOD
            best = (value, params)
    if best is None:
        errors = "; ".join(f"{trial['params']}: {trial['error']}" for trial in result.trials)
        raise APSError(f"APS for {name!r}: no combination of {space} could be fitted ({errors})")
    result.chosen = best[1]
    return result

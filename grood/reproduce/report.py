"""One target end to end: :func:`reproduce_target` (jobs -> table / figure -> ``report.md``),
its :class:`TargetResult` and :func:`write_report`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from grood.provenance import git_commit
from grood.reproduce.figures import (
    _Skipped,
    build_auroc_vs_k,
    build_densities,
    build_epoch_curves,
    build_epochs_std,
    build_tsne,
)
from grood.reproduce.jobs import Compose, Evaluate, Outcome, cluster_commands, expand_jobs, run_jobs
from grood.reproduce.output import Built, _write_text, markdown_table
from grood.reproduce.specs import SPEC_DIR, Spec, SpecError
from grood.reproduce.tables import build_table

log = logging.getLogger("grood.reproduce")


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
    package_parent = SPEC_DIR.parents[2]  # the folder holding grood/ (a checkout or site-packages)
    spec_path = spec.path.relative_to(package_parent) if spec.path.is_relative_to(package_parent) else spec.path
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
              f"= `grood reproduce {target}{smoke}` (finished jobs are kept; `--force` re-runs them)",
              f"- merge existing results only (e.g. from a cluster): `grood reproduce {target}{smoke} "
              "--tables-only`",
              f"- one SLURM job per (dataset, checkpoint): `grood reproduce {target}{smoke} "
              "--print-commands --launcher submitit_slurm`, run the printed commands, then `--tables-only`", ""]
    if commands:
        lines += ["The same jobs as `grood run` multiruns (local launcher):", "", "```", *commands, "```", ""]
    return _write_text(out_path, "\n".join(lines))


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
                     argv: str = "grood reproduce") -> TargetResult:
    """Run (or, with ``tables_only``, only merge) one target; write its files and ``report.md``.

    Tables go to ``<out_root>/<name>/`` (``<name>.csv``, ``<name>.tex``, ``paper_vs_ours.csv``,
    ``report.md``); figures to ``<out_root>/figures/`` with ``<name>_report.md``.
    """
    runs_root, out_root = Path(runs_root), Path(out_root)
    if paths is None:
        from grood.config import to_plain

        paths = to_plain(compose(list(extra_overrides)))["paths"]
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

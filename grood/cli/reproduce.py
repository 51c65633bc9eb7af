#!/usr/bin/env python
"""The paper's tables and figures, one command each (specs in ``grood/reproduce/targets/<target>.yaml``).

    grood reproduce table2                  # run what Table 2 needs, write results/table2/
    grood reproduce table4 --smoke          # its smoke version (shared smoke benchmark, CPU)
    grood reproduce all                     # tables 1-7, figures 2-5, appendix A.4
    grood reproduce table2 --tables-only    # merge the results that exist, run nothing
    grood reproduce table2 --print-commands --launcher submitit_slurm   # cluster dispatch

Targets: table1 ... table7, figure2 ... figure5, appendix_a4, and the groups ``figures`` and ``all``.
Every evaluation runs in this process (Hydra's compose API + ``grood.pipeline.run_evaluation``), one
results folder per job below ``--runs-dir`` (default ``paths.results_dir``, ``results/runs``); a job
whose results exist is not run again unless ``--force``. Datasets whose data or checkpoint is absent
are skipped and listed in the report. Tables go to ``--out-dir`` (``results/``, smoke: ``results/smoke/``)
as ``<target>/<target>.csv``, ``.tex``, ``paper_vs_ours.csv`` and ``report.md``; figures to
``<out-dir>/figures/``. The exit status is 1 when a job or a merge failed (skips are not failures).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Iterator, Sequence

from grood.config import ConfigError, to_plain  # noqa: E402
from grood.resources import configure_threads  # noqa: E402
from grood.reproduce import (  # noqa: E402
    SPEC_DIR,
    Compose,
    SpecError,
    cluster_commands,
    expand_jobs,
    expand_targets,
    load_spec,
    reproduce_target,
)

from grood.config import CONFIG_DIR  # noqa: E402


@contextlib.contextmanager
def hydra_composer(config_dir: Path = CONFIG_DIR) -> Iterator[Compose]:
    """``compose(overrides) -> RunConfig``: the validated config ``grood run`` would get for ``overrides``."""
    from grood.config import compose_run_config

    yield lambda overrides: compose_run_config(list(overrides), config_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", help="table1..table7, figure2..figure5, appendix_a4, author, figures, all")
    parser.add_argument("--smoke", action="store_true", help="the smoke version (shared smoke benchmark, CPU)")
    parser.add_argument("--force", action="store_true", help="re-run jobs whose results already exist")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing; merge the results that exist (e.g. written by cluster jobs)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print the grood run multirun commands doing the jobs, one per line; run nothing")
    parser.add_argument("--launcher", default=None,
                        help="with --print-commands: a hydra/launcher option, e.g. submitit_slurm")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="root of the run folders (default: paths.results_dir, i.e. results/runs)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where tables and figures go (default: results, smoke: results/smoke)")
    parser.add_argument("--spec-dir", type=Path, default=SPEC_DIR, help="folder of the <target>.yaml specs")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override added to every job (repeatable), e.g. device=cuda "
                             "or paths.cache_dir=/scratch/cache; hydra.* ones (e.g. hydra.launcher.partition=gpu) "
                             "only with --print-commands")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    configure_threads()
    try:
        targets = expand_targets(args.targets, args.spec_dir)
        specs = [load_spec(name, args.smoke, args.spec_dir) for name in targets]
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    hydra_overrides = [o for o in args.override if o.lstrip("+~").startswith("hydra")]
    if hydra_overrides and not args.print_commands:
        print(f"error: {hydra_overrides} configure Hydra's launcher: use them with --print-commands", file=sys.stderr)
        return 2
    command_line = "grood reproduce " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    ok = True
    with hydra_composer() as compose:
        try:
            base = to_plain(compose([o for o in args.override if o not in hydra_overrides]))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        runs_root = args.runs_dir or Path(str(base["paths"]["results_dir"]))
        out_root = args.out_dir or (Path("results/smoke") if args.smoke else Path("results"))
        for spec in specs:
            try:
                if args.print_commands:
                    jobs, notes = expand_jobs(spec, base["paths"], args.override)
                    for note in notes:
                        print(f"# {note.name}: {note.status}: {note.message}")
                    for command in cluster_commands(jobs, runs_root, args.launcher):
                        print(command)
                    continue
                result = reproduce_target(spec, compose, runs_root, out_root, force=args.force,
                                          tables_only=args.tables_only, extra_overrides=args.override,
                                          paths=base["paths"], argv=command_line)
            except SpecError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            ok &= result.ok
            print(f"{spec.name}: report {result.report}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""One evaluation run from a validated :class:`grood.config.RunConfig` (what ``grood run`` passes).

The flow: data root -> image lists -> backbone + checkpoint -> one cached forward pass
per split -> every requested detector on the cache -> OpenOOD's tables -> a results folder that says
what produced it (``metrics.csv``, ``metrics.json``, ``run.json`` with the resolved config, package
versions, git commit and checkpoint hash, and ``scores.pt`` for the figures).

The package: :mod:`~grood.pipeline.prepare` (run preparation), :mod:`~grood.pipeline.scoring` (every
method on the cache) and :mod:`~grood.pipeline.results` (results folders and the whole run).
"""

from grood.pipeline.prepare import (
    RunInputError,
    MissingInputError,
    MethodsFailedError,
    BenchmarkRun,
    resolve_benchmark,
    resolve_transform,
    optional_splits,
    prepare_run,
    method_problem,
    run_arguments,
    adapt_parameters,
    method_list,
)
from grood.pipeline.scoring import (
    grood_prototype,
    prototype_cache_parts,
    MethodScores,
    build_method,
    score_method,
    score_with_prototype,
    baseline_split_scores,
    score_baseline,
    search_baseline_parameters,
    _groups,
)
from grood.pipeline.results import (
    run_record,
    write_method_results,
    full_spectrum,
    check_results_folder,
    run_evaluation,
)
from grood.run_lock import ResultsFolderBusyError

__all__ = [
    'RunInputError',
    'MissingInputError',
    'MethodsFailedError',
    'BenchmarkRun',
    'resolve_benchmark',
    'resolve_transform',
    'optional_splits',
    'prepare_run',
    'method_problem',
    'run_arguments',
    'adapt_parameters',
    'method_list',
    'grood_prototype',
    'prototype_cache_parts',
    'MethodScores',
    'build_method',
    'score_method',
    'score_with_prototype',
    'baseline_split_scores',
    'score_baseline',
    'search_baseline_parameters',
    '_groups',
    'run_record',
    'write_method_results',
    'full_spectrum',
    'check_results_folder',
    'run_evaluation',
    'ResultsFolderBusyError',
]

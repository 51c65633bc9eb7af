"""Feature extraction shared by several processes, on torch.distributed (``torchrun``) or an array job.

Both share a split's cache shards (:func:`grood.features.extract_shards`) out disjointly: job ``i`` of ``n``
computes shards ``s`` with ``s % n == i`` of every split, into the shared feature cache (``paths.cache_dir``
on a file system every job sees).

- ``torchrun --nproc_per_node=N -m grood run ...``: each rank extracts its shards, all wait at a barrier
  (``torch.distributed``, ``env://``; NCCL on CUDA with one GPU per local rank, gloo on the CPU) until every
  shard exists, then rank 0 runs the methods and writes the results while the other ranks exit.
- an array job (Hydra's submitit launcher on SLURM): ``extract.only=true extract.num_jobs=N
  extract.job_index=<i>`` extracts job ``i``'s shards and stops; a run without ``extract.*`` settings then
  reads the complete cache (a shard another job has not written yet is computed by that run).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from grood.config import ConfigError, RunConfig
from grood.features import ShardJobs, extract_shards

log = logging.getLogger(__name__)

#: How long a rank waits at the barrier for the others' shards (extraction shares are equal to a shard).
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


@dataclass
class Sharing:
    """This process's part of a shared extraction: ``jobs``; ``distributed``: a torch.distributed process
    group was started here (torchrun); ``evaluates``: this process runs the methods afterwards."""

    jobs: ShardJobs
    distributed: bool
    evaluates: bool

    def extract(self, config: RunConfig) -> Any:
        """Check the inputs, extract this job's shards of every split of the run, then (torchrun) wait until
        every rank's shards exist. Returns the prepared :class:`grood.pipeline.BenchmarkRun`."""
        from grood.pipeline import method_list, prepare_run

        run = prepare_run(config)
        # as run_evaluation: GROOD's mixup prototype reads the training split's early-layer class sums
        early = any(name == "grood" for name, _ in method_list(config.method)) and config.prototype.strategy == "mixup"
        for split in splits_read(config, run.datasets):
            accumulate_early = split == "train" and early
            extract_shards(run.network, run.dataset(split), cache=run.cache, key_parts=run.cache_key_parts(split),
                           num_classes=run.benchmark.num_classes, accumulate_early=accumulate_early,
                           batch_size=config.batch_size, num_workers=config.num_workers, device=run.device,
                           progress=config.progress, description=f"{run.benchmark.name}/{split} ({self.jobs.describe()})",
                           shard_batches=config.cache.shard_batches, jobs=self.jobs)
        log.info("%s: every shard of this job is in the feature cache %s", self.jobs.describe(), run.cache.root)
        if self.distributed:
            torch.distributed.barrier()
            log.info("%s: every rank's shards are in the feature cache", self.jobs.describe())
        return run

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def splits_read(config: RunConfig, splits: list[str] | dict[str, Any]) -> list[str]:
    """The splits of ``splits`` whose cached outputs the configured methods read: the validation lists only
    for a baseline fitted on them (ReAct) or OpenOOD's parameter search, and the val OOD lists also for
    GROOD's ``prototype=val_ood``; never the corrupted ID images (a prototype strategy reads those images)."""
    from grood.aps import search_space
    from grood.data.benchmarks import CORRUPTED_SPLIT
    from grood.detectors.registry import DETECTORS, fit_split
    from grood.pipeline import method_list

    methods = method_list(config.method)
    baselines = [(name, params) for name, params in methods if name != "grood"]
    searched = config.aps and any(search_space(name, params) for name, params in baselines)
    validation = searched or any(fit_split(DETECTORS[name]) == "val" for name, _ in baselines)
    val_ood = searched or (any(name == "grood" for name, _ in methods) and config.prototype.strategy == "val_ood")
    return [split for split in splits if split != CORRUPTED_SPLIT and (split != "val" or validation)
            and (not split.startswith("val_ood:") or val_ood)]


def torchrun_ranks() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def start_sharing(config: RunConfig) -> Sharing | None:
    """This process's :class:`Sharing` (torchrun's environment or the ``extract.*`` settings), or None for a
    run that extracts alone. Under torchrun the process group is started here (NCCL when the run's device is
    CUDA, each local rank on its own GPU; gloo otherwise)."""
    extract = config.extract
    ranks = torchrun_ranks()
    if ranks is None:
        if extract.num_jobs == 1 and not extract.only:
            return None
        return Sharing(ShardJobs(extract.job_index, extract.num_jobs), distributed=False, evaluates=False)
    if extract.num_jobs != 1:
        raise ConfigError(f"extract.num_jobs={extract.num_jobs} under torchrun: the ranks share the shards already "
                          "(WORLD_SIZE); leave extract.num_jobs and extract.job_index unset")
    rank, world, local_rank = ranks
    on_cuda = config.device != "cpu" and torch.cuda.is_available()
    if on_cuda:
        torch.cuda.set_device(local_rank)  # "cuda" (and "auto") then mean this rank's GPU
    torch.distributed.init_process_group("nccl" if on_cuda else "gloo", init_method="env://", timeout=BARRIER_TIMEOUT)
    return Sharing(ShardJobs(rank, world), distributed=True, evaluates=rank == 0 and not extract.only)

#!/usr/bin/env python
"""Time evaluations on the shared CIFAR-10 smoke benchmark (ResNet-20).

    grood bench-eval [--data-root ...] [--checkpoint ...] [--cache-dir DIR] [--num-workers N]
    grood bench-eval --against-openood [--methods grood msp ...] [--log FILE]
    grood bench-eval --warm-runs       # a second GROOD run on the same cache against a warm MSP run,
                                       # with the peak RSS of every cold and warm run

Default: the forward pass over every split (train, test and each OOD set) runs on an empty cache, then
each method runs on the cached outputs (issue target: all methods <= 1.5x the forward pass). GROOD's
time includes its mixup prototype (a second pass through part of the network over the training
images); ODIN re-runs the network with input perturbation and is reported apart. Prints a table, and the
forward pass against the bare network on random tensors of the benchmark's shape (issue target: >= 0.9x),
with ``--num-workers`` loader workers (default 0: decoding in the main process), and the time of loading
alone (every image opened, decoded and transformed in this process), which bounds the ratio where loading
and the network share the same cores.

``--against-openood``: OpenOOD v1.5's own ``Evaluator`` and grood on the same methods, data, network and
settings (batch size, loader workers, OpenOOD's automatic parameter search), one after the other in this
process. Prints both times, their ratio and each method's AUROCs side by side, and checks the AUROCs agree
(exit status 1 when one does not). Needs ``openood`` importable (it is not on PyPI; the script says how to
install it in a throwaway virtual environment). How the two sides are made to match:

- **data**: the smoke root is in OpenOOD's layout; it is registered in OpenOOD's dataset tables
  (``DATA_INFO``, ``benchmarks_dict``, the preprocessing, class-count and normalisation tables) as
  ``cifar10_smoke`` with grood's lists: id train/val/test, ood val = val_tin, near = [tin],
  far = [mnist, fashionmnist, texture], no csid sets; nothing is downloaded. OpenOOD's preprocessor is
  its ``TestStandardPreProcessor`` with the checkpoint's ImageNet mean/std, the same transform as grood's.
- **network**: grood's ResNet-20 with the checkpoint, behind OpenOOD's network interface
  (``forward(x, return_feature, return_feature_list)``, ``forward_threshold``, ``get_fc``,
  ``get_fc_layer``, ``fc``) and still a grood ``SplitNetwork``, so that one object serves both.
- **GROOD on OpenOOD's side** is grood's :class:`grood.openood_compat.GROODPostprocessor` inside OpenOOD's
  ``Evaluator`` (the README's integration), with the pipeline's settings (mixup prototype, k = 1), not
  OpenOOD's own ``grood`` postprocessor, whose APS sweep has 1,800 combinations.
- **baselines**: OpenOOD's postprocessors by name with their config files (APS as configured there);
  ViM's ``dim`` is 32 on both sides (ResNet-20's features have D = 64), as ``experiment=smoke`` sets.
- **CPU**: OpenOOD's ``Evaluator`` and postprocessors call ``.cuda()``. Without CUDA, this script makes
  ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return the object unchanged while OpenOOD runs
  (restored afterwards); nothing of grood is affected, it never calls ``.cuda()``.
- numpy 2 removed ``np.sctypes``, which OpenOOD's import of imgaug needs: the script defines it (numpy 1's
  value) before importing openood when it is missing.

Times: OpenOOD's is, per method, ``Evaluator(...)`` (postprocessor setup and APS) plus ``eval_ood()``;
grood's is the pipeline from an empty feature cache (every forward pass included) plus, per method, APS
and scoring, as ``grood run experiment=smoke method=all`` does; a second grood pass on the warm
feature cache is printed too. OpenOOD's verbose output goes to ``--log``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The checkout holding this package (what --against-openood installs in its throwaway environment).
REPO = Path(__file__).resolve().parents[2]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from grood.backbones.base import SplitNetwork  # noqa: E402
from grood.detectors import DETECTORS  # noqa: E402
from grood.pipeline import method_list, prepare_run, score_method  # noqa: E402
from grood.resources import configure_threads, loader_workers  # noqa: E402

#: The benchmark name registered in OpenOOD's tables for the smoke root.
SMOKE_NAME = "cifar10_smoke"
#: AUROC (percent) by which the two sides may differ and still agree (float32 sums in other orders).
AUROC_TOLERANCE = 0.1

INSTALL_OPENOOD = """\
openood is not importable, so --against-openood cannot run. OpenOOD v1.5 is not on PyPI. Install it in a
throwaway virtual environment (never in this project's .venv), from a copy of its public repository
(Jingkang50/OpenOOD on GitHub) at /tmp/openood_src:

  python3 -m venv /tmp/ooenv
  /tmp/ooenv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/ooenv/bin/pip install -e {repo}
  /tmp/ooenv/bin/pip install --no-deps -e /tmp/openood_src
  /tmp/ooenv/bin/pip install scikit-learn json5 scipy tqdm pyyaml opencv-python-headless imgaug pandas \\
      diffdist gdown statsmodels timm foolbox Cython faiss-cpu
  /tmp/ooenv/bin/pip install --no-build-isolation libmr
  GROOD_SHARED_DIR={shared} /tmp/ooenv/bin/python -m grood bench-eval --against-openood
"""


# --------------------------------------------------------------------------- the default benchmark
def forward_vs_methods(args: argparse.Namespace) -> None:
    """The forward pass over every split against every method on the cache (the default mode), and the
    forward pass against the bare network's throughput on random tensors of the benchmark's shape."""
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="grood-bench-")
    config = smoke_config(cache_dir, [f"paths.data_root={args.data_root}", f"dataset.checkpoint={args.checkpoint}",
                                      f"batch_size={args.batch_size}", f"num_workers={args.num_workers}",
                                      "method=all"])
    per_method = dict(method_list(config.method))
    run = prepare_run(config)
    started = time.perf_counter()
    run.split_outputs("train", accumulate_early=True)
    for split in ["test", *run.benchmark.near, *run.benchmark.far, *(["val"] if run.benchmark.has_split("val") else [])]:
        run.split_outputs(split)
    forward = time.perf_counter() - started
    images = sum(len(o.features) for k, o in run.outputs.items() if "+" not in k)
    floor = bare_network_throughput(run.network, run.transform_spec, args.batch_size, images, run.device)
    loading = loading_seconds([run.datasets[k] for k in run.outputs if "+" not in k])

    rows = []
    for name in ["grood", *[n for n in DETECTORS if n != "grood"]]:
        started = time.perf_counter()
        score_method(run, name, per_method[name])
        rows.append((name, time.perf_counter() - started))

    on_cache = sum(seconds for name, seconds in rows if name != "odin")
    print(f"\nsmoke benchmark ({images} images over {len([k for k in run.outputs if '+' not in k])} splits), "
          f"cache {cache_dir}")
    print(f"{'method':<10}{'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<10}{seconds:>10.2f}")
    print(f"\none forward pass over every split:       {forward:8.2f} s ({images / forward:,.0f} images/s; "
          f"batch {args.batch_size}, {loader_workers(args.num_workers)} loader workers, {torch.get_num_threads()} threads)")
    print(f"bare network on random tensors:           {images / floor:8.2f} s ({floor:,.0f} images/s)")
    ratio = (images / forward) / floor
    print(f"feature extraction / bare network (target >= 0.9): {ratio:.2f}: {'met' if ratio >= 0.9 else 'NOT met'}")
    network_seconds = images / floor
    print(f"loading alone (open, decode, transform; this process): {loading:8.2f} s ({1e3 * loading / images:.3f} ms "
          f"per image); where loading and the network share the same cores, extraction / bare network <= "
          f"{network_seconds / (network_seconds + loading):.2f}")
    print(f"all methods on the cache (ODIN excluded): {on_cache:8.2f} s")
    print(f"ratio (target <= 1.5):                    {on_cache / forward:8.2f}")
    print(f"ODIN (re-runs the network):               {dict(rows)['odin']:8.2f} s")


def loading_seconds(datasets: Sequence[Any]) -> float:
    """Seconds to read every item of ``datasets`` (image lists with their test transform) in this process:
    opening, decoding and transforming each image, as a loader does, without the network."""
    started = time.perf_counter()
    for dataset in datasets:
        for item in range(len(dataset)):
            dataset[item]
    return time.perf_counter() - started


def bare_network_throughput(network: SplitNetwork, spec: dict, batch_size: int, images: int, device: str) -> float:
    """Images per second of ``early -> mid -> head`` alone on random ``[B, 3, H, W]`` tensors (no data loading,
    no cache): the floor feature extraction is compared with."""
    from grood.device import resolve_device

    device = resolve_device(device)
    network = network.to(device).eval()
    size = int(spec["crop_size"])
    batch = torch.randn(batch_size, 3, size, size, device=device)
    with torch.no_grad():
        network.head(network.mid(network.early(batch)))  # warm-up
        started = time.perf_counter()
        done = 0
        while done < images:
            network.head(network.mid(network.early(batch[: min(batch_size, images - done)])))
            done += min(batch_size, images - done)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return images / (time.perf_counter() - started)


#: Runs a script (argv[1:]) as ``__main__`` and prints this process's peak RSS in KiB on its last line of
#: stderr, when it exits (normally or by ``sys.exit``): ``VmHWM`` of ``/proc/self/status`` on Linux, the
#: high-water mark of this program's own memory. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (used where
#: there is no /proc) would count the parent's RSS as well: Linux carries it over the fork and exec.
PEAK_RSS_RUNNER = (
    "import atexit, os, resource, runpy, sys\n"
    "def peak():\n"
    "    if os.path.exists('/proc/self/status'):\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM:'):\n"
    "                return int(line.split()[1])\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: print(f'peak RSS {peak()} KiB', file=sys.stderr, flush=True))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_measured(command: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``python <command...>`` (a script and its arguments) to completion: ``(seconds, peak RSS in MiB)``
    of that process alone (read inside it: :data:`PEAK_RSS_RUNNER`)."""
    import subprocess

    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", PEAK_RSS_RUNNER, *command], env=env,
                               capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    line = [text for text in completed.stderr.splitlines() if text.startswith("peak RSS ")][-1]
    return seconds, int(line.split()[2]) / 1024


def warm_runs(args: argparse.Namespace) -> int:
    """``grood run experiment=smoke method=grood`` a second time on the same cache against a warm
    ``method=msp`` run (issue target: no longer than MSP's plus 20%): wall-clock seconds and peak RSS of each
    command, cold (the first run of each fills the feature and prototype caches) and warm (every split read
    memory-mapped from the cache)."""
    import grood

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="grood-bench-warm-")
    results = tempfile.mkdtemp(prefix="grood-bench-warm-results-")
    env = {**os.environ}
    grood_main = str(Path(grood.__file__).parent / "__main__.py")  # `python -m grood`, as a script

    def measured(method: str, run: str) -> tuple[float, float]:
        command = [grood_main, "run", "experiment=smoke", f"method={method}",
                   "progress=false", f"paths.cache_dir={cache_dir}", f"paths.results_dir={results}",
                   f"paths.data_root={args.data_root}", f"dataset.checkpoint={args.checkpoint}",
                   f"hydra.run.dir={results}/{method}-{run}"]
        return run_measured(command, env)

    cold_msp, cold_grood = measured("msp", "cold"), measured("grood", "cold")  # fill the feature and prototype caches
    warm_msp, warm_grood = measured("msp", "warm"), measured("grood", "warm")
    cached = sum(path.stat().st_size for path in Path(cache_dir).rglob("*.npy"))
    print(f"grood run experiment=smoke, cache {cache_dir} ({cached / 2**20:.1f} MiB of .npy arrays)")
    print(f"  {'':<14}{'first (cold)':>14}{'peak RSS':>12}{'again (warm)':>15}{'peak RSS':>12}")
    for name, (cold_s, cold_rss), (warm_s, warm_rss) in (("method=msp", cold_msp, warm_msp),
                                                         ("method=grood", cold_grood, warm_grood)):
        print(f"  {name:<14}{cold_s:>12.1f} s{cold_rss:>8.0f} MiB{warm_s:>13.1f} s{warm_rss:>8.0f} MiB")
    ratio = warm_grood[0] / warm_msp[0]
    print(f"warm GROOD / warm MSP (target <= 1.2): {ratio:.2f}: {'met' if ratio <= 1.2 else 'NOT met'}")
    return 0


# --------------------------------------------------------------------------- OpenOOD's side
class OpenOODInterface(SplitNetwork):
    """A grood :class:`SplitNetwork` that also answers OpenOOD v1.5's network calls.

    Wraps ``net`` (shares its modules and weights): ``forward(x)`` -> logits ``[B, C]``;
    ``forward(x, return_feature=True)`` -> ``(logits, h_pen [B, D])``; ``return_feature_list=True`` ->
    ``(logits, [stem, block 1, ..., pooled features [B, D, 1, 1]])`` as OpenOOD's ResNets list them;
    ``forward_threshold(x, t)`` -> logits of ``h_pen.clip(max=t)`` (ReAct); ``get_fc()`` -> numpy
    ``(weight [C, D], bias [C])``; ``get_fc_layer()`` and ``fc``: the final ``nn.Linear``.
    """

    def __init__(self, net: SplitNetwork) -> None:
        super().__init__()
        self.inner = net
        self.block_names = net.block_names
        self.default_split_block = net.default_split_block
        self.input_mean, self.input_std, self.input_size = net.input_mean, net.input_std, net.input_size
        self._split_block = net.split_block

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._stem(x)

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return self.inner._block(index, h)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner._pool(h)

    @property
    def classifier(self) -> nn.Linear:
        return self.inner.classifier

    @property
    def fc(self) -> nn.Linear:
        return self.inner.classifier

    def forward(self, x: torch.Tensor, return_feature: bool = False, return_feature_list: bool = False) -> Any:
        h = self._stem(x)
        feature_list = [h]
        for index in range(self.num_blocks):
            h = self._block(index, h)
            feature_list.append(h)
        feature = self._pool(h)
        logits = self.head(feature)
        if return_feature:
            return logits, feature
        if return_feature_list:
            return logits, [*feature_list[:-1], feature[:, :, None, None]]
        return logits

    def forward_threshold(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        _, feature = self.forward(x, return_feature=True)
        return self.head(feature.clip(max=threshold))

    def get_fc(self) -> tuple[Any, Any]:
        return self.fc_weight.detach().cpu().numpy(), self.fc_bias.detach().cpu().numpy()

    def get_fc_layer(self) -> nn.Linear:
        return self.classifier


def import_openood() -> Any:
    """``openood.evaluation_api`` (numpy 2's missing ``np.sctypes`` defined first), or None if absent."""
    import numpy as np

    if not hasattr(np, "sctypes"):  # numpy 2 removed it; imgaug (imported by openood) reads it at import
        np.sctypes = {  # numpy 1's value
            "int": [np.int8, np.int16, np.int32, np.int64], "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
            "float": [np.float16, np.float32, np.float64], "complex": [np.complex64, np.complex128],
            "others": [bool, object, bytes, str, np.void],
        }
    try:
        import openood.evaluation_api as evaluation_api
    except ImportError as error:
        if getattr(error, "name", "") and not str(error.name).startswith("openood"):
            print(f"openood is installed but one of its imports failed: {error}", file=sys.stderr)
        return None
    return evaluation_api


@contextlib.contextmanager
def cuda_calls_stay_put() -> Iterator[bool]:
    """Without CUDA, ``Tensor.cuda`` / ``Module.cuda`` return their object unchanged inside the block.

    OpenOOD's ``Evaluator`` and postprocessors hard-code ``.cuda()``; this lets them run on the CPU.
    Yields whether the patch is active; the original methods are restored on exit.
    """
    if torch.cuda.is_available():
        yield False
        return
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield True
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda  # type: ignore[method-assign]


def register_smoke_benchmark(evaluation_api: Any, mean: Sequence[float], std: Sequence[float]) -> None:
    """Enter the smoke root's lists in OpenOOD's tables as benchmark ``cifar10_smoke`` (no download)."""
    from openood.evaluation_api import datasets, preprocessor
    from openood.postprocessors import info
    from openood.preprocessors import transform

    lists = "benchmark_imglist/cifar10"
    classic = "images_classic/"

    def entry(name: str) -> dict[str, str]:
        return {"data_dir": classic, "imglist_path": f"{lists}/{name}.txt"}

    datasets.DATA_INFO[SMOKE_NAME] = {
        "num_classes": 10,
        "id": {"train": entry("train_cifar10"), "val": entry("val_cifar10"), "test": entry("test_cifar10")},
        "csid": {"datasets": []},
        "ood": {
            "val": entry("val_tin"),
            "near": {"datasets": ["tin"], "tin": entry("test_tin")},
            "far": {"datasets": ["mnist", "fashionmnist", "texture"], "mnist": entry("test_mnist"),
                    "fashionmnist": entry("test_fashionmnist"), "texture": entry("test_texture")},
        },
    }
    datasets.benchmarks_dict[SMOKE_NAME] = []  # data_setup downloads nothing
    preprocessor.default_preprocessing_dict[SMOKE_NAME] = {
        "pre_size": 32, "img_size": 32, "normalization": [list(mean), list(std)],
    }
    info.num_classes_dict[SMOKE_NAME] = 10
    transform.normalization_dict[SMOKE_NAME] = [list(mean), list(std)]


def openood_postprocessor(evaluation_api: Any, name: str, config_root: str, vim_dim: int) -> Any:
    """OpenOOD's postprocessor ``name`` from its config file (GROOD: grood's postprocessor)."""
    if name == "grood":
        from grood.openood_compat import GROODPostprocessor

        return GROODPostprocessor(prototype="mixup", k=1, progress=False)
    from openood.evaluation_api.postprocessor import get_postprocessor

    postprocessor = get_postprocessor(config_root, name, SMOKE_NAME)
    if name == "vim":  # as experiment=smoke: dim 32 fixed (ResNet-20's D = 64)
        postprocessor.dim = vim_dim
        postprocessor.args_dict = {"dim": [vim_dim]}
        postprocessor.APS_mode = False
    return postprocessor


def auroc_row(table: Any) -> dict[str, float]:
    """OOD set (and nearood/farood) -> AUROC in percent, from an OpenOOD-style metrics table."""
    return {str(index): float(value) for index, value in table["AUROC"].items()}


def run_openood(evaluation_api: Any, net: OpenOODInterface, methods: Sequence[str], data_root: str,
                config_root: str, batch_size: int, num_workers: int, vim_dim: int, log_file: Any,
                ) -> dict[str, tuple[float, dict[str, float]]]:
    """method -> (seconds, AUROCs) with OpenOOD's ``Evaluator``, one Evaluator per method."""
    results = {}
    for name in methods:
        print(f"  openood {name} ...", flush=True)
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            print(f"===== OpenOOD Evaluator, postprocessor {name}", flush=True)
            started = time.perf_counter()
            postprocessor = openood_postprocessor(evaluation_api, name, config_root, vim_dim)
            evaluator = evaluation_api.Evaluator(
                net, id_name=SMOKE_NAME, data_root=data_root, config_root=config_root,
                postprocessor_name=None if name == "grood" else name, postprocessor=postprocessor,
                batch_size=batch_size, shuffle=False, num_workers=num_workers,
            )
            table = evaluator.eval_ood(fsood=False, progress=False)
            seconds = time.perf_counter() - started
        results[name] = (seconds, auroc_row(table))
        print(f"  openood {name}: {seconds:.1f} s", flush=True)
    return results


# --------------------------------------------------------------------------- grood's side
def smoke_config(cache_dir: str, overrides: Sequence[str]) -> Any:
    """The validated config of ``grood run experiment=smoke progress=false`` plus ``overrides``."""
    from grood.config import compose_run_config

    return compose_run_config(["experiment=smoke", "progress=false", f"paths.cache_dir={cache_dir}", *overrides])


def run_grood(config: Any, methods: Sequence[str]) -> tuple[float, dict[str, tuple[float, dict]]]:
    """(seconds of building the run and its forward passes, method -> (seconds, AUROCs)), as run.py does."""
    from grood import pipeline
    from grood.evaluation import metrics_table
    from grood.metrics import accuracy

    per_method = dict(pipeline.method_list(config.method))
    started = time.perf_counter()
    run = pipeline.prepare_run(config)
    if "grood" in methods:
        run.split_outputs("train", accumulate_early=True)
    test = run.features("test")
    id_accuracy = accuracy(test.logits, test.labels)
    setup = time.perf_counter() - started
    results = {}
    for name in methods:
        started = time.perf_counter()
        params = per_method[name]
        if name != "grood" and config.aps:
            params = pipeline.search_baseline_parameters(run, name, params).chosen
        scores = pipeline.score_method(run, name, params)
        table = metrics_table(scores.id_scores, scores.ood_scores, pipeline._groups(run), id_accuracy)
        results[name] = (time.perf_counter() - started, auroc_row(table))
    return setup, results


# --------------------------------------------------------------------------- the comparison
def compare(openood: dict[str, tuple[float, dict]], grood: dict[str, tuple[float, dict]], grood_setup: float,
            grood_warm: tuple[float, dict[str, tuple[float, dict]]] | None, tolerance: float,
            cuda_patched: bool) -> bool:
    """Print the timing and AUROC tables; True when every method's AUROCs agree within ``tolerance``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nOpenOOD v1.5 Evaluator against grood, smoke benchmark, ResNet-20, device {device}"
          f"{' (OpenOOD .cuda() calls made no-ops)' if cuda_patched else ''}, torch threads {torch.get_num_threads()}")
    print("\n| method | OpenOOD s | grood s | OpenOOD near | grood near | OpenOOD far | grood far | max |diff| |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    agree, worst = True, []
    for name in openood:
        o_seconds, o_auroc = openood[name]
        g_seconds, g_auroc = grood[name]
        keys = sorted(set(o_auroc) | set(g_auroc))
        missing = [key for key in keys if key not in o_auroc or key not in g_auroc]
        diff = max(abs(o_auroc[key] - g_auroc[key]) for key in keys if key not in missing)
        ok = not missing and diff <= tolerance
        agree &= ok
        if not ok:
            worst.append(f"{name} ({diff:.2f}{', missing ' + ', '.join(missing) if missing else ''})")
        print(f"| {name} | {o_seconds:.1f} | {g_seconds:.1f} | {o_auroc.get('nearood', float('nan')):.2f} | "
              f"{g_auroc.get('nearood', float('nan')):.2f} | {o_auroc.get('farood', float('nan')):.2f} | "
              f"{g_auroc.get('farood', float('nan')):.2f} | {diff:.3f} |")
    main = [name for name in openood if name != "odin"]
    o_total = sum(openood[name][0] for name in main)
    g_total = grood_setup + sum(grood[name][0] for name in main)
    print(f"\nGROOD + {len(main) - ('grood' in main)} post-hoc baselines ({', '.join(main)}):")
    print(f"  OpenOOD Evaluator, one per method:                  {o_total:8.1f} s")
    print(f"  grood, empty feature cache (forward passes {grood_setup:.1f} s): {g_total:8.1f} s")
    print(f"  ratio OpenOOD / grood (target >= 10):               {o_total / g_total:8.2f}x")
    if grood_warm is not None:
        warm_total = grood_warm[0] + sum(grood_warm[1][name][0] for name in main)
        print(f"  grood, warm feature cache:                          {warm_total:8.1f} s")
        print(f"  ratio OpenOOD / grood warm:                         {o_total / warm_total:8.2f}x")
    if "odin" in openood:
        print(f"ODIN apart: OpenOOD {openood['odin'][0]:.1f} s, grood {grood['odin'][0]:.1f} s "
              f"({openood['odin'][0] / grood['odin'][0]:.2f}x)")
    if agree:
        print(f"AUROCs agree within {tolerance} (every OOD set, nearood, farood) for all {len(openood)} methods")
    else:
        print(f"AUROCs DISAGREE (more than {tolerance}) for: {', '.join(worst)}")
    return agree


def against_openood(args: argparse.Namespace) -> int:
    evaluation_api = import_openood()
    if evaluation_api is None:
        print(INSTALL_OPENOOD.format(repo=REPO, shared=Path(args.data_root).parents[1]),
              file=sys.stderr)
        return 2
    config_root = args.openood_configs or str(Path(evaluation_api.__file__).resolve().parents[2] / "configs")
    if not (Path(config_root) / "postprocessors").is_dir():
        print(f"error: OpenOOD's configs not found at {config_root}/postprocessors; pass --openood-configs "
              "<OpenOOD checkout>/configs", file=sys.stderr)
        return 2
    unknown = [m for m in args.methods if m not in ("grood", *DETECTORS)]
    if unknown:
        print(f"error: unknown methods {unknown}; valid: grood {' '.join(DETECTORS)}", file=sys.stderr)
        return 2
    overrides = [f"paths.data_root={args.data_root}", f"dataset.checkpoint={args.checkpoint}",
                 f"batch_size={args.batch_size}", f"num_workers={args.num_workers}", "method=all"]
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="grood-bench-openood-")
    config = smoke_config(cache_dir, overrides)
    vim_dim = int(config.method.params.vim.dim or 32)

    print(f"grood (feature cache {cache_dir}, empty) ...", flush=True)
    grood_setup, grood = run_grood(config, args.methods)
    print(f"grood: forward passes {grood_setup:.1f} s, methods {sum(s for s, _ in grood.values()):.1f} s", flush=True)
    grood_warm = None
    if not args.no_warm:
        print("grood again on the warm feature cache ...", flush=True)
        grood_warm = run_grood(config, args.methods)

    run = prepare_run(config)  # the same network and checkpoint for OpenOOD
    net = OpenOODInterface(run.network).eval()
    spec = run.transform_spec
    register_smoke_benchmark(evaluation_api, spec["mean"], spec["std"])
    print(f"OpenOOD (configs {config_root}; its output in {args.log}) ...", flush=True)
    with open(args.log, "w") as log_file, cuda_calls_stay_put() as patched:
        openood = run_openood(evaluation_api, net, args.methods, str(run.data_root), config_root,
                              args.batch_size, args.num_workers, vim_dim, log_file)
    return 0 if compare(openood, grood, grood_setup, grood_warm, args.tolerance, patched) else 1


def main(argv: Sequence[str] | None = None) -> int:
    shared = Path(os.environ.get("GROOD_SHARED_DIR") or "../shared")  # as paths.shared_dir
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(shared / "data" / "openood_cifar10_smoke"))
    parser.add_argument("--checkpoint", default=str(shared / "checkpoints" / "cifar10_resnet20_akamaster.th"))
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--against-openood", action="store_true", help="time OpenOOD's Evaluator against grood")
    parser.add_argument("--methods", nargs="+", default=["grood", *[n for n in DETECTORS if n != "grood"]],
                        help="--against-openood: methods to compare (default GROOD and every baseline)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="loader workers of the forward pass (with --against-openood: both sides)")
    parser.add_argument("--openood-configs", default=None, help="OpenOOD's configs/ (default: beside its package)")
    parser.add_argument("--tolerance", type=float, default=AUROC_TOLERANCE, help="AUROC agreement, percent")
    parser.add_argument("--no-warm", action="store_true", help="--against-openood: skip grood's warm-cache pass")
    parser.add_argument("--log", default="bench_eval_openood.log", help="--against-openood: OpenOOD's output")
    parser.add_argument("--warm-runs", action="store_true",
                        help="a second grood run method=grood on the same cache against a warm method=msp run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    configure_threads()
    if args.against_openood:
        return against_openood(args)
    if args.warm_runs:
        return warm_runs(args)
    forward_vs_methods(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

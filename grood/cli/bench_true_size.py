#!/usr/bin/env python
"""GROOD and KNN at ImageNet-1k's true size, out of core: time, peak RSS and recall per method (prints a table).

Not a test: it prints figures. It builds a synthetic ImageNet-1k feature set **on disk, shard by shard**
(``np.lib.format.open_memmap``; 1,281,167 x 2048 float32 training features = 10.5 GB, ~130,000 queries: 2/3
ID, 1/3 OOD) under ``--workdir``, then runs each method in its own subprocess over **read-only memory maps**
of it (as the feature cache hands them to the detectors), so that each peak RSS (``VmHWM``, :mod:`grood.peak_memory`) is the
method's own:

- ``grood-exact``: ``GROOD(index="torch", norm_pruning, storage="float16")``: exact search over float16 codes
  of the training gradients, the candidates re-ranked by their exact float32 gradients (recomputed from the
  features), so the scores are those of the float32 search;
- ``grood-ivf``: ``GROOD(index="ivf", storage="float16")`` with the library's defaults (``--nlist``,
  ``--nprobe`` to change them);
- ``knn``: grood's KNN (k=50, exact, the training features streamed against the queries);
- ``faiss-ivf-author``: FAISS ``IndexIVFFlat`` on the same gradients with the paper author's cell rule
  (``nlist = int(4 sqrt(T))``, ``T = min(600, floor(0.8 * batches))`` batches of 200 rows, trained on the
  first ``T`` batches, ``nprobe`` 4), as ``index=faiss_ivf``; ``faiss-ivf-tuned``: ``nlist = sqrt(N)`` cells
  trained on ``64 * nlist`` rows, ``--faiss-nprobe`` probes (default 32); ``faiss-hnsw``: FAISS
  ``IndexHNSWFlat`` (M 32, efSearch 128). These hold float32 gradients (N x D x 4 bytes).

recall@1 of every approximate method is measured on ``--recall-queries`` (1,000) seeded queries against an
exact search that streams the training gradients (its own untimed subprocess): a query counts as found
when the returned neighbour lies at the exact nearest distance (relative 1e-4).

Targets (issue 22, a 2-core, 24 GB machine): peak RSS <= 12 GB for every method; GROOD IVF recall@1 >=
0.98 in <= 10 min; GROOD exact completes (its time printed, no target).

Usage::

    grood bench-true-size                                  # true size, every method (hours)
    grood bench-true-size --methods grood-ivf              # true size, GROOD IVF only
    grood bench-true-size --keep --resume                  # go on after a stopped run: what it measured is reused
    grood bench-true-size --quick                          # the 200,000-row variant
    grood bench-true-size --train 20000 --queries 3000 --dim 64 --classes 10   # a toy size
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from grood.peak_memory import peak_rss_mb

IMAGENET_TRAIN = 1_281_167
METHODS = ("grood-ivf", "grood-exact", "knn", "faiss-ivf-author", "faiss-ivf-tuned", "faiss-hnsw")
APPROXIMATE = ("grood-ivf", "faiss-ivf-author", "faiss-ivf-tuned", "faiss-hnsw")
RSS_TARGET_GB = 12.0
RECALL_TARGET = 0.98
IVF_TIME_TARGET_S = 600.0
SHARD_ROWS = 65536




# --------------------------------------------------------------------------------------- data
def build_dataset(folder: Path, train: int, queries: int, dim: int, classes: int, seed: int) -> None:
    """``train.npy [train, dim]``, ``labels.npy``, ``queries.npy [queries, dim]``, ``is_id.npy`` in ``folder``,
    written shard by shard (at most :data:`SHARD_ROWS` rows in memory); ``done.json`` last, so a folder with
    it is complete and is reused."""
    from grood.method.synthetic import clustered_vectors

    spec = {"train": train, "queries": queries, "dim": dim, "classes": classes, "seed": seed}
    marker = folder / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        print(f"(reusing the features in {folder})", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    subspace = min(dim, max(16, min(128, classes // 8 + 16)))
    shape = {"subspace_dim": subspace, "centre_scale": 3.0, "cluster_std": 1.0, "noise_std": 0.1}
    _, _, centres, basis = clustered_vectors(classes, dim, num_clusters=classes, seed=seed, **shape)
    start = time.perf_counter()
    features = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.float32, shape=(train, dim))
    labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.int64, shape=(train,))
    for shard, first in enumerate(range(0, train, SHARD_ROWS)):
        rows = min(SHARD_ROWS, train - first)
        x, y, _, _ = clustered_vectors(rows, dim, seed=seed + 1000 + shard, centres=centres, basis=basis, **shape)
        features[first : first + rows], labels[first : first + rows] = x.numpy(), y.numpy()
    if (np.bincount(labels, minlength=classes) == 0).any():
        labels[:classes] = np.arange(classes)  # every class needs a training row (tiny sizes only)
    features.flush(), labels.flush()
    del features, labels
    num_id = (2 * queries) // 3
    out = np.lib.format.open_memmap(folder / "queries.npy", mode="w+", dtype=np.float32, shape=(queries, dim))
    out[:num_id] = clustered_vectors(num_id, dim, seed=seed + 1, centres=centres, basis=basis, **shape)[0].numpy()
    centre = (centres.mean(dim=0) @ basis).numpy()  # the training mean, up to sampling noise
    generator = np.random.default_rng(seed + 2)
    for first in range(num_id, queries, SHARD_ROWS):
        rows = min(SHARD_ROWS, queries - first)
        out[first : first + rows] = centre + 2.0 * generator.standard_normal((rows, dim), dtype=np.float32)
    out.flush()
    del out
    np.save(folder / "is_id.npy", np.arange(queries) < num_id)
    marker.write_text(json.dumps(spec))
    size = (train + queries) * dim * 4 / 2**30
    print(f"(features written shard by shard in {time.perf_counter() - start:.1f} s: {size:.1f} GB in {folder})",
          flush=True)


def _open(folder: Path) -> dict[str, torch.Tensor]:
    """The data set as read-only memory maps (as the feature cache gives them)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "The given NumPy array is not writable"
        return {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="r"))
                for name in ("train", "labels", "queries")}


# ---------------------------------------------------------------------------------- children
def run_child(spec: dict) -> dict:
    """One method in this (fresh) process over the memory-mapped data; returns times and peak RSS, and saves
    the true distances of the returned neighbours of the recall queries."""
    from grood.featureset import FeatureSet

    folder = Path(spec["folder"])
    data = _open(folder)
    train, labels, queries = data["train"], data["labels"], data["queries"]
    sample = torch.from_numpy(np.load(folder / "recall_rows.npy"))
    method, classes = spec["method"], spec["classes"]
    result: dict = {"method": method}
    started = time.perf_counter()
    if method in ("grood-exact", "grood-ivf", "recall-reference"):
        from grood.method import GROOD

        if method == "grood-exact":
            detector = GROOD(index="torch", index_params={"norm_pruning": True, "storage": "float16"})
        elif method == "grood-ivf":
            params = {k: spec[k] for k in ("nlist", "nprobe") if spec[k] is not None}
            detector = GROOD(index="ivf", index_params={**params, "storage": "float16"})
        else:
            detector = GROOD(variant="gradient_l1")  # prototypes only: the exact search streams the gradients
        detector.fit(train, labels, num_classes=classes, ood_prototype="mean")
        result["fit_s"] = time.perf_counter() - started
        if method == "recall-reference":
            from grood.method.neighbours.recall import exact_nearest_distances

            logits = torch.zeros(1, 1).expand(train.shape[0], 1)  # not read: every row is indexed
            detector.num_indexed = train.shape[0]
            gradients = detector.gradients(queries[sample])
            distances = exact_nearest_distances(detector, FeatureSet(logits, train, labels), gradients)
            np.save(folder / "distances-exact.npy", distances.numpy())
            result["score_s"] = time.perf_counter() - started - result["fit_s"]
        else:
            started = time.perf_counter()
            scores = detector.score(queries)
            result["score_s"] = time.perf_counter() - started
            result["peak_rss_mb"] = peak_rss_mb()
            np.save(folder / f"scores-{method}.npy", scores.numpy())
            if method == "grood-ivf":
                index = detector.index
                result.update(nlist=index.nlist, nprobe=index.nprobe, num_cells=index.num_cells)
                distances = index.search(detector.gradients(queries[sample]), 1)[0][:, 0]
                np.save(folder / f"distances-{method}.npy", distances.numpy())
    elif method == "knn":
        from grood.detectors.distance_based import KNN
        from grood.featureset import LinearHead

        def feature_set(features: torch.Tensor) -> FeatureSet:
            count = features.shape[0]
            return FeatureSet(torch.zeros(1, classes).expand(count, classes), features,
                              torch.zeros(1, dtype=torch.long).expand(count))

        detector = KNN(k=spec["knn_k"])
        detector.fit(feature_set(train), LinearHead(torch.zeros(classes, train.shape[1]), torch.zeros(classes)))
        result["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        scores = detector.score(feature_set(queries))
        result["score_s"] = time.perf_counter() - started
        result["peak_rss_mb"] = peak_rss_mb()
        np.save(folder / f"scores-{method}.npy", scores.numpy())
    elif method.startswith("faiss-"):
        result.update(_run_faiss(method, spec, train, labels, queries, sample, folder))
    else:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    result["total_s"] = result["fit_s"] + result["score_s"]
    result.setdefault("peak_rss_mb", peak_rss_mb())
    return result


def _run_faiss(method: str, spec: dict, train: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
               sample: torch.Tensor, folder: Path) -> dict:
    """A bare FAISS index over GROOD's gradients (computed a chunk at a time): fit = gradients + train + add,
    score = query gradients + search."""
    from grood.method import GROOD
    from grood.method.faiss_loader import import_faiss
    from grood.method.neighbours.base import _direct_distances
    from grood.method.neighbours.faiss_ivf import author_nlist, author_train_batches
    from grood.method.streaming import RowReader

    faiss = import_faiss()
    started = time.perf_counter()
    detector = GROOD(variant="gradient_l1").fit(train, labels, num_classes=spec["classes"], ood_prototype="mean")
    count, dim = train.shape
    reader = RowReader(train)
    chunk = 8192

    def gradients(rows: slice | torch.Tensor) -> np.ndarray:
        h = reader.rows(rows) if isinstance(rows, slice) else reader.take(rows)
        return np.ascontiguousarray(detector._gradient(h, None).numpy())

    info: dict = {}
    if method == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efSearch = 128
        info["params"] = "M=32, efSearch=128"
    else:
        if method == "faiss-ivf-author":
            batches = author_train_batches(math.ceil(count / 200))
            nlist, nprobe, training = author_nlist(batches), 4, slice(0, min(count, 200 * batches))
        else:
            nlist, nprobe = max(1, round(math.sqrt(count))), spec["faiss_nprobe"]
            training = torch.sort(torch.randperm(count, generator=torch.Generator().manual_seed(0))[: 64 * nlist]).values
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.train(gradients(training))
        index.nprobe = nprobe
        info.update(nlist=nlist, nprobe=nprobe)
    for first in range(0, count, chunk):
        index.add(gradients(slice(first, min(first + chunk, count))))
    info["fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    query_reader = RowReader(queries)
    for first in range(0, queries.shape[0], chunk):
        h = query_reader.rows(slice(first, min(first + chunk, queries.shape[0])))
        index.search(np.ascontiguousarray(detector._gradient(h, None).numpy()), 1)
    info["score_s"] = time.perf_counter() - started
    info["peak_rss_mb"] = peak_rss_mb()
    # untimed: the true distances of the neighbours returned to the recall queries
    query_gradients = detector.gradients(queries[sample])
    found = torch.from_numpy(index.search(np.ascontiguousarray(query_gradients.numpy()), 1)[1][:, 0])
    vectors = torch.from_numpy(gradients(found.clamp(min=0)))
    distances = _direct_distances(query_gradients, vectors, torch.arange(found.shape[0]).unsqueeze(1), 2**22)[:, 0]
    np.save(folder / f"distances-{method}.npy", torch.where(found >= 0, distances, torch.inf).numpy())
    return info


def measure(method: str, folder: Path, args: argparse.Namespace) -> dict:
    """``method``'s times and peak RSS from its own subprocess; each success is also written to
    ``measured-<method>.json`` in ``folder`` (with its settings and the git commit), which ``--resume``
    reads back instead of measuring again."""
    spec = {"method": method, "folder": str(folder), "classes": args.classes, "nlist": args.nlist,
            "nprobe": args.nprobe, "knn_k": args.knn_k, "faiss_nprobe": args.faiss_nprobe}
    record = folder / f"measured-{method}.json"
    if args.resume and record.is_file():
        earlier = json.loads(record.read_text())
        if earlier.get("spec") == spec:
            print(f"  ({method}: measured earlier, {earlier['finished']}, commit {earlier['commit']}; --resume "
                  "reuses it)", flush=True)
            return earlier["result"]
    command = [sys.executable, "-m", "grood.cli.bench_true_size", "--child", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"method": method, "error": (completed.stderr.strip().splitlines() or ["(no output)"])[-1]}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    from grood.io import atomic_write
    from grood.provenance import git_commit

    with atomic_write(record) as handle:
        json.dump({"spec": spec, "result": result, "commit": git_commit() or "unknown",
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, handle)
    return result


# ------------------------------------------------------------------------------------- table
def main(argv: list[str] | None = None) -> int:
    """``grood bench-true-size [arguments]``: prints the table; exit status 0."""
    _bench(argv)
    return 0


def _bench(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="the 200,000-row variant (default: the true size)")
    parser.add_argument("--train", type=int, default=None, help=f"training rows (default {IMAGENET_TRAIN:,})")
    parser.add_argument("--queries", type=int, default=130_000, help="query rows, 2/3 ID and 1/3 OOD")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--nlist", type=int, default=None, help="grood IVF cells (default: the library's)")
    parser.add_argument("--nprobe", type=int, default=None, help="grood IVF cells probed (default: the library's)")
    parser.add_argument("--faiss-nprobe", type=int, default=32, help="probes of faiss-ivf-tuned")
    parser.add_argument("--knn-k", type=int, default=50)
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the features are written")
    parser.add_argument("--keep", action="store_true", help="keep the features (reused by the next run)")
    parser.add_argument("--resume", action="store_true",
                        help="with --keep: reuse each method measured by an earlier run with the same settings "
                             "(its measured-<method>.json in the features folder) instead of measuring it again")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    train = args.train or (200_000 if args.quick else IMAGENET_TRAIN)
    folder = args.workdir / f"grood-true-size-{train}x{args.dim}-{args.queries}q-seed{args.seed}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; python {sys.version.split()[0]}")
    print(f"== {train:,} train x {args.dim} dims, {args.classes} classes, {args.queries:,} queries ==", flush=True)
    try:
        build_dataset(folder, train, args.queries, args.dim, args.classes, args.seed)
        recall_rows = np.sort(np.random.default_rng(args.seed).permutation(args.queries)[: args.recall_queries])
        np.save(folder / "recall_rows.npy", recall_rows)
        is_id = np.load(folder / "is_id.npy")[recall_rows]
        results = {}
        for method in args.methods:  # the methods first: their times and memory even if the reference is cut short
            r = results[method] = measure(method, folder, args)
            if "error" in r:
                print(f"  {method:<16} FAILED: {r['error']}", flush=True)
                continue
            print(f"  {method:<16} fit {r['fit_s']:8.1f} s  score {r['score_s']:8.1f} s  total {r['total_s']:8.1f} s  "
                  f"peak RSS {r['peak_rss_mb'] / 1024:6.2f} GB", flush=True)
        approximate = [m for m in args.methods if m in APPROXIMATE and "error" not in results[m]]
        if approximate:
            reference = measure("recall-reference", folder, args)
            if "error" in reference:
                raise SystemExit(f"the exact search of the recall queries failed: {reference['error']}")
            print(f"  (exact search of the {len(recall_rows)} recall queries: {reference['total_s']:.1f} s, untimed)",
                  flush=True)
            exact = np.load(folder / "distances-exact.npy")
            for method in approximate:
                found = np.load(folder / f"distances-{method}.npy") <= exact * (1 + 1e-4)
                results[method]["recall"] = (found.mean(), found[is_id].mean(), found[~is_id].mean())
                print("  {:<16} recall@1 {:.4f} (ID {:.4f}, OOD {:.4f})".format(method, *results[method]["recall"]),
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print("\n| method | fit (s) | score (s) | total (s) | peak RSS (GB) | recall@1 (ID / OOD) |")
    print("|---|---:|---:|---:|---:|---|")
    for method, r in results.items():
        if "error" in r:
            print(f"| {method} | failed | | | | |")
            continue
        recall = "-" if "recall" not in r else "{:.4f} ({:.4f} / {:.4f})".format(*r["recall"])
        extra = "" if "nlist" not in r else f" (nlist {r['nlist']}, nprobe {r['nprobe']})"
        print(f"| {method}{extra} | {r['fit_s']:.1f} | {r['score_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['peak_rss_mb'] / 1024:.2f} | {recall} |")
    print()
    for method, r in results.items():
        if "error" in r or method not in ("grood-exact", "grood-ivf", "knn"):
            continue
        rss = r["peak_rss_mb"] / 1024
        print(f"{method:<12} peak RSS {rss:6.2f} GB  target <= {RSS_TARGET_GB:g} GB: "
              f"{'met' if rss <= RSS_TARGET_GB else 'NOT met'}")
    if "grood-ivf" in results and "recall" in results["grood-ivf"]:
        r = results["grood-ivf"]
        met = r["recall"][0] >= RECALL_TARGET and r["total_s"] <= IVF_TIME_TARGET_S
        print(f"GROOD IVF    recall@1 {r['recall'][0]:.4f} in {r['total_s']:.1f} s  target >= {RECALL_TARGET} in <= "
              f"{IVF_TIME_TARGET_S:g} s: {'met' if met else 'NOT met'}")
    if "grood-exact" in results and "error" not in results["grood-exact"]:
        print(f"GROOD exact  completed in {results['grood-exact']['total_s']:.1f} s (no time target)")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Speed and memory of the GROOD method library on synthetic clustered features (prints a table).

Not a test: it prints figures. For each scale it times, on the same features:

- ``faiss-flat``: a bare FAISS ``IndexFlatL2`` add + k=1 search of the same sizes (the floor for exact);
- ``grood-exact``: ``GROOD(index="exact")`` fit + score, the default: the fastest exact search for the device
  (:func:`grood.method.neighbours.exact_choice`; on a CPU the torch search with exact norm pruning);
- ``grood-faiss-flat``, ``grood-ivf``, ``grood-torch``: ``GROOD(index=...)`` with FAISS flat, the IVF index
  and the plain torch search;
- ``grood-ivf-int8``: the IVF index with ``scan="int8"`` (int8 codes rank each probed cell, the candidates'
  true distances decide; CPU only);
- ``knn``: pytorch-ood's ``KNN`` detector (``fit_features`` + ``predict_features``, its default k=50,
  normalised features, scikit-learn brute-force search);
- ``eq3-product``: the ``[N, D] x [D, C]`` product of the training features with the class prototypes
  alone, which GROOD's fit needs for eq. 3 (every class distance of every training feature). It bounds
  what any exact implementation can reach: GROOD exact / bare FAISS >= (FAISS + product) / FAISS, and
  exact / IVF <= exact / product (the IVF index's fit computes eq. 3 too). Both bounds are printed.

``--repeat R`` runs all methods R times, round by round, and keeps each method's fastest run: on a
shared machine, a single run can be 20% slower than the same run a minute later.

Each measurement runs in its own subprocess (``--child``) that loads the features from ``.npy`` files
written once by the parent, so each gets a fresh process. Memory: ``peak RSS`` is the child's own
``VmHWM`` (:mod:`grood.peak_memory`: peak resident set size, features and torch/faiss libraries included); ``extra`` is that
peak minus the resident size right after loading the features (VmRSS), i.e. about the memory the
method itself added at its peak (transient copies made while loading can hide part of it).
IVF recall@1 (both scans) is measured (untimed) on a random subset of the queries: the fraction whose nearest
training gradient under IVF is the exact one, or one at the same distance (relative 1e-4: a tie).
It is printed for all, ID and OOD queries: an OOD query's gradient lies far from every training
gradient, among many near-equidistant ones, so IVF often returns another of them (the relative
distance excess of the misses is printed too).

Usage::

    grood bench-method --quick            # CIFAR scale only
    grood bench-method                    # CIFAR and ImageNet-like scales
    grood bench-method --scales cifar --cifar-queries 20000 --skip knn
    grood bench-method --repeat 3                 # fastest of 3 rounds per method

Timings are wall-clock seconds on whatever cores the machine gives (shared machines give noisy numbers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from grood.peak_memory import peak_rss_mb

METHODS = ("faiss-flat", "grood-exact", "grood-faiss-flat", "grood-ivf", "grood-ivf-int8", "grood-torch", "knn")
#: The IVF runs: method -> the ``scan`` of its index.
IVF_SCANS = {"grood-ivf": "float32", "grood-ivf-int8": "int8"}

#: Issue 12's targets, as ratios of one run: (label, numerator, denominator, comparison, bound).
TARGETS = (
    ("GROOD exact / bare FAISS flat", "grood-exact", "faiss-flat", "<=", 1.0),
    ("GROOD exact / GROOD IVF", "grood-exact", "grood-ivf", ">=", 8.0),
    ("GROOD exact / GROOD IVF int8", "grood-exact", "grood-ivf-int8", ">=", 8.0),
    ("pytorch-ood KNN / GROOD exact", "knn", "grood-exact", ">=", 3.0),
)
IVF_RECALL_TARGET = 0.98




def _current_rss_mb() -> float:
    """This process's resident set size now (from /proc; the peak where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


# --------------------------------------------------------------------------------------- data
def make_features(train: int, queries: int, dim: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    """Clustered ID features (neural-collapse-like) plus queries: 2/3 ID, 1/3 OOD."""
    from grood.method.synthetic import clustered_vectors

    subspace = min(dim, max(16, min(128, classes // 8 + 16)))
    shape = {"subspace_dim": subspace, "centre_scale": 3.0, "cluster_std": 1.0, "noise_std": 0.1}
    x, y, centres, basis = clustered_vectors(train, dim, num_clusters=classes, seed=seed, **shape)
    num_id = (2 * queries) // 3
    q_id, _, _, _ = clustered_vectors(num_id, dim, seed=seed + 1, centres=centres, basis=basis, **shape)
    generator = torch.Generator().manual_seed(seed + 2)
    q_ood = x.mean(dim=0) + 2.0 * torch.randn(queries - num_id, dim, generator=generator)
    return {
        "train": x.numpy(),
        "labels": y.numpy(),
        "queries": torch.cat([q_id, q_ood]).numpy(),
        "is_id": np.concatenate([np.ones(num_id, bool), np.zeros(queries - num_id, bool)]),
    }


# ---------------------------------------------------------------------------------- children
def run_child(spec: dict) -> dict:
    """One measurement in this (fresh) process; returns times, memory and where the scores went."""
    import sklearn.neighbors  # noqa: F401

    from grood.method.faiss_loader import import_faiss

    faiss = import_faiss()  # imported (and torch's thread pool started) before any timing, for every method

    torch.ones(64, 64) @ torch.ones(64, 64)
    folder = Path(spec["folder"])
    train = torch.from_numpy(np.load(folder / "train.npy"))
    labels = torch.from_numpy(np.load(folder / "labels.npy")).long()
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    rss_loaded = _current_rss_mb()
    method = spec["method"]
    result: dict = {"method": method}
    scores = None
    if method == "faiss-flat":
        start = time.perf_counter()
        index = faiss.IndexFlatL2(train.shape[1])
        index.add(train.numpy())
        result["fit_s"] = time.perf_counter() - start
        start = time.perf_counter()
        index.search(queries.numpy(), 1)
        result["score_s"] = time.perf_counter() - start
    elif method.startswith("grood-"):
        from grood.method import GROOD

        kind = "ivf" if method in IVF_SCANS else method.split("-", 1)[1].replace("-", "_")
        params = {}
        if kind == "ivf":
            chosen = (("nlist", spec["nlist"]), ("nprobe", spec["nprobe"]), ("routing_dim", spec["routing_dim"]))
            params = {k: v for k, v in chosen if v is not None}
            params["scan"] = IVF_SCANS[method]
        detector = GROOD(index=kind, index_params=params, device=spec["device"])
        start = time.perf_counter()
        detector.fit(train, labels, num_classes=spec["classes"], ood_prototype="mean")
        result["fit_s"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = detector.score(queries)
        result["score_s"] = time.perf_counter() - start
        result["index_built"] = detector.index.kind + ("+norm_pruning" if getattr(detector.index, "norm_pruning", False)
                                                       else "")
        if getattr(detector.index, "compared_fraction", None) is not None:  # norm-pruned exact search, IVF
            result["compared_fraction"] = detector.index.compared_fraction  # over the timed score
        if kind == "ivf":
            index = detector.index
            result["nlist"], result["nprobe"], result["num_cells"] = index.nlist, index.nprobe, index.num_cells
            result["largest_cell"] = index.largest_list_fraction()
            # untimed: what the IVF search costs besides scanning its cells (query gradients, routing)
            from grood.method.kmeans import nearest_cells

            start = time.perf_counter()
            nearest_cells(detector.gradients(queries), index.centroids, index.nprobe, index.projection)
            result["gradients_and_routing_s"] = time.perf_counter() - start
        if method in ("grood-exact", "grood-faiss-flat", *IVF_SCANS):  # untimed: nearest training gradients of a subset
            subset = torch.from_numpy(np.load(folder / "recall_rows.npy"))
            distances, neighbours = detector.index.search(detector.gradients(queries[subset]), 1)
            np.save(folder / f"neighbours-{method}.npy", neighbours[:, 0].cpu().numpy())
            np.save(folder / f"distances-{method}.npy", distances[:, 0].cpu().numpy())
    elif method == "eq3-product":
        # the one product GROOD's fit cannot avoid: every training feature against every class prototype
        # (eq. 3 needs all C distances), in the row blocks grood.method.ncp uses
        from grood.method.ncp import ROW_BLOCK

        prototypes = torch.randn(spec["classes"], train.shape[1], generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for row in range(0, train.shape[0], ROW_BLOCK):
            torch.mm(train[row : row + ROW_BLOCK], prototypes.T)
        result["fit_s"] = time.perf_counter() - start
        result["score_s"] = 0.0
    elif method == "knn":
        from pytorch_ood.detector import KNN

        detector = KNN(None, k=spec["knn_k"])
        start = time.perf_counter()
        detector.fit_features(train, labels)
        result["fit_s"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = -detector.predict_features(queries).float()  # pytorch-ood: higher = OOD
        result["score_s"] = time.perf_counter() - start
    else:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    result["total_s"] = result["fit_s"] + result["score_s"]
    result["peak_rss_mb"] = peak_rss_mb()
    result["extra_rss_mb"] = result["peak_rss_mb"] - rss_loaded
    if scores is not None:
        np.save(folder / f"scores-{method}.npy", scores.cpu().numpy())
    return result


def measure(method: str, folder: Path, args: argparse.Namespace, classes: int) -> dict:
    spec = {"method": method, "folder": str(folder), "classes": classes, "nlist": args.nlist,
            "nprobe": args.nprobe, "routing_dim": args.routing_dim, "knn_k": args.knn_k, "device": args.device}
    completed = subprocess.run(
        [sys.executable, "-m", "grood.cli.bench_method", "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- table
def auroc(scores: np.ndarray, is_id: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_id, scores))


def bench_scale(name: str, train: int, queries: int, dim: int, classes: int, args: argparse.Namespace) -> None:
    print(f"\n== {name}: {train} train x {dim} dims, {classes} classes, {queries} queries ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="grood-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        data = make_features(train, queries, dim, classes, seed=args.seed)
        for key, value in data.items():
            np.save(folder / f"{key}.npy", value)
        recall_rows = np.sort(np.random.default_rng(args.seed).permutation(queries)[: min(queries, args.recall_queries)])
        np.save(folder / "recall_rows.npy", recall_rows)
        features_mb = (data["train"].nbytes + data["queries"].nbytes) / 2**20
        print(f"(features generated in {time.perf_counter() - start:.1f} s; train + queries = {features_mb:.0f} MB)")
        results: dict[str, dict] = {}
        for round_number in range(1, args.repeat + 1):
            # methods interleaved round by round, so that a slow spell of a shared machine hits all of them;
            # each method keeps its fastest round (its run least disturbed by other load)
            if args.repeat > 1:
                print(f" round {round_number} of {args.repeat}", flush=True)
            for method in (*METHODS, "eq3-product"):
                if method in args.skip:
                    continue
                r = measure(method, folder, args, classes)
                print(f"  {method:<12} fit {r['fit_s']:8.2f} s  score {r['score_s']:8.2f} s  total {r['total_s']:8.2f} s  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MB  extra {r['extra_rss_mb']:7.0f} MB", flush=True)
                if method not in results or r["total_s"] < results[method]["total_s"]:
                    results[method] = r
        product = results.pop("eq3-product", None)
        scores = {m: np.load(folder / f"scores-{m}.npy") for m in results if (folder / f"scores-{m}.npy").exists()}
        neighbours = {m: np.load(folder / f"neighbours-{m}.npy") for m in results if (folder / f"neighbours-{m}.npy").exists()}
        distances = {m: np.load(folder / f"distances-{m}.npy") for m in results if (folder / f"distances-{m}.npy").exists()}

    print(f"\n| {name} | fit (s) | score (s) | total (s) | peak RSS (MB) | extra RSS (MB) | AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, r in results.items():
        quality = f"{auroc(scores[method], data['is_id']):.4f}" if method in scores else "-"
        print(f"| {method} | {r['fit_s']:.2f} | {r['score_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['extra_rss_mb']:.0f} | {quality} |")

    def ratio(a: str, b: str) -> str:
        return f"{results[a]['total_s'] / results[b]['total_s']:.2f}" if a in results and b in results else "n/a"

    print()
    if "grood-exact" in results:
        print(f"GROOD exact ran as: {results['grood-exact'].get('index_built')}")
    for label, top, bottom, comparison, bound in TARGETS:
        if top in results and bottom in results:
            value = results[top]["total_s"] / results[bottom]["total_s"]
            met = value <= bound if comparison == "<=" else value >= bound
            print(f"{label:<32} {value:6.2f}  target {comparison} {bound:g}: {'met' if met else 'NOT met'}")
        else:
            print(f"{label:<32}    n/a  target {comparison} {bound:g}: not measured (skipped)")
    print(f"{'GROOD FAISS flat / bare FAISS':<32} {ratio('grood-faiss-flat', 'faiss-flat')}")
    print(f"{'GROOD torch / bare FAISS':<32} {ratio('grood-torch', 'faiss-flat')}")
    if product is not None and "faiss-flat" in results:
        # GROOD exact = bare FAISS (same add, same search) + eq. 3 for every training feature + the rest
        flat = results["faiss-flat"]["total_s"]
        print(f"eq. 3's [{train} x {dim}] x [{dim} x {classes}] product alone: {product['fit_s']:.2f} s, so GROOD exact "
              f"/ bare FAISS flat >= {(flat + product['fit_s']) / flat:.2f} on this machine")
        if "grood-exact" in results:
            print(f"  and GROOD exact / GROOD IVF <= {results['grood-exact']['total_s'] / product['fit_s']:.1f} "
                  "(IVF's fit computes eq. 3 too)")
    for method in IVF_SCANS:
        if method in results and "grood-exact" in results:
            _print_ivf_floor(method, results)
    _print_exact_agreement(distances, results)
    for method in IVF_SCANS:
        if method in neighbours and "grood-exact" in neighbours:
            _print_ivf_recall(method, neighbours, distances, results[method], data["is_id"][recall_rows])


def _print_ivf_floor(method: str, results: dict[str, dict]) -> None:
    """The IVF's fit, query gradients and routing: what any scan of its cells comes on top of."""
    ivf, label = results[method], f"GROOD IVF ({IVF_SCANS[method]} scan)"
    floor = ivf["fit_s"] + ivf["gradients_and_routing_s"]
    print(f"{label}'s fit ({ivf['fit_s']:.2f} s) with the query gradients and routing "
          f"({ivf['gradients_and_routing_s']:.2f} s), without any scan of its cells: {floor:.2f} s, so GROOD "
          f"exact / {label} <= {results['grood-exact']['total_s'] / floor:.1f}, whatever its scan")


def _print_ivf_recall(method: str, neighbours: dict[str, np.ndarray], distances: dict[str, np.ndarray], r: dict,
                      is_id: np.ndarray) -> None:
    """recall@1: IVF returned the exact nearest training gradient, or one at the same distance (a tie)."""
    same = neighbours[method] == neighbours["grood-exact"]
    exact_d, ivf_d = distances["grood-exact"], distances[method]
    found = same | (np.abs(ivf_d - exact_d) <= 1e-4 * exact_d)
    verdict = "met" if found.mean() >= IVF_RECALL_TARGET else "NOT met"
    print(f"IVF ({IVF_SCANS[method]} scan) recall@1 (target >= {IVF_RECALL_TARGET}: {verdict}) on {len(found)} queries: "
          f"{found.mean():.4f} all, {found[is_id].mean():.4f} ID, {found[~is_id].mean():.4f} OOD   (nlist={r['nlist']}, "
          f"{r['num_cells']} cells after balancing, largest {100 * r['largest_cell']:.1f}% of the vectors, "
          f"nprobe={r['nprobe']}); the norm bound left {100 * r['compared_fraction']:.1f}% of the probed cells' pairs "
          "to compare")
    if (~found).any():
        excess = (ivf_d - exact_d)[~found] / exact_d[~found]
        print(f"  where IVF missed, its distance exceeds the exact one by {np.median(excess):.2e} (median, relative)")


def _print_exact_agreement(distances: dict[str, np.ndarray], results: dict[str, dict]) -> None:
    """GROOD exact (norm-pruned torch search on a CPU) is exact: its nearest distances must equal FAISS
    flat's (float32 rounding aside)."""
    if "compared_fraction" in results.get("grood-exact", {}):
        print(f"GROOD exact's norm pruning compared {100 * results['grood-exact']['compared_fraction']:.1f}% of the "
              "(query, training gradient) pairs")
    if "grood-exact" in distances and "grood-faiss-flat" in distances:
        flat_d, exact_d = distances["grood-faiss-flat"], distances["grood-exact"]
        worst = np.max(np.abs(exact_d - flat_d) / np.maximum(flat_d, 1e-12))
        print(f"GROOD exact against FAISS flat on {len(flat_d)} queries: largest relative distance difference "
              f"{worst:.1e} (exact search: float32 rounding only)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CIFAR scale only")
    parser.add_argument("--scales", nargs="+", choices=("cifar", "imagenet"), default=None)
    parser.add_argument("--cifar-train", type=int, default=50_000)
    parser.add_argument("--cifar-queries", type=int, default=60_000)
    parser.add_argument("--cifar-dim", type=int, default=512)
    parser.add_argument("--cifar-classes", type=int, default=10)
    parser.add_argument("--imagenet-train", type=int, default=200_000)
    parser.add_argument("--imagenet-queries", type=int, default=130_000,
                        help="ImageNet-like queries (default: about OpenOOD v1.5's ImageNet-1k test + OOD lists)")
    parser.add_argument("--imagenet-dim", type=int, default=2048)
    parser.add_argument("--imagenet-classes", type=int, default=1000)
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: the library's)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells probed (default: the library's)")
    parser.add_argument("--routing-dim", type=int, default=None,
                        help="IVF routing dimensions of the gradient directions (default: the library's)")
    parser.add_argument("--knn-k", type=int, default=50, help="k of pytorch-ood's KNN (its default: 50)")
    parser.add_argument("--skip", nargs="*", default=[], choices=(*METHODS, "eq3-product"),
                        help="methods to leave out (eq3-product: the lower-bound measurement of eq. 3's product)")
    parser.add_argument("--recall-queries", type=int, default=5000, help="queries used for IVF recall@1")
    parser.add_argument("--device", default="cpu", help="device of GROOD's gradients / torch index (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all methods; each keeps its fastest (default 1; 3 on a shared machine)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1; got {args.repeat}")
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    scales = args.scales or (["cifar"] if args.quick else ["cifar", "imagenet"])
    from grood.method.faiss_loader import bundled_openblas, import_faiss, openblas_core

    faiss = import_faiss()
    library = bundled_openblas()
    blas = f"bundled OpenBLAS on {openblas_core(library)!r} kernels" if library else "no bundled OpenBLAS"
    print(f"torch {torch.__version__}, faiss {faiss.__version__} ({blas}), {torch.get_num_threads()} torch threads, "
          f"{faiss.omp_get_max_threads()} faiss threads; GROOD device {args.device}; python {sys.version.split()[0]}")
    if "cifar" in scales:
        bench_scale("CIFAR", args.cifar_train, args.cifar_queries, args.cifar_dim, args.cifar_classes, args)
    if "imagenet" in scales:
        bench_scale("ImageNet-like", args.imagenet_train, args.imagenet_queries, args.imagenet_dim,
                    args.imagenet_classes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

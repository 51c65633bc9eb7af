"""The paper's figures from arrays and small DataFrames, written as PNG and PDF (atomic writes).

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot, no
display, no global backend switch), so they work on headless machines and in tests.

- Figure 2: t-SNE of penultimate features (with the OOD prototype) and of GROOD's gradients (eq. 5).
- Figure 3: AUROC per training epoch, near and far, one line per method.
- Figure 4: density of scores on ID, near-OOD and far-OOD data, one panel per benchmark.
- Figure 5: AUROC against the k of the k-th nearest neighbour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grood.io import atomic_write
from grood.reporting.tables import DISPLAY_NAMES

FORMATS = ("png", "pdf")
OOD_COLOUR = "0.6"
GROUP_STYLES = {"id": ("ID", "tab:blue"), "near": ("Near-OOD", "tab:orange"), "far": ("Far-OOD", "tab:green")}


def _array(values: Any, name: str, ndim: int) -> np.ndarray:
    """numpy array from numpy / torch / lists; checks the number of dimensions."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {array.shape}")
    return array


def new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, out_dir: str | os.PathLike, name: str, dpi: int = 200) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``<name>.pdf`` atomically; returns the paths."""
    paths = []
    for extension in FORMATS:
        path = Path(out_dir) / f"{name}.{extension}"
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format=extension, dpi=dpi)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- Figure 2
def tsne_embed(points: np.ndarray, perplexity: float = 30.0, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """``[N, D]`` -> ``[N, 2]`` with :class:`sklearn.manifold.TSNE` (PCA init, fixed seed, ``max_iter`` >= 250)."""
    from sklearn.manifold import TSNE

    points = _array(points, "points", 2).astype(np.float64)
    if perplexity >= len(points):
        raise ValueError(f"t-SNE perplexity {perplexity} must be below the number of points {len(points)}; "
                         "lower perplexity or subsample less")
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter)
    return tsne.fit_transform(points)


def subsample_indices(n: int, subsample: int | None, seed: int = 0) -> np.ndarray:
    """All of ``range(n)``, or ``subsample`` of them drawn without replacement (seeded), sorted."""
    if subsample is None or subsample >= n:
        return np.arange(n)
    if subsample <= 0:
        raise ValueError(f"subsample must be positive, got {subsample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=subsample, replace=False))


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
    """Distinct RGB colours for ID classes, none of them grey (grey is the OOD points' colour):
    matplotlib's ``tab10`` without its grey plus navy for up to 10 classes, ``tab20`` without its two
    greys beyond (colours repeat past 18 classes)."""
    if num_classes <= 10:
        palette = [colour for index, colour in enumerate(colormaps["tab10"].colors) if index != 7]
        return [tuple(colour) for colour in palette] + [(0.0, 0.0, 0.46)]
    return [tuple(colour) for index, colour in enumerate(colormaps["tab20"].colors) if index not in (14, 15)]


def _scatter_by_label(axes: Any, embedding: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None) -> None:
    ood = labels < 0
    axes.scatter(embedding[ood, 0], embedding[ood, 1], s=4, c=OOD_COLOUR, alpha=0.5, label="OOD", linewidths=0)
    classes = np.unique(labels[~ood])
    colours = class_colours(len(classes))
    for position, label in enumerate(classes):
        chosen = labels == label
        name = class_names[label] if class_names is not None else f"class {label}"
        axes.scatter(embedding[chosen, 0], embedding[chosen, 1], s=4, color=colours[position % len(colours)],
                     label=name if len(classes) <= 20 else None, linewidths=0)
    axes.set_xticks([])
    axes.set_yticks([])


def figure_tsne(
    features: Any,
    gradients: Any,
    labels: Any,
    ood_prototype: Any,
    out_dir: str | os.PathLike,
    name: str = "figure2",
    subsample: int | None = 5000,
    perplexity: float = 30.0,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    max_iter: int = 1000,
) -> list[Path]:
    """Figure 2: (a) t-SNE of penultimate features with the OOD prototype marked; (b) t-SNE of gradients.

    Args:
        features: ``[N, D]`` penultimate features of ID and OOD test images.
        gradients: ``[N, D]`` their eq. 5 gradients ``∇H(h)`` (same rows as ``features``).
        labels: ``[N]`` ID class, ``-1`` for OOD (coloured by class; OOD in grey).
        ood_prototype: ``[D]`` ``p_ood`` (embedded together with the features, drawn as a star).
        subsample: at most this many rows (seeded draw); None = all.
        perplexity, max_iter: t-SNE settings (perplexity below the number of rows).
    Returns the PNG and PDF paths.
    """
    features = _array(features, "features", 2)
    gradients = _array(gradients, "gradients", 2)
    labels = _array(labels, "labels", 1).astype(int)
    prototype = _array(ood_prototype, "ood_prototype", 1)
    if not (len(features) == len(gradients) == len(labels)):
        raise ValueError(f"features {features.shape}, gradients {gradients.shape} and labels {labels.shape} "
                         "must have the same number of rows")
    if prototype.shape[0] != features.shape[1]:
        raise ValueError(f"ood_prototype has {prototype.shape[0]} dims, features have {features.shape[1]}")
    rows = subsample_indices(len(features), subsample, seed)
    features, gradients, labels = features[rows], gradients[rows], labels[rows]
    feature_map = tsne_embed(np.vstack([features, prototype[None, :]]), perplexity, seed, max_iter)
    gradient_map = tsne_embed(gradients, perplexity, seed, max_iter)
    figure = new_figure(10, 4.6)
    left, right = figure.subplots(1, 2)
    _scatter_by_label(left, feature_map[:-1], labels, class_names)
    left.scatter(*feature_map[-1], marker="*", s=250, c="black", edgecolors="white", label="OOD prototype",
                 zorder=3)
    left.set_title("(a) penultimate features")
    _scatter_by_label(right, gradient_map, labels, class_names)
    right.set_title(r"(b) gradients $\nabla H(h)$")
    legend = left.legend(loc="best", fontsize=6, ncols=2)
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        handle.set_sizes([120 if text.get_text() == "OOD prototype" else 20])
    return save_figure(figure, out_dir, name)


# --------------------------------------------------------------------------------------------- Figure 3
def epoch_curves(long_df: pd.DataFrame, value: str = "AUROC", epoch_column: str = "extra.epoch") -> pd.DataFrame:
    """From :func:`collect_runs` output: ``method, epoch, group, <value>`` for the near / far mean rows, the
    mean over seeds where several (the figure shows means)."""
    rows = long_df[long_df["dataset"].isin(["nearood", "farood"])].copy()
    if epoch_column not in rows.columns or rows[epoch_column].isna().any():
        raise KeyError(f"epoch_curves: every run needs {epoch_column!r} (run.json extra.epoch)")
    rows["group"] = rows["dataset"].map({"nearood": "near", "farood": "far"})
    rows["epoch"] = rows[epoch_column]
    return rows.groupby(["method", "epoch", "group"], as_index=False, sort=True)[value].mean()


def figure_auroc_per_epoch(curves: pd.DataFrame, out_dir: str | os.PathLike, name: str = "figure3",
                           value: str = "AUROC", method_names: Mapping[str, str] | None = None) -> list[Path]:
    """Figure 3: ``value`` per epoch, panel (a) near-OOD and (b) far-OOD, one line per method.

    ``curves``: columns ``method, epoch, group`` (``near`` / ``far``) and ``value``, one row per point.
    """
    missing = [c for c in ("method", "epoch", "group", value) if c not in curves.columns]
    if missing:
        raise KeyError(f"figure_auroc_per_epoch: missing column(s) {missing}")
    if curves.duplicated(["method", "epoch", "group"]).any():
        raise ValueError("figure_auroc_per_epoch: several rows for one (method, epoch, group); average seeds first")
    figure = new_figure(10, 4)
    panels = figure.subplots(1, 2, sharex=True)
    for axes, (group, title) in zip(panels, (("near", "(a) Near-OOD AUROC"), ("far", "(b) Far-OOD AUROC"))):
        part = curves[curves["group"] == group]
        for method, line in part.groupby("method", sort=False):
            line = line.sort_values("epoch")
            label = (method_names or {}).get(method, DISPLAY_NAMES.get(method, method))
            axes.plot(line["epoch"], line[value], marker="o", markersize=3,
                      linewidth=2.5 if method == "grood" else 1.2, label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"{value} (%)")
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    return save_figure(figure, out_dir, name)


# --------------------------------------------------------------------------------------------- Figure 4
def gaussian_kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``samples [N]`` at ``grid [G]`` (Scott's bandwidth ``1.06 σ N^{-1/5}``;
    a tiny bandwidth for constant samples)."""
    samples = np.asarray(samples, dtype=np.float64)
    spread = samples.std()
    bandwidth = 1.06 * spread * len(samples) ** (-0.2) if spread > 0 else 1e-3 * max(1.0, abs(samples[0]))
    density = np.zeros_like(grid, dtype=np.float64)
    for chunk in np.array_split(samples, max(1, len(samples) // 4096)):
        density += np.exp(-0.5 * ((grid[None, :] - chunk[:, None]) / bandwidth) ** 2).sum(axis=0)
    return density / (len(samples) * bandwidth * np.sqrt(2 * np.pi))


def figure_score_densities(
    scores: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    name: str = "figure4",
    max_points: int | None = 20000,
    seed: int = 0,
    score_label: str = "score (higher = more ID)",
    benchmark_names: Mapping[str, str] | None = None,
) -> list[Path]:
    """Figure 4: score densities for ID, near-OOD and far-OOD data, one panel per benchmark.

    Args:
        scores: benchmark -> {"id": [N_id], "near": [N_near], "far": [N_far]} scores (any other keys are drawn
            too, in their order). Near / far pool all OOD sets of the group.
        max_points: at most this many scores per curve (seeded draw) for the density estimate; None = all.
    """
    if not scores:
        raise ValueError("figure_score_densities: no benchmarks given")
    figure = new_figure(4 * len(scores), 3.4)
    panels = np.atleast_1d(figure.subplots(1, len(scores)))
    for axes, (benchmark, groups) in zip(panels, scores.items()):
        arrays = {}
        for group, values in groups.items():
            array = _array(values, f"scores[{benchmark!r}][{group!r}]", 1).astype(np.float64)
            if len(array) == 0 or not np.isfinite(array).all():
                raise ValueError(f"scores[{benchmark!r}][{group!r}] is empty or holds NaN / inf")
            arrays[group] = array[subsample_indices(len(array), max_points, seed)]
        low = min(a.min() for a in arrays.values())
        high = max(a.max() for a in arrays.values())
        margin = 0.05 * (high - low) if high > low else 1.0
        grid = np.linspace(low - margin, high + margin, 400)
        for group, array in arrays.items():
            label, colour = GROUP_STYLES.get(group, (group, None))
            density = gaussian_kde(array, grid)
            axes.fill_between(grid, density, alpha=0.3, color=colour)
            axes.plot(grid, density, color=colour, label=label, linewidth=1.2)
        axes.set_title((benchmark_names or {}).get(benchmark, DISPLAY_NAMES.get(benchmark, benchmark)))
        axes.set_xlabel(score_label)
        axes.set_ylabel("density")
        axes.legend(fontsize=8)
    return save_figure(figure, out_dir, name)


# --------------------------------------------------------------------------------------------- Figure 5
def figure_auroc_vs_k(data: pd.DataFrame, out_dir: str | os.PathLike, name: str = "figure5",
                      value: str = "AUROC", title: str | None = "CIFAR-10") -> list[Path]:
    """Figure 5: ``value`` against k (distance to the k-th nearest training gradient), a line per group.

    ``data``: columns ``k``, ``group`` (``near`` / ``far``), ``value``; several rows per (k, group) (seeds)
    give the mean with a std error bar.
    """
    missing = [c for c in ("k", "group", value) if c not in data.columns]
    if missing:
        raise KeyError(f"figure_auroc_vs_k: missing column(s) {missing}")
    figure = new_figure(5, 3.6)
    axes = figure.subplots()
    for group, part in data.groupby("group", sort=False):
        stats = part.groupby("k", sort=True)[value].agg(["mean", "std", "count"])
        label, colour = GROUP_STYLES.get(group, (group, None))
        error = stats["std"].where(stats["count"] > 1)
        axes.errorbar(stats.index, stats["mean"], yerr=error.fillna(0.0), marker="o", capsize=3, label=label,
                      color=colour)
    axes.set_xlabel("k (k-th nearest neighbour)")
    axes.set_ylabel(f"{value} (%)")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, out_dir, name)

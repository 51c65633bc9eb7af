"""The per-epoch Table 5 (with Figure 3) and the figures: Figure 2 (t-SNE, computed), Figure 3 from
another target's runs, Figure 4 (score densities) and Figure 5 (AUROC against k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from grood.reporting import (
    epoch_curves,
    figure_auroc_per_epoch,
    figure_auroc_vs_k,
    figure_score_densities,
    figure_tsne,
    std_over_last_epochs,
)
from grood.reporting.tables import STATS, table5
from grood.reproduce.collect import _collect, select_rows, value_frame
from grood.reproduce.jobs import Compose
from grood.reproduce.output import Built, _display, write_wide_csv_plain
from grood.reproduce.specs import RowEntry, Spec, SpecError, load_spec
from grood.reproduce.tables import _finish_table


class _Skipped(Exception):
    """A computed figure whose data root or checkpoint is absent."""

    def __init__(self, dataset: str, seed: int, message: str) -> None:
        super().__init__(message)
        self.dataset, self.seed, self.message = dataset, seed, message


def build_epochs_std(spec: Spec, runs_root: Path, out_dir: Path, figures_dir: Path) -> Built:
    """Table 5: the std of AUROC over the last ``last_epochs`` checkpoints per method (+ Figure 3)."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no run folders below {root}: table not written")
        return built
    built.lines.append(f"merged {long['run_dir'].nunique()} run folder(s) below {root}")
    parts = []
    for row in spec.rows:
        chosen = select_rows(long, row.select, str(spec.path))
        if not len(chosen):
            built.lines.append(f"row {row.label!r}: no runs match {row.select}")
        parts.append(chosen.assign(row=row.label))
    long = pd.concat(parts, ignore_index=True)
    if not len(long):
        built.lines.append("no runs match any row: table not written")
        return built
    last = int(spec.options["last_epochs"])
    try:
        stds = std_over_last_epochs(long.assign(method=long["row"]), last_n=last, value=spec.value)
    except (ValueError, KeyError) as error:
        built.problems.append(f"Table 5 needs {last} epochs per method and seed: {error}")
        return built
    table = table5(long.assign(method=long["row"]), last_n=last, value=spec.value)
    table.index.name = spec.row_header
    table = table.reindex(index=pd.Index([r.label for r in spec.rows], name=spec.row_header))  # '--' if none
    order = [(g, f"{spec.value}_std", s) for g in spec.groups for s in STATS]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(order, names=table.columns.names))
    epochs = sorted(long["extra.epoch"].dropna().unique().tolist())
    built.lines.append(f"epochs found: {[int(e) for e in epochs]}; std over the last {last} per method and seed "
                       f"(then the mean over seeds)")
    ours = stds.groupby(["method", "group"], as_index=False, sort=False)["std"].mean().rename(
        columns={"method": "row"}).assign(metric=spec.value)
    built = _finish_table(spec, out_dir, built, table, ours, spec.rows, metric=f"{spec.value}_std",
                          compare_value="std")
    figure = spec.options.get("figure")
    if figure:
        curves = epoch_curves(long, value=spec.value)
        built.files += figure_auroc_per_epoch(curves, figures_dir, str(figure), value=spec.value,
                                              method_names=_method_names(spec.rows))
        built.files.append(write_wide_csv_plain(figures_dir / f"{figure}.csv", curves))
    return built


def _method_names(rows: Sequence[RowEntry]) -> dict[str, str]:
    """Registry name -> row label, for rows that select one method."""
    return {str(r.select["method"]): r.label for r in rows if "method" in r.select}


def build_tsne(spec: Spec, compose: Compose, figures_dir: Path, extra_overrides: Sequence[str] = ()) -> Built:
    """Figure 2: t-SNE of penultimate features (ID test + every OOD test set, with the OOD prototype) and of
    their GROOD gradients (eq. 5), recomputed from the feature cache with :mod:`grood.method`."""
    from grood.method import class_prototypes, grood_gradient
    from grood.pipeline import grood_prototype, prepare_run

    built = Built()
    entry = spec.benchmarks[0]
    seed = entry.seeds[0]
    overrides = [f"dataset={entry.dataset}", *([f"backbone={entry.backbone}"] if entry.backbone else []),
                 f"seed={seed}", *spec.overrides, *entry.overrides, *extra_overrides]
    config = compose(overrides)
    try:
        run = prepare_run(config)
    except FileNotFoundError as error:  # the caller turns this into a skipped line of the report
        raise _Skipped(entry.dataset, seed, str(error)) from error
    prototype_cfg = config.prototype
    strategy = prototype_cfg.strategy
    if "oracle" in strategy:
        raise SpecError(f"{spec.path}: Figure 2 needs one OOD prototype; prototype={strategy} makes one per OOD set")
    train = run.split_outputs("train", accumulate_early=strategy == "mixup").features
    protos = class_prototypes(train.features, train.labels, run.benchmark.num_classes)
    p_ood = grood_prototype(run, prototype_cfg, protos)
    test = run.features("test")
    ood_names = [*run.benchmark.near, *run.benchmark.far]
    features = torch.cat([test.features, *[run.features(n).features for n in ood_names]])
    labels = torch.cat([test.labels, *[torch.full((len(run.features(n)),), -1, dtype=torch.long) for n in ood_names]])
    features, protos, p_ood = features.float().cpu(), protos.float().cpu(), p_ood.float().cpu()  # t-SNE: CPU
    gradients = grood_gradient(features, protos, p_ood)
    options = spec.options
    subsample = options.get("subsample")
    built.files += figure_tsne(features, gradients, labels, p_ood, figures_dir, name=spec.name,
                               subsample=None if subsample is None else int(subsample),
                               perplexity=float(options["perplexity"]), seed=seed,
                               class_names=options.get("class_names"), max_iter=int(options["max_iter"]))
    built.lines.append(f"{entry.dataset} seed {seed}: {len(test)} ID test + "
                       f"{int((labels < 0).sum())} OOD test points ({', '.join(ood_names)}), "
                       f"prototype={strategy}, t-SNE of {min(len(labels), subsample or len(labels))} points")
    return built


def build_epoch_curves(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 3 alone, from the runs of another target (``options.source``, Table 5's)."""
    built = Built()
    source = str(spec.options["source"])
    source_spec = load_spec(source, spec.smoke, spec.path.parent)
    root = runs_root / source_spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no runs below {root}: run `grood reproduce {source}"
                           f"{' --smoke' if spec.smoke else ''}` first (it also draws this figure)")
        return built
    long = pd.concat([select_rows(long, row.select, str(spec.path)) for row in source_spec.rows], ignore_index=True)
    if not len(long):
        built.lines.append(f"no runs below {root} match the rows of {source_spec.path}: figure not drawn")
        return built
    curves = epoch_curves(long, value=source_spec.value)
    built.files += figure_auroc_per_epoch(curves, figures_dir, spec.name, value=source_spec.value,
                                          method_names=_method_names(source_spec.rows))
    built.files.append(write_wide_csv_plain(figures_dir / f"{spec.name}.csv", curves))
    built.lines.append(f"{curves['epoch'].nunique()} epochs x {curves['method'].nunique()} methods from {root}")
    return built


def build_densities(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 4: GROOD score densities for ID, near- and far-OOD test data, one panel per benchmark
    (``scores.pt`` of each benchmark's first seed)."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None:
        built.lines.append(f"no run folders below {root}: figure not drawn")
        return built
    runs = long.drop_duplicates("run_dir")
    panels: dict[str, dict[str, torch.Tensor]] = {}
    for entry in spec.benchmarks:
        chosen = runs[(runs["benchmark"] == entry.dataset) & (runs["method"] == spec.options["method"])]
        if entry.backbone:
            chosen = chosen[chosen["architecture"] == entry.backbone]
        if not len(chosen):
            built.lines.append(f"{entry.segment}: no {spec.options['method']} run: no panel")
            continue
        chosen = chosen.sort_values("seed").iloc[0]
        folder = root / chosen["run_dir"]
        scores = torch.load(folder / "scores.pt", map_location="cpu", weights_only=True)
        if isinstance(scores["id"], Mapping):
            raise ValueError(f"{folder}/scores.pt: ID scores per OOD set (an oracle prototype); Figure 4 needs one")
        groups = read_groups(folder)
        panels[entry.segment] = {"id": scores["id"], **{
            group: torch.cat([scores["ood"][name] for name in groups.get(group, [])])
            for group in spec.groups if groups.get(group)}}
        built.lines.append(f"{entry.segment}: {folder}")
    if not panels:
        built.lines.append("no benchmark has a run: figure not drawn")
        return built
    built.files += figure_score_densities(panels, figures_dir, spec.name,
                                          score_label="GROOD score (higher = more ID)")
    return built


def read_groups(folder: Path) -> dict[str, list[str]]:
    """The ``groups`` (near / far OOD set names) of a run folder's ``run.json``."""
    return json.loads((folder / "run.json").read_text())["groups"]


def build_auroc_vs_k(spec: Spec, runs_root: Path, figures_dir: Path) -> Built:
    """Figure 5: near / far AUROC of GROOD against k (``method.params.k``), mean ± std over seeds."""
    built = Built()
    root = runs_root / spec.experiment
    long = _collect(root)
    if long is None or "params.k" not in long.columns:
        built.lines.append(f"no GROOD runs with method.params.k below {root}: figure not drawn")
        return built
    rows = value_frame(long, spec.value)
    rows = rows[(rows["method"] == spec.options["method"]) & rows["params.k"].notna() & rows["group"].isin(spec.groups)]
    data = pd.DataFrame({"k": rows["params.k"].astype(int), "group": rows["group"], "seed": rows["seed"],
                         "benchmark": rows["benchmark"], spec.value: rows[spec.value]})
    if data["benchmark"].nunique() > 1:
        raise ValueError(f"{root}: runs of several benchmarks {sorted(data['benchmark'].unique())}; Figure 5 "
                         "draws one")
    title = _display(data["benchmark"].iloc[0]) if len(data) else None
    built.files += figure_auroc_vs_k(data, figures_dir, spec.name, value=spec.value, title=title)
    summary = data.groupby(["k", "group"], as_index=False)[spec.value].agg(["mean", "std", "count"])
    built.files.append(write_wide_csv_plain(figures_dir / f"{spec.name}.csv", summary))
    built.lines.append("AUROC per k: " + "; ".join(
        f"k={int(r['k'])} {r['group']} {r['mean']:.2f}" for r in summary.to_dict("records")))
    return built

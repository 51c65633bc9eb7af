"""One command per paper table / figure: specs, jobs, merging run folders, skips, reports, cluster commands.

Fast tests build tables from fake run folders (the schema ``grood.pipeline.write_method_results`` writes) and
compose every shipped spec's jobs with Hydra; the local multirun test runs ``grood run -m`` (MSP, two
seeds) on the smoke benchmark; the ``slow`` tests run each target's smoke version.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from grood.config import config_hash, to_plain
from grood.reporting import load_paper_table, read_table_csv
from grood.reproduce import (
    GROUPS,
    SPEC_DIR,
    SpecError,
    available_specs,
    cluster_commands,
    expand_jobs,
    expand_targets,
    expected_methods,
    load_spec,
    reproduce_target,
)

REPO = Path(__file__).resolve().parents[1]
METRICS = ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
GROUPS_C10 = {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "texture", "places365"]}


import grood.cli.reproduce as SCRIPT  # noqa: E402  (`grood reproduce`)


@pytest.fixture()
def compose():
    with SCRIPT.hydra_composer() as composer:
        yield composer


def fake_run(folder: Path, benchmark: str = "cifar10", method: str = "grood", seed: int = 0,
             near: float = 90.0, far: float = 94.0, experiment: str = "mini", groups: dict | None = None,
             params: dict | None = None, extra: dict | None = None, prototype: str = "mixup",
             id_accuracy: float = 95.0, ncp: float = 94.5, timings: dict | None = None,
             architecture: str = "resnet18_32x32", config=None) -> Path:
    """One results folder as grood.pipeline.write_method_results writes it (metrics.csv, run.json, scores.pt);
    ``config``: the RunConfig it records (its config_hash lets a reproduction reuse it)."""
    groups = groups or GROUPS_C10
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for group, value in (("near", near), ("far", far)):
        for offset, name in enumerate(groups[group]):
            rows[name] = value + (offset - (len(groups[group]) - 1) / 2)  # mean over the group = value
        rows[f"{group}ood"] = value
    lines = ["dataset," + ",".join(METRICS)]
    lines += [f"{name},{100 - v:.4f},{v:.4f},{v:.4f},{v:.4f},{id_accuracy:.4f}" for name, v in rows.items()]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    generator = torch.Generator().manual_seed(seed)
    torch.save({"id": torch.randn(200, generator=generator) + 2,
                "ood": {name: torch.randn(100, generator=generator) for names in groups.values() for name in names}},
               folder / "scores.pt")
    run = {
        "benchmark": benchmark, "dataset": benchmark, "method": method, "method_params": params or {},
        "seed": seed, "checkpoint": f"ckpt/s{seed}/best.ckpt", "checkpoint_sha256": "0" * 64,
        "backbone": {"name": architecture}, "id_accuracy": id_accuracy,
        "ncp_accuracy": ncp if method == "grood" else None, "groups": groups, "experiment": experiment,
        "extra": {**({"prototype": prototype} if method == "grood" else {}), **(extra or {})},
        "timings_s": timings or {f"method:{method}": 1.0},
        "config": {"backbone": {"name": architecture}, "prototype": {"strategy": prototype}}, "versions": {},
        "git_commit": "abc",
    }
    if config is not None:
        run["config_hash"] = config_hash(to_plain(config))
    (folder / "run.json").write_text(json.dumps(run, indent=2))
    return folder


MINI_SPEC = """
table: mini
kind: table
title: Mini table
paper_table: 2
experiment: mini
columns: [benchmark, group]
groups: [near, far]
row_header: method
runs: [{tag: all, overrides: [method=all]}]
pre_rows:
  - {label: "ID Acc. (%)", metric: ID_ACC}
  - {label: "NCP Acc. (%)", metric: NCP_ACC}
rows:
  - {label: MSP, select: {method: msp}}
  - {label: CIDER, source: paper, select: {method: cider}}
  - {label: KNN, select: {method: knn}}
  - {label: GROOD, select: {method: grood}}
full:
  benchmarks: [{dataset: cifar10, seeds: [0, 1, 2]}, {dataset: cifar100, seeds: [0]}]
smoke:
  benchmarks: [{dataset: cifar10_smoke, seeds: [0]}]
"""


def write_spec(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ specs
def test_every_shipped_spec_loads_and_every_job_composes(compose):
    assert set(GROUPS["all"]) == set(available_specs())
    paths = to_plain(compose([]))["paths"]
    for name in available_specs():
        for smoke in (False, True):
            spec = load_spec(name, smoke)
            jobs, _ = expand_jobs(spec, paths)
            folders = [job.relative_dir for job in jobs]
            assert len(set(folders)) == len(folders), f"{name}: two jobs share a results folder"
            seen: set = set()
            for job in jobs:  # compose a job of every run and of every benchmark (composing all takes ~30 s)
                keys = {("run", job.run.tag), ("benchmark", job.benchmark.segment)}
                if keys <= seen:
                    continue
                seen |= keys
                config = compose(list(job.overrides))
                assert config.experiment_name == spec.experiment
                assert config.seed == job.seed and config.dataset.name == job.benchmark.dataset
                assert expected_methods(config)
            if smoke:
                assert spec.experiment.endswith("_smoke")
                assert all(e.dataset == "cifar10_smoke" for e in spec.benchmarks)
    table4 = load_spec("table4", smoke=False)
    jobs, _ = expand_jobs(table4, paths)
    variants = {compose(list(j.overrides)).method.params.variant for j in jobs}
    assert variants == {"ood_distance", "gradient_l1", "class_gradient", "grood"}
    assert len(jobs) == 5 * 3


def test_unknown_table_and_bad_keys_are_errors_naming_them(tmp_path):
    with pytest.raises(SpecError, match=r"unknown table/figure 'table9'.*table1"):
        load_spec("table9")
    with pytest.raises(SpecError, match="unknown table/figure 'tabel2'"):
        expand_targets(["tabel2"])
    assert expand_targets(["figures", "figure4"]) == GROUPS["figures"]
    bad = MINI_SPEC.replace("columns:", "colums:")
    write_spec(tmp_path, "mini", bad)
    with pytest.raises(SpecError, match=r"mini\.yaml: top level: unknown key 'colums'"):
        load_spec("mini", spec_dir=tmp_path)
    write_spec(tmp_path, "mini", MINI_SPEC.replace("{label: MSP, select", "{label: MSP, selct"))
    with pytest.raises(SpecError, match=r"rows\[0\]: unknown key 'selct'"):
        load_spec("mini", spec_dir=tmp_path)
    write_spec(tmp_path, "mini", MINI_SPEC.replace("seeds: [0, 1, 2]", "seeds: [zero]"))
    with pytest.raises(SpecError, match=r"full\.benchmarks\[0\]\.seeds"):
        load_spec("mini", spec_dir=tmp_path)
    write_spec(tmp_path, "mini", MINI_SPEC + "  run_overrides: {alll: [x=1]}\n")
    with pytest.raises(SpecError, match=r"smoke\.run_overrides: unknown key 'alll'; valid keys: all"):
        load_spec("mini", smoke=True, spec_dir=tmp_path)
    write_spec(tmp_path, "mini", MINI_SPEC.replace("kind: table", "kind: chart"))
    with pytest.raises(SpecError, match="kind: 'chart' is not one of"):
        load_spec("mini", spec_dir=tmp_path)
    write_spec(tmp_path, "mini", MINI_SPEC.replace("table: mini", "table: other"))
    with pytest.raises(SpecError, match="must equal the file name"):
        load_spec("mini", spec_dir=tmp_path)
    # the command line says so and exits with 2
    write_spec(tmp_path, "mini", bad)
    assert SCRIPT.main(["mini", "--spec-dir", str(tmp_path), "--tables-only", "--runs-dir", str(tmp_path / "r"),
                        "--out-dir", str(tmp_path / "o")]) == 2
    assert SCRIPT.main(["table9"]) == 2


def test_a_bad_override_stops_before_any_job_runs(tmp_path, compose):
    write_spec(tmp_path, "mini", MINI_SPEC.replace("overrides: [method=all]", "overrides: [method=allx]"))
    calls = []
    with pytest.raises(SpecError, match=r"mini/cifar10/all/seed0: cannot compose"):
        reproduce_target(load_spec("mini", spec_dir=tmp_path), compose, tmp_path / "runs", tmp_path / "out",
                         evaluate=lambda config, out: calls.append(out))
    assert calls == []


# ----------------------------------------------------------------------------------------------- merging
def test_results_of_several_run_folders_merge_into_the_table(tmp_path, compose):
    runs = tmp_path / "runs"
    near = {"grood": [91.0, 91.5, 92.5], "msp": [88.0, 88.0, 88.6], "knn": [90.0, 90.6, 90.6]}
    for seed in range(3):
        # the local layout of method=all (one folder per method) and a cluster multirun's layout, mixed
        root = runs / "mini" / "cifar10" / "all" / f"seed{seed}" if seed < 2 else runs / "mini" / "multirun" / "x"
        for method, values in near.items():
            fake_run(root / method, method=method, seed=seed, near=values[seed], far=values[seed] + 2,
                     id_accuracy=95.0 + seed, ncp=94.0 + seed)
    fake_run(runs / "mini" / "cifar100" / "all" / "seed0" / "grood", benchmark="cifar100", near=80.0, far=85.0,
             id_accuracy=77.0, ncp=76.0)
    write_spec(tmp_path / "specs", "mini", MINI_SPEC)
    result = reproduce_target(load_spec("mini", spec_dir=tmp_path / "specs"), compose, runs, tmp_path / "out",
                              tables_only=True)
    out = tmp_path / "out" / "mini"
    assert sorted(p.name for p in out.iterdir()) == ["mini.csv", "mini.tex", "paper_vs_ours.csv", "report.md"]
    table = read_table_csv(out / "mini.csv")
    assert list(table.index) == ["ID Acc. (%)", "NCP Acc. (%)", "MSP", "CIDER", "KNN", "GROOD"]
    assert table.loc["GROOD", ("cifar10", "near", "mean")] == pytest.approx(np.mean(near["grood"]))
    assert table.loc["GROOD", ("cifar10", "near", "std")] == pytest.approx(np.std(near["grood"]))  # ddof=0
    assert table.loc["GROOD", ("cifar10", "far", "n")] == 3
    assert table.loc["GROOD", ("cifar100", "near", "mean")] == 80.0
    assert math.isnan(table.loc["GROOD", ("cifar100", "near", "std")])  # one seed: no std
    assert math.isnan(table.loc["MSP", ("cifar100", "near", "mean")])  # never ran
    assert table.loc["ID Acc. (%)", ("cifar10", "far", "mean")] == pytest.approx(96.0)
    assert table.loc["NCP Acc. (%)", ("cifar100", "near", "mean")] == pytest.approx(76.0)
    paper = load_paper_table(2)
    cider = paper.query("method == 'cider' and benchmark == 'cifar10' and group == 'far'")
    assert table.loc["CIDER", ("cifar10", "far", "mean")] == cider["mean"].item()
    assert [c[0] for c in table.columns][::3] == ["cifar10", "cifar10", "cifar100", "cifar100"]
    tex = (out / "mini.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"\bottomrule" in tex and r"\toprule" in tex
    grood_line = next(line for line in tex.splitlines() if line.startswith("GROOD"))
    assert r"\textbf{91.67 $\pm$ 0.62}" in grood_line  # best near-OOD mean on CIFAR-10
    assert r"CIDER$^\dagger$" in tex and "Quoted from the paper" in tex
    cider_line = next(line for line in tex.splitlines() if line.startswith("CIDER"))
    assert r"\textbf" not in cider_line  # quoted rows do not compete for bold
    compared = pd.read_csv(out / "paper_vs_ours.csv")
    cell = compared.query("row == 'GROOD' and benchmark == 'cifar10' and group == 'near' and metric == 'AUROC'")
    expected = paper.query("method == 'grood' and benchmark == 'cifar10' and group == 'near'")["mean"].item()
    assert cell["diff"].item() == pytest.approx(np.mean(near["grood"]) - expected, abs=1e-3)
    assert cell["paper_name"].item() == "GROOD(OURS)"
    id_cell = compared.query("row == 'ID Acc. (%)' and benchmark == 'cifar10'")
    assert id_cell["ours"].item() == pytest.approx(96.0, abs=1e-3)
    report = (out / "report.md").read_text()
    assert "merged 10 run folder(s)" in report
    assert re.search(r"mini/cifar10/all/seed2 \| missing", report)  # its results live elsewhere: not a job folder
    assert "| GROOD | **91.67 ± 0.62** |" in report
    assert result.ok


def test_missing_dataset_is_skipped_with_a_line_in_the_report(tmp_path, compose):
    spec_text = MINI_SPEC.replace("overrides: [method=all]", "overrides: [method=msp]").replace("tag: all", "tag: msp")
    write_spec(tmp_path / "specs", "mini", spec_text)
    runs = tmp_path / "runs"
    no_data = tmp_path / "no_data"
    for seed in range(3):  # finished runs of exactly the jobs' configurations: reused
        config = compose(["dataset=cifar10", f"seed={seed}", "experiment_name=mini", "method=msp",
                          f"paths.data_root={no_data}"])
        fake_run(runs / "mini" / "cifar10" / "msp" / f"seed{seed}", method="msp", seed=seed, near=88.0 + seed,
                 config=config)
    code = SCRIPT.main(["mini", "--spec-dir", str(tmp_path / "specs"), "--runs-dir", str(runs),
                        "--out-dir", str(tmp_path / "out"), "-o", f"paths.data_root={no_data}"])
    assert code == 0  # a skip is not a failure
    report = (tmp_path / "out" / "mini" / "report.md").read_text()
    skipped = [line for line in report.splitlines() if line.startswith("- **cifar100** skipped")]
    assert len(skipped) == 1 and str(no_data) in skipped[0] and "seeds [0]" in skipped[0]
    assert report.count("| existing |") == 3
    table = read_table_csv(tmp_path / "out" / "mini" / "mini.csv")
    assert table.loc["MSP", ("cifar10", "near", "mean")] == pytest.approx(89.0)
    assert math.isnan(table.loc["MSP", ("cifar100", "near", "mean")])  # the column holds only the quoted row
    assert not math.isnan(table.loc["CIDER", ("cifar100", "near", "mean")])


def _fake_evaluate(calls: list):
    def evaluate(config, out_dir):
        calls.append(Path(out_dir))
        method = config.method.name
        if method == "knn":
            raise RuntimeError("boom")
        fake_run(Path(out_dir), benchmark=config.dataset.name, method=method, seed=config.seed,
                 experiment=config.experiment_name, near=90.0 + config.seed, config=config)
    return evaluate


def test_jobs_are_resumable_force_reruns_and_failures_are_reported(tmp_path, compose):
    spec_text = MINI_SPEC.replace("runs: [{tag: all, overrides: [method=all]}]",
                                  "runs: [{tag: msp, overrides: [method=msp]}, {tag: knn, overrides: [method=knn]}]")
    spec = load_spec("mini", spec_dir=write_spec(tmp_path / "specs", "mini", spec_text).parent)
    calls: list = []
    first = reproduce_target(spec, compose, tmp_path / "runs", tmp_path / "out", evaluate=_fake_evaluate(calls))
    assert len(calls) == 8 and not first.ok  # 4 checkpoints x 2 methods; every KNN job failed
    assert [o.status for o in first.outcomes].count("failed") == 4
    report = (tmp_path / "out" / "mini" / "report.md").read_text()
    assert "mini/cifar10/knn/seed0 failed" in report and "RuntimeError: boom" in report
    assert (tmp_path / "out" / "mini" / "mini.csv").is_file()  # the table is still written
    calls.clear()
    second = reproduce_target(spec, compose, tmp_path / "runs", tmp_path / "out", evaluate=_fake_evaluate(calls))
    assert sorted(p.parent.name for p in calls) == ["knn"] * 4  # finished MSP jobs are not run again
    assert [o.status for o in second.outcomes].count("existing") == 4
    calls.clear()
    reproduce_target(spec, compose, tmp_path / "runs", tmp_path / "out", force=True, evaluate=_fake_evaluate(calls))
    assert len(calls) == 8


# ------------------------------------------------------------------------------------ Table 5, figures, A4
def test_table5_and_figure3_from_epoch_runs(tmp_path, compose, monkeypatch):
    monkeypatch.setenv("GROOD_CHECKPOINT_ROOT", str(tmp_path / "no-checkpoints"))  # independent of ./checkpoints
    spec_dir = tmp_path / "specs"
    text = (SPEC_DIR / "table5.yaml").read_text()
    write_spec(spec_dir, "table5", text)
    write_spec(spec_dir, "figure3", (SPEC_DIR / "figure3.yaml").read_text())
    runs = tmp_path / "runs"
    aurocs = {"grood": [80.0, 80.2, 80.0, 80.2, 80.0], "vim": [70.0, 75.0, 72.0, 78.0, 71.0]}
    for method, values in aurocs.items():
        for epoch, value in enumerate(values, start=1):
            fake_run(runs / "table5_smoke" / "cifar10_smoke" / f"{method}-epoch{epoch:03d}" / "seed0",
                     benchmark="cifar10_smoke", method=method, near=value, far=value + 1,
                     experiment="table5_smoke", extra={"epoch": epoch}, architecture="resnet20",
                     groups={"near": ["tin"], "far": ["mnist", "texture"]})
    spec = load_spec("table5", smoke=True, spec_dir=spec_dir)
    last = spec.options["last_epochs"]
    result = reproduce_target(spec, compose, runs, tmp_path / "out", tables_only=True)
    table = read_table_csv(tmp_path / "out" / "table5" / "table5.csv")
    assert table.loc["GROOD", ("near", "AUROC_std", "mean")] == pytest.approx(np.std(aurocs["grood"][-last:]))
    assert table.loc["VIM", ("far", "AUROC_std", "mean")] == pytest.approx(np.std(aurocs["vim"][-last:]))
    assert math.isnan(table.loc["MDS", ("near", "AUROC_std", "mean")])
    tex = (tmp_path / "out" / "table5" / "table5.tex").read_text()
    assert r"\textbf{" + f"{np.std(aurocs['grood'][-last:]):.2f}" in tex  # lower std = better
    assert (tmp_path / "out" / "figures" / "figure3.png").is_file()
    compared = pd.read_csv(tmp_path / "out" / "table5" / "paper_vs_ours.csv")
    cell = compared.query("row == 'GROOD' and group == 'near'")
    assert cell["paper"].item() == 0.2 and cell["ours"].item() == pytest.approx(np.std(aurocs["grood"][-last:]))
    assert "no checkpoint matches" in (tmp_path / "out" / "table5" / "report.md").read_text()
    assert result.ok
    figure3 = reproduce_target(load_spec("figure3", smoke=True, spec_dir=spec_dir), compose, runs, tmp_path / "f")
    assert (tmp_path / "f" / "figures" / "figure3.pdf").is_file() and figure3.ok


def test_figures_4_5_and_the_timing_table_from_runs(tmp_path, compose):
    runs = tmp_path / "runs"
    smoke_groups = {"near": ["tin"], "far": ["mnist", "fashionmnist", "texture"]}
    fake_run(runs / "figure4_smoke" / "cifar10_smoke" / "grood" / "seed0", benchmark="cifar10_smoke",
             experiment="figure4_smoke", groups=smoke_groups)
    for k, auroc in ((1, 91.0), (2, 90.5), (5, 90.0), (10, 89.0), (20, 88.0), (50, 86.0)):
        fake_run(runs / "figure5_smoke" / "cifar10_smoke" / f"grood-k{k}" / "seed0", benchmark="cifar10_smoke",
                 experiment="figure5_smoke", groups=smoke_groups, params={"k": k}, near=auroc, far=auroc + 2)
    for tag, method, index, seconds in (("grood-exact", "grood", "exact", 3.0), ("grood-ivf", "grood", "ivf", 2.0),
                                        ("knn", "knn", "exact", 9.0)):
        fake_run(runs / "appendix_a4_smoke" / "cifar10_smoke" / tag / "seed0", benchmark="cifar10_smoke",
                 method=method, experiment="appendix_a4_smoke", groups=smoke_groups, extra={"index": index},
                 timings={f"method:{method}": seconds, "forward:test": 0.5,
                          **({"prototype:grood": 1.5} if method == "grood" else {})})
    out = tmp_path / "out"
    for name in ("figure4", "figure5", "appendix_a4"):
        assert reproduce_target(load_spec(name, smoke=True), compose, runs, out, tables_only=True).ok
    for name in ("figure4", "figure5"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{name}.pdf").is_file() and (out / "figures" / f"{name}_report.md").is_file()
    k_curve = pd.read_csv(out / "figures" / "figure5.csv")
    assert k_curve.query("k == 50 and group == 'far'")["mean"].item() == 88.0
    table = read_table_csv(out / "appendix_a4" / "appendix_a4.csv")
    assert table.loc["GROOD (IVF)", ("cifar10_smoke", "cached", "mean")] == 2.0  # on cached features
    assert table.loc["GROOD (IVF)", ("cifar10_smoke", "network", "mean")] == 1.5  # its prototype's pass, apart
    assert table.loc["KNN", ("cifar10_smoke", "cached", "mean")] == 9.0
    assert table.loc["KNN", ("cifar10_smoke", "network", "mean")] == 0.0
    assert r"\textbf{2.0}" in (out / "appendix_a4" / "appendix_a4.tex").read_text()  # fastest in bold
    compared = pd.read_csv(out / "appendix_a4" / "paper_vs_ours.csv")
    assert compared.query("row == 'KNN' and group == 'cached'")["paper"].item() == 434.0  # CIFAR-10, smoke alias
    assert compared.query("group == 'network'")["paper"].isna().all()  # the paper times no network pass
    assert compared.query("row == 'GROOD (exact search)'")["paper"].isna().all()


# ------------------------------------------------------------------------------------------ cluster path
def test_cluster_commands_write_the_job_folders_and_the_launcher_config_composes(tmp_path, compose):
    spec = load_spec("table2")
    jobs, _ = expand_jobs(spec, to_plain(compose([]))["paths"])
    commands = cluster_commands(jobs, tmp_path / "runs", launcher="submitit_slurm")
    assert len(commands) == 4  # one multirun per benchmark, one cluster job per checkpoint (seed)
    first = shlex.split(commands[0])
    assert first[:6] == ["python", "-m", "grood", "run", "-m", "hydra/launcher=submitit_slurm"]
    assert "seed=0,1,2" in first and f"hydra.sweep.dir={tmp_path / 'runs' / 'table2'}" in first
    assert "hydra.sweep.subdir=cifar10/all/seed${seed}" in first
    assert jobs[0].directory(tmp_path / "runs") == tmp_path / "runs" / "table2" / "cifar10" / "all" / "seed0"
    from grood.config import hydra_compose

    config = hydra_compose(["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    launcher = config.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.mem_gb > 0
    assert hydra_compose([], return_hydra_config=True).hydra.launcher._target_.endswith("BasicLauncher")


def tiny_data_root(smoke_data_root: Path, target: Path, every: int = 20) -> Path:
    """Every ``every``-th line of each smoke list, the images linked: a data root whose forward pass takes seconds."""
    lists = target / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    for path in (smoke_data_root / "benchmark_imglist" / "cifar10").glob("*.txt"):
        (lists / path.name).write_text("".join(path.read_text().splitlines(keepends=True)[::every]))
    (target / "images_classic").symlink_to(smoke_data_root / "images_classic")
    return target


def test_local_hydra_multirun_then_tables_only_merges_it(tmp_path, shared_dir, smoke_data_root, capsys, monkeypatch):
    """The cluster path with Hydra's local launcher: the printed multirun (MSP, seeds 0 and 1, a 1/20 subset of
    the smoke benchmark, own feature cache) writes the job folders; ``--tables-only`` merges them."""
    write_spec(tmp_path / "specs", "tiny", """
table: tiny
kind: table
title: Tiny
paper_table: 2
experiment: tiny
columns: [benchmark, group]
runs: [{tag: msp, overrides: [method=msp]}]
rows: [{label: MSP, select: {method: msp}}]
full: {benchmarks: [{dataset: cifar10_smoke, seeds: [0, 1]}]}
smoke: {benchmarks: [{dataset: cifar10_smoke, seeds: [0, 1]}], overrides: [num_workers=0, progress=false]}
paper_filter: {benchmark: cifar10}
""")
    monkeypatch.setenv("GROOD_SHARED_DIR", str(shared_dir))
    common = ["--spec-dir", str(tmp_path / "specs"), "--runs-dir", str(tmp_path / "runs"),
              "--out-dir", str(tmp_path / "out"), "--smoke"]
    data = tiny_data_root(smoke_data_root, tmp_path / "data")
    capsys.readouterr()
    assert SCRIPT.main(["tiny", "--print-commands", *common, "-o", f"paths.data_root={data}",
                        "-o", f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "seed=0,1" in printed[0]
    started = time.perf_counter()
    command = [sys.executable if part == "python" else part for part in shlex.split(printed[0])]
    subprocess.run(command, cwd=REPO, env=os.environ, capture_output=True, text=True, check=True)
    print(f"local multirun of 2 MSP jobs: {time.perf_counter() - started:.1f} s")
    for seed in (0, 1):
        assert (tmp_path / "runs" / "tiny_smoke" / "cifar10_smoke" / "msp" / f"seed{seed}" / "run.json").is_file()
    # the same data root: the jobs' recorded configurations equal the ones asked for, so they count as existing
    assert SCRIPT.main(["tiny", "--tables-only", *common, "-o", f"paths.data_root={data}"]) == 0
    table = read_table_csv(tmp_path / "out" / "tiny" / "tiny.csv")
    assert table.loc["MSP", ("cifar10_smoke", "near", "n")] == 2
    assert 50.0 < table.loc["MSP", ("cifar10_smoke", "far", "mean")] <= 100.0
    run = json.loads((tmp_path / "runs" / "tiny_smoke" / "cifar10_smoke" / "msp" / "seed1" / "run.json").read_text())
    assert run["data_root"] == str(data.resolve()) and run["experiment"] == "tiny_smoke"
    assert (tmp_path / "out" / "tiny" / "report.md").read_text().count("| existing |") == 2


# ------------------------------------------------------------------------------------------ smoke runs
def _fake_epoch_checkpoints(source: Path, root: Path, folder: str, epochs: list[int], name: str | None = None) -> None:
    """Copies of the smoke ResNet-20 with 1% weight noise standing in for per-epoch training checkpoints."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    target = root / "trained" / folder / "s0"
    target.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        generator = torch.Generator().manual_seed(epoch)
        state = {k: v + 0.01 * v.std() * torch.randn(v.shape, generator=generator) if k.endswith("weight")
                 and v.dim() > 1 else v for k, v in checkpoint["state_dict"].items()}  # conv / linear weights
        torch.save({**checkpoint, "state_dict": state}, target / (name or f"epoch_{epoch:03d}.ckpt"))


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("smoke_reproduction")
    checkpoint = shared_dir / "checkpoints" / "cifar10_resnet20_akamaster.th"
    _fake_epoch_checkpoints(checkpoint, root / "checkpoints", "cifar10_smoke_resnet20", [1, 2, 3])
    _fake_epoch_checkpoints(checkpoint, root / "checkpoints", "cifar10_smoke_resnet20_mixup", [9], "best.ckpt")
    return root


SMOKE_ORDER = ["table2", "table1", "table3", "table4", "table5", "table6", "table7", "figure2", "figure3",
               "figure4", "figure5", "appendix_a4"]


@pytest.mark.slow
@pytest.mark.parametrize("target", SMOKE_ORDER)
def test_smoke_version_runs_and_its_outputs_parse(target, smoke_dirs, shared_dir, monkeypatch):
    monkeypatch.setenv("GROOD_SHARED_DIR", str(shared_dir))
    out = smoke_dirs / "out"
    code = SCRIPT.main([target, "--smoke", "--runs-dir", str(smoke_dirs / "runs"), "--out-dir", str(out),
                        "-o", "progress=false", "-o", f"paths.checkpoint_root={smoke_dirs / 'checkpoints'}"])
    spec = load_spec(target, smoke=True)
    if spec.kind in ("table", "epochs_std"):
        folder = out / target
        report = (folder / "report.md").read_text()
        assert (folder / f"{target}.csv").is_file(), report
        table = read_table_csv(folder / f"{target}.csv")
        assert table.notna().any().any()
        tex = (folder / f"{target}.tex").read_text()
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
        columns = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
        rows = [line for line in tex.splitlines() if line.endswith(r"\\") and "multicolumn" not in line]
        assert rows and all(line.count("&") == columns - 1 for line in rows)
        compared = pd.read_csv(folder / "paper_vs_ours.csv")
        assert set(compared.columns) >= {"ours", "paper", "diff"} and compared["diff"].notna().any()
    else:
        assert (out / "figures" / f"{target}_report.md").is_file()
        if target != "figure3" or (smoke_dirs / "runs" / "table5_smoke").is_dir():
            assert (out / "figures" / f"{target}.png").is_file()
    assert code == 0, (out / target / "report.md") if spec.kind == "table" else code

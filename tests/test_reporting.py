"""Reporting layer: tables, LaTeX, collect_runs, the paper's numbers, paper vs ours, figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grood.reporting import (
    DuplicateRunError,
    RunFormatError,
    aggregate,
    best_mask,
    collect_runs,
    epoch_curves,
    figure_auroc_per_epoch,
    figure_auroc_vs_k,
    figure_score_densities,
    figure_tsne,
    format_mean_std,
    inference_time_table,
    load_paper_table,
    paper_rows,
    paper_vs_ours,
    read_table_csv,
    sota_rows,
    std_over_last_epochs,
    summarize_runs,
    table5,
    to_latex_table,
    widen,
    write_table,
)
from grood.reporting.paper import PAPER_TABLES

METRICS = ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]


# ----------------------------------------------------------------------------------------------- helpers
def long_frame(records: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """(method, group, seed, AUROC) -> a small long frame as collect_runs would give it."""
    rows = []
    for method, group, seed, auroc in records:
        rows.append({"benchmark": "cifar10", "method": method, "seed": seed, "group": group,
                     "dataset": f"{group}ood", "AUROC": auroc, "FPR@95": 100 - auroc})
    return pd.DataFrame(rows)


def write_run(folder: Path, method: str = "grood", seed: int = 0, near: tuple[float, float] = (90.0, 88.0),
              far: tuple[float, float] = (95.0, 93.0), extra: dict | None = None, experiment: str = "table2",
              benchmark: str = "cifar10", ncp: float | None = 95.0, **fields) -> Path:
    """One results folder in the fixed schema: run.json + metrics.csv (near: cifar100, tin; far: mnist, svhn)."""
    folder.mkdir(parents=True)
    values = {"cifar100": near[0], "tin": near[1], "mnist": far[0], "svhn": far[1],
              "nearood": sum(near) / 2, "farood": sum(far) / 2}
    lines = ["dataset," + ",".join(METRICS)]
    for dataset, auroc in values.items():
        lines.append(f"{dataset},{100 - auroc:.4f},{auroc:.4f},{auroc - 1:.4f},{auroc - 2:.4f},95.0000")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    run = {"benchmark": benchmark, "method": method, "seed": seed, "checkpoint": f"ckpt/s{seed}.ckpt",
           "checkpoint_sha256": "0" * 64, "ncp_accuracy": ncp if method == "grood" else None,
           "id_accuracy": 95.0, "groups": {"near": ["cifar100", "tin"], "far": ["mnist", "svhn"]},
           "config": {"backbone": {"name": "resnet18_32x32"}, "prototype": {"strategy": "mixup"}},
           "versions": {}, "git_commit": "abc", "experiment": experiment, "extra": extra or {}, **fields}
    (folder / "run.json").write_text(json.dumps(run, indent=2))
    return folder


# ------------------------------------------------------------------------------------- cells and tables
def test_format_mean_std_one_seed_and_three_seeds():
    assert format_mean_std(91.16, 0.12) == "91.16 ± 0.12"
    assert format_mean_std(91.16, math.nan) == "91.16"
    assert format_mean_std(91.16, None) == "91.16"
    assert format_mean_std(91.156, 0.004, decimals=1) == "91.2 ± 0.0"
    assert format_mean_std(math.nan, 0.1) == "--"

    one_seed = aggregate(long_frame([("grood", "near", 0, 91.0)]), index="method", columns="group")
    three_seeds = aggregate(long_frame([("grood", "near", s, v) for s, v in enumerate([90.0, 91.0, 92.0])]),
                            index="method", columns="group")
    assert math.isnan(one_seed.loc["grood", ("near", "std")]) and one_seed.loc["grood", ("near", "n")] == 1
    assert three_seeds.loc["grood", ("near", "mean")] == pytest.approx(91.0)
    assert three_seeds.loc["grood", ("near", "std")] == pytest.approx(np.std([90.0, 91.0, 92.0]))  # ddof=0
    assert three_seeds.loc["grood", ("near", "n")] == 3
    tex_one = to_latex_table(one_seed, environment=None)
    tex_three = to_latex_table(three_seeds, environment=None)
    assert "91.00" in tex_one and r"$\pm$" not in tex_one
    assert r"91.00 $\pm$ 0.82" in tex_three


def test_aggregate_refuses_two_values_for_one_seed():
    frame = long_frame([("grood", "near", 0, 91.0), ("grood", "near", 0, 80.0)])
    with pytest.raises(ValueError, match="one value per seed"):
        aggregate(frame, index="method", columns="group")


def test_bold_best_max_for_auroc_min_for_fpr_and_ties():
    frame = long_frame([("msp", "near", 0, 88.0), ("knn", "near", 0, 91.001), ("grood", "near", 0, 90.999),
                        ("msp", "far", 0, 95.0), ("knn", "far", 0, 90.0), ("grood", "far", 0, 93.0)])
    auroc = aggregate(frame, index="method", columns="group", value="AUROC")
    mask = best_mask(auroc, metric="AUROC", decimals=2)
    # near: 91.00 and 91.00 after rounding -> a tie, both bold; far: max is msp
    assert mask["near"].to_dict() == {"msp": False, "knn": True, "grood": True}
    assert mask["far"].to_dict() == {"msp": True, "knn": False, "grood": False}
    fpr = aggregate(frame, index="method", columns="group", value="FPR@95")
    fpr_mask = best_mask(fpr, metric="FPR@95")
    assert fpr_mask["far"].to_dict() == {"msp": True, "knn": False, "grood": False}  # 100 - 95 = 5 is the least
    assert fpr_mask["near"].to_dict() == {"msp": False, "knn": True, "grood": True}
    tex = to_latex_table(auroc, metric="AUROC", environment=None)
    assert tex.count(r"\textbf{") == 3
    assert r"\textbf{95.00}" in tex and r"\textbf{91.00}" in tex
    # more decimals break the tie
    assert best_mask(auroc, decimals=3)["near"].to_dict() == {"msp": False, "knn": True, "grood": False}


def _body_rows(tex: str) -> list[str]:
    lines = tex.splitlines()
    mids = [i for i, line in enumerate(lines) if line.strip() == r"\midrule"]
    end = lines.index(r"\bottomrule")
    return [line for line in lines[mids[-1] + 1:end] if line.strip()]


def test_latex_is_structurally_sound_with_quoted_rows_and_escaping():
    frame = pd.concat([
        long_frame([(m, g, s, 80 + i + s * 0.1) for i, m in enumerate(["msp", "grood", "my_method&co"])
                    for g in ("near", "far") for s in range(3)]),
    ])
    frame = pd.concat([frame, frame.assign(benchmark="cifar100")])
    table = aggregate(frame, index="method", columns=["benchmark", "group"])
    quoted = widen(pd.DataFrame([{"method": "cider", "benchmark": b, "group": g, "mean": 99.0, "std": 0.1}
                                 for b in ("cifar10", "cifar100") for g in ("near", "far")]),
                   index="method", columns=["benchmark", "group"])
    full = pd.concat([table, quoted])
    tex = to_latex_table(full, quoted_rows=["cider"], caption="Main results", label="tab:main")
    assert tex.count("{") == tex.count("}")
    depth = 0
    for char in tex:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}",
                 r"\begin{table}", r"\end{table}"):
        assert tex.count(rule) == 1, rule
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"\begin{tabular}{lcccc}" in tex
    assert r"\multicolumn{2}{c}{CIFAR-10}" in tex and r"\cmidrule(lr){2-3}" in tex
    body = _body_rows(tex)
    assert len(body) == 4  # msp, grood, my_method&co, cider
    assert all(len(re.findall(r"(?<!\\)&", row)) == 4 and row.endswith(r"\\") for row in body)
    assert r"my\_method\&co" in tex
    assert r"CIDER$^\dagger$" in tex
    footnote = tex.splitlines()[tex.splitlines().index(r"\bottomrule") + 1]
    assert r"$^\dagger$" in footnote and "Quoted from the paper" in footnote
    # cider's 99.00 is best in every column; without ranking quoted rows my_method&co (82.x) is
    assert tex.count(r"\textbf{99.00 $\pm$ 0.10}") == 4
    unranked = to_latex_table(full, quoted_rows=["cider"], rank_quoted=False, environment=None)
    assert unranked.count(r"\textbf{82.10 $\pm$ 0.08}") == 4
    assert "99.00" in unranked and r"\textbf{99.00" not in unranked
    without_quoted = to_latex_table(table, environment=None)
    assert r"\dagger" not in without_quoted


def test_pre_rows_merge_equal_cells_and_never_bold():
    table = aggregate(long_frame([("msp", g, 0, 80.0) for g in ("near", "far")]), index="method", columns="group")
    table.columns = pd.MultiIndex.from_tuples([("cifar10", *c) for c in table.columns],
                                              names=["benchmark", "group", "stat"])
    accuracy = widen(pd.DataFrame([{"row": "ID_ACC", "benchmark": "cifar10", "group": g, "mean": 95.06, "std": 0.3}
                                   for g in ("near", "far")]), index="row", columns=["benchmark", "group"])
    tex = to_latex_table(table, pre_rows=accuracy, environment=None)
    assert r"ID Acc. (\%) & \multicolumn{2}{c}{95.06 $\pm$ 0.30} \\" in tex
    assert tex.count(r"\midrule") == 2


def test_write_table_csv_round_trip_and_atomic_outputs(tmp_path):
    frame = long_frame([(m, g, s, 80 + 3 * i + s) for i, m in enumerate(["msp", "grood"])
                        for g in ("near", "far") for s in range(2)])
    frame["variant"] = ["" if m == "msp" else "grood" for m in frame["method"]]
    for index in ("method", ["method", "variant"]):
        table = aggregate(frame, index=index, columns=["benchmark", "group"])
        csv_path, tex_path = write_table(table, tmp_path, "table2")
        assert csv_path == tmp_path / "table2.csv" and tex_path.read_text().startswith(r"\begin{table}")
        back = read_table_csv(csv_path)
        pd.testing.assert_frame_equal(back, table, check_dtype=False, check_index_type=False,
                                      check_column_type=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table2.csv", "table2.tex"]  # no temporary files left


# ---------------------------------------------------------------------------------------------- runs
def test_collect_runs_merges_run_folders(tmp_path):
    write_run(tmp_path / "job1" / "grood" / "seed0", seed=0, near=(90.0, 88.0))
    write_run(tmp_path / "job2" / "grood" / "seed1", seed=1, near=(92.0, 90.0))
    write_run(tmp_path / "job3" / "deeper" / "msp", method="msp", seed=0, near=(80.0, 80.0),
              extra={"k": 3, "nested": {"a": 1}}, backbone={"name": "resnet20"},  # fields grood.pipeline adds
              method_params={"temperature": 2.0}, timings_s={"method:msp": 1.5})
    long = collect_runs(tmp_path)
    assert len(long) == 3 * 6
    assert set(long["run_dir"]) == {"job1/grood/seed0", "job2/grood/seed1", "job3/deeper/msp"}
    near = long[(long["dataset"] == "nearood")].set_index("run_dir")
    assert near.loc["job1/grood/seed0", "AUROC"] == pytest.approx(89.0)
    assert near.loc["job2/grood/seed1", "AUROC"] == pytest.approx(91.0)
    assert near.loc["job3/deeper/msp", "extra.k"] == 3 and near.loc["job3/deeper/msp", "extra.nested.a"] == 1
    assert math.isnan(near.loc["job1/grood/seed0", "extra.k"])
    assert near.loc["job3/deeper/msp", "architecture"] == "resnet20"  # run.json backbone beats config
    assert near.loc["job3/deeper/msp", "params.temperature"] == 2.0
    assert near.loc["job3/deeper/msp", "timings_s.method:msp"] == 1.5
    assert near.loc["job3/deeper/msp", "variant"] == "" and near.loc["job3/deeper/msp", "prototype"] == ""
    assert set(long.loc[long["dataset"] == "tin", "group"]) == {"near"}
    assert set(long.loc[long["dataset"] == "farood", "group"]) == {"far"}
    grood = long[long["method"] == "grood"]
    assert set(grood["architecture"]) == {"resnet18_32x32"} and set(grood["prototype"]) == {"mixup"}
    assert set(grood["variant"]) == {"grood"} and set(grood["ncp_accuracy"]) == {95.0}
    assert long.loc[long["method"] == "msp", "ncp_accuracy"].isna().all()
    for column in ["benchmark", "method", "seed", "checkpoint", "experiment", "dataset", *METRICS,
                   "ncp_accuracy", "id_accuracy"]:
        assert column in long.columns
    table = aggregate(long[long["dataset"].isin(["nearood", "farood"])], index="method", columns="group")
    assert table.loc["grood", ("near", "mean")] == pytest.approx(90.0)
    assert table.loc["grood", ("near", "n")] == 2 and table.loc["msp", ("near", "n")] == 1


def test_collect_runs_errors_on_duplicate_runs_naming_both_folders(tmp_path):
    first = write_run(tmp_path / "a" / "run")
    second = write_run(tmp_path / "b" / "run", near=(10.0, 10.0))
    with pytest.raises(DuplicateRunError) as error:
        collect_runs(tmp_path)
    assert str(first) in str(error.value) and str(second) in str(error.value)


def test_runs_differing_in_extra_are_not_duplicates(tmp_path):
    write_run(tmp_path / "k1", extra={"k": 1})
    write_run(tmp_path / "k3", extra={"k": 3})
    assert sorted(collect_runs(tmp_path)["extra.k"].unique()) == [1, 3]


def test_collect_runs_errors_on_malformed_files(tmp_path):
    folder = write_run(tmp_path / "bad")
    run_json = folder / "run.json"
    run_json.write_text('{"benchmark": "cifar10",\n "method": "grood",\n "seed": 0,\n}')
    with pytest.raises(RunFormatError, match=re.escape(str(run_json)) + ".*line 4"):
        collect_runs(tmp_path)
    run = {"benchmark": "cifar10", "method": "grood", "groups": {"near": ["cifar100"]}}
    run_json.write_text(json.dumps(run))
    with pytest.raises(RunFormatError, match=re.escape(str(run_json)) + ".*missing key 'seed'"):
        collect_runs(tmp_path)
    run_json.write_text(json.dumps({**run, "seed": "zero"}))
    with pytest.raises(RunFormatError, match="'seed' must be an integer"):
        collect_runs(tmp_path)

    folder2 = write_run(tmp_path / "bad_metrics" / "x")
    (folder / "run.json").unlink()
    metrics = folder2 / "metrics.csv"
    lines = metrics.read_text().splitlines()
    lines[3] = lines[3].replace("95.0000", "oops", 1)  # AUROC of mnist on line 4
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFormatError, match=re.escape(str(metrics)) + r".*line 4, column 'AUROC'.*'oops'"):
        collect_runs(tmp_path)
    metrics.write_text("dataset,AUROC\nnearood,1\n")
    with pytest.raises(RunFormatError, match=r"missing column\(s\) \['FPR@95'"):
        collect_runs(tmp_path)
    metrics.unlink()
    with pytest.raises(RunFormatError, match="metrics.csv: missing"):
        collect_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        collect_runs(tmp_path / "bad")


# --------------------------------------------------------------------------------- the paper's numbers
def _strip(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).strip()


def _parse_cell(cell: str) -> tuple[float, float] | None:
    text = _strip(cell)
    mean = re.match(r"(\d+(?:\.\d+)?)", text)
    if mean is None:
        return None
    std = re.search(r"\\pm\s*(\d+(?:\.\d+)?)", text)
    return float(mean.group(1)), float(std.group(1)) if std else math.nan


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Tab-separated blocks of the paper's markdown, named by the table they hold."""
    blocks, current = [], []
    for line in text.splitlines():
        if "\t" in line:
            current.append(line.split("\t"))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    markers = {"1": "Local Oracle", "2": "ID Acc.", "3": "ViT-B-16", "4": "Model Variant", "5": "Std (Far OOD)",
               "6": "OOD Prototype", "7": "Near-OOD AUROC (%)"}
    named = {}
    for number, marker in markers.items():
        matches = [b for b in blocks if any(marker in "\t".join(row) for row in b[:3])]
        assert len(matches) == 1, f"table {number}: {len(matches)} blocks contain {marker!r}"
        named[number] = matches[0]
    return named


#: The paper's column / row headers -> our names.
PLACES = {"CIFAR-10": "cifar10", "Cifar-10": "cifar10", "CIFAR-100": "cifar100", "Cifar-100": "cifar100",
          "ImageNet-200": "imagenet200", "ImageNet-1K": "imagenet", "ImageNet": "imagenet",
          "ViT-B-16": "vit_b_16", "Swin-T": "swin_t",
          "Local Oracle": "Local Oracle", "Global Oracle": "Global Oracle", "SOTA": "SOTA"}
#: Tables whose columns name no benchmark: the one their caption names (Table 7's is not stated).
CAPTION_PLACE = {"4": "cifar10", "5": "cifar100", "7": ""}


def _column_headers(block: list[list[str]]) -> tuple[dict[int, str], dict[int, str]]:
    """From the header rows (rows without numbers): cell position -> place (spanning headers filled right)
    and position -> group (``near`` / ``far``)."""
    places: dict[int, str] = {}
    groups: dict[int, str] = {}
    for row in block:
        cells = [_strip(c) for c in row]
        if any(_parse_cell(c) for c in row[1:]):
            continue
        if any(c in PLACES for c in cells):
            current = None
            for position, cell in enumerate(cells):
                current = PLACES.get(cell, current) if cell else current
                if current is not None:
                    places[position] = current
        for position, cell in enumerate(cells):
            if "Near" in cell or "Far" in cell:
                groups[position] = "near" if "Near" in cell else "far"
    return places, groups


def _cells_from_markdown(number: str, block: list[list[str]], paper_names: list[str]) -> dict[tuple, tuple]:
    """(place, paper_name, group) -> (mean, std) for every number of one markdown table; the layout (which
    column is which benchmark / architecture and near / far) is read from the table's own header rows."""
    places, groups = _column_headers(block)
    cells = {}
    for row in block:
        label = _strip(row[0])
        values = [(position, _parse_cell(cell)) for position, cell in enumerate(row) if position > 0]
        values = [(p, v) for p, v in values if v is not None]
        if not values:
            continue  # a header row
        for position, value in values:
            if number == "1":  # rows are benchmarks, column headers are the methods
                key = (PLACES[label], places[position], groups[position])
            else:
                names = [n for n in paper_names if label.startswith(n)]
                names = [n for n in names if len(n) == max(map(len, names))]
                assert len(names) == 1, f"table {number}: row {label!r} matches paper names {names}"
                place = places[position] if places else CAPTION_PLACE[number]
                group = "" if label.startswith(("ID Acc.", "NCP Acc.")) else groups[position]
                key = (place, names[0], group)
            assert key not in cells, f"table {number}: {key} twice"
            cells[key] = value
    return cells


def test_paper_csvs_match_the_paper_text_cell_by_cell(shared_dir):
    """Every number typed into grood/reporting/paper_numbers/table*.csv against the paper's markdown, and back."""
    text = (shared_dir / "paper" / "grood-paper.md").read_text()
    blocks = _markdown_tables(text)
    for number, block in blocks.items():
        paper = load_paper_table(number)
        place = "architecture" if number == "3" else "benchmark"
        typed = {(r[place], r["paper_name"], r["group"]): (r["mean"], r["std"]) for r in paper.to_dict("records")}
        if number == "5":  # Table 5 prints only a spread: typed into `std`
            typed = {k: (s, math.nan) for k, (m, s) in typed.items()}
        parsed = _cells_from_markdown(number, block, sorted(set(paper["paper_name"])))
        assert set(typed) == set(parsed), f"table {number}: cells differ {set(typed) ^ set(parsed)}"
        for key, (mean, std) in parsed.items():
            assert typed[key][0] == mean, f"table {number} {key}: typed {typed[key][0]}, paper {mean}"
            assert (math.isnan(typed[key][1]) and math.isnan(std)) or typed[key][1] == std, \
                f"table {number} {key}: typed std {typed[key][1]}, paper {std}"


def test_paper_tables_load_with_expected_rows(shared_dir):
    text = (shared_dir / "paper" / "grood-paper.md").read_text()
    # values read from the paper's own sentences, not typed twice
    far, near = re.search(r"GROOD achieves (\d+\.\d+)% AUROC on far-OOD detection and (\d+\.\d+)% on near-OOD",
                          text).groups()
    table2 = load_paper_table(2)
    grood = table2[(table2["method"] == "grood") & (table2["benchmark"] == "cifar10") & (table2["metric"] == "AUROC")]
    assert grood.set_index("group")["mean"].to_dict() == {"near": float(near), "far": float(far)}
    cifar10_near = float(re.search(r"on CIFAR-10 \((\d+\.\d+)%\)", text).group(1))
    assert grood.set_index("group").loc["near", "mean"] == cifar10_near
    cifar100_far = float(re.search(r"state-of-the-art Far-OOD AUROC \((\d+\.\d+)%\)", text).group(1))
    grood100 = table2.query("method == 'grood' and benchmark == 'cifar100' and group == 'far'")
    assert grood100["mean"].item() == cifar100_far
    times = re.search(r"\*\*(\d+)\*\* seconds and \*\*(\d+)\*\* seconds.*?took (\d+) seconds for CIFAR-10 and "
                      r"(\d+) seconds for CIFAR-100", text).groups()
    a4 = load_paper_table("A4").set_index(["method", "benchmark"])["mean"]
    assert [a4["grood", "cifar10"], a4["grood", "cifar100"], a4["knn", "cifar10"], a4["knn", "cifar100"]] == \
        [float(t) for t in times]
    sizes = {"1": 24, "2": 8 + 19 * 8, "3": 20, "4": 10, "5": 10, "6": 40, "7": 8, "A4": 4}
    for number in PAPER_TABLES:
        table = load_paper_table(number)
        assert len(table) == sizes[number]
        assert set(table["method"]) <= {"", "sota", "openmax", "msp", "odin", "mds", "ebo", "react", "mls",
                                         "gradnorm", "gaia", "cider", "vim", "knn", "dice", "ash", "she", "gen",
                                         "fdbd", "nci", "grood"}
    assert set(table2["method"]) - {""} == {"openmax", "msp", "odin", "mds", "ebo", "react", "mls", "gradnorm",
                                            "gaia", "cider", "vim", "knn", "dice", "ash", "she", "gen", "fdbd",
                                            "nci", "grood"}
    assert table2.loc[table2["paper_name"] == "fbdb", "method"].unique().tolist() == ["fdbd"]
    assert set(load_paper_table(6)["prototype"]) == {"mixup", "corrupted", "val_ood", "uniform", "mean"}


def test_paper_loader_rejects_a_mistyped_file(tmp_path):
    source = load_paper_table(3)
    path = tmp_path / "table3.csv"
    source.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("90.84", "9O.84")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"table3.csv: line 3, column 'mean': '9O.84'"):
        load_paper_table(3, paper_dir=tmp_path)
    source.assign(method=source["method"].replace({"knn": "msp"})).to_csv(path, index=False)
    with pytest.raises(ValueError, match="paper_name 'KNN' is method 'knn'"):
        load_paper_table(3, paper_dir=tmp_path)


# ------------------------------------------------------------------------------------------ paper vs ours
def test_paper_vs_ours_differences_and_missing_cells():
    paper = load_paper_table(3)
    ours = paper[paper["method"].isin(["grood", "knn"])][["benchmark", "architecture", "method", "variant",
                                                           "prototype", "metric", "group", "mean"]].copy()
    ours["mean"] = ours["mean"] + 1.5
    extra = ours.iloc[[0]].assign(method="msp", variant="", prototype="", mean=70.0)
    ours = pd.concat([ours.iloc[1:], extra])  # drop one cell, add one the paper does not have
    compared = paper_vs_ours(ours, paper)
    assert list(compared.columns[-4:]) == ["paper_name", "ours", "paper", "diff"]
    assert len(compared) == len(paper) + 1  # every paper cell, plus ours-only msp
    both = compared.dropna(subset=["ours", "paper"])
    assert len(both) == 7 and np.allclose(both["diff"], 1.5)
    dropped = compared[(compared["method"] == "grood") & (compared["architecture"] == "vit_b_16")
                       & (compared["group"] == "near")]
    assert math.isnan(dropped["ours"].item()) and math.isnan(dropped["diff"].item())
    assert dropped["paper"].item() == paper.query("method == 'grood' and architecture == 'vit_b_16' "
                                                  "and group == 'near'")["mean"].item()
    ours_only = compared[compared["method"] == "msp"]
    assert ours_only["ours"].item() == 70.0 and math.isnan(ours_only["paper"].item())
    assert compared["paper"].notna().sum() == len(paper)
    with pytest.raises(ValueError, match="several rows for one key"):
        paper_vs_ours(pd.concat([ours, ours]), paper)


def test_summarize_runs_matches_paper_layout_and_compares(tmp_path):
    for seed, near in enumerate([(91.0, 91.2), (91.2, 91.4)]):
        write_run(tmp_path / f"grood{seed}", seed=seed, near=near, far=(94.0, 93.6))
        write_run(tmp_path / f"knn{seed}", method="knn", seed=seed, near=(90.0, 90.0), far=(93.0, 93.0))
    summary = summarize_runs(collect_runs(tmp_path))
    row = summary.query("method == 'grood' and group == 'near' and metric == 'AUROC'")
    assert row["mean"].item() == pytest.approx(91.2) and row["std"].item() == pytest.approx(0.1)
    assert row["n"].item() == 2 and row["prototype"].item() == "mixup" and row["variant"].item() == "grood"
    assert summary.query("metric == 'ID_ACC'")["mean"].item() == 95.0
    assert summary.query("metric == 'NCP_ACC'")["method"].item() == "grood"
    compared = paper_vs_ours(summary, load_paper_table(2))
    cell = compared.query("method == 'grood' and benchmark == 'cifar10' and group == 'near' and metric == 'AUROC'")
    assert cell["diff"].item() == pytest.approx(91.2 - cell["paper"].item()) and cell["ours"].item() == pytest.approx(91.2)
    id_acc = compared.query("metric == 'ID_ACC' and benchmark == 'cifar10'")
    assert id_acc["diff"].item() == pytest.approx(95.0 - id_acc["paper"].item()) and id_acc["ours"].item() == 95.0
    ncp = compared.query("metric == 'NCP_ACC' and benchmark == 'cifar10'")
    assert ncp["diff"].item() == pytest.approx(95.0 - ncp["paper"].item()) and ncp["ours"].item() == 95.0
    sota = sota_rows(summary)
    assert sota.set_index("group")["source"].to_dict() == {"near": "knn", "far": "knn"}
    quoted = paper_rows(load_paper_table(2), ["cider", "gaia"])
    wide = widen(pd.concat([summary[summary["metric"] == "AUROC"], quoted]).query("benchmark == 'cifar10'"),
                 index="method", columns=["benchmark", "group"])
    assert list(wide.index) == ["grood", "knn", "gaia", "cider"]
    assert wide.loc["cider", ("cifar10", "far", "mean")] == quoted.query(
        "method == 'cider' and benchmark == 'cifar10' and group == 'far'")["mean"].item()
    assert math.isnan(wide.loc["cider", ("cifar10", "far", "n")])


# --------------------------------------------------------------------------------------- Table 5 and A.4
def test_std_over_last_epochs_and_table5(tmp_path):
    rows = []
    for method, wobble in (("grood", 0.1), ("vim", 1.0)):
        for epoch in range(1, 21):
            for dataset in ("nearood", "farood"):
                grood = method == "grood"
                rows.append({"benchmark": "cifar100", "architecture": "resnet18_32x32", "method": method,
                             "variant": "grood" * grood, "prototype": "mixup" * grood, "seed": 0,
                             "dataset": dataset, "extra.epoch": epoch,
                             "AUROC": (0.0 if epoch <= 5 else 80.0) + wobble * (epoch % 2)})
    long = pd.DataFrame(rows)
    stds = std_over_last_epochs(long, last_n=15)
    assert len(stds) == 4
    assert stds.set_index(["method", "group"]).loc[("vim", "near"), "std"] == pytest.approx(np.std([80, 81] * 7 + [81]))
    assert set(stds["first_epoch"]) == {6} and set(stds["last_epoch"]) == {20}
    table = table5(long)
    assert table.loc["grood", ("near", "AUROC_std", "mean")] == pytest.approx(np.std([80, 80.1] * 7 + [80.1]))
    assert r"\textbf{0.05}" in to_latex_table(table, metric="AUROC_std", environment=None)  # lower is better
    compared = paper_vs_ours(stds.assign(metric="AUROC"), load_paper_table(5), value="std")
    cell = compared.set_index(["method", "group"]).loc[("grood", "near")]
    assert cell["ours"] == pytest.approx(np.std([80, 80.1] * 7 + [80.1]))
    assert cell["diff"] == pytest.approx(cell["ours"] - cell["paper"]) and not math.isnan(cell["paper"])
    assert compared["paper"].notna().sum() == 10 and compared["ours"].notna().sum() == 4
    with pytest.raises(ValueError, match="need at least 25"):
        std_over_last_epochs(long, last_n=25)


def test_inference_time_table():
    records = pd.DataFrame({"method": ["grood", "grood", "knn"], "index": ["ivf", "ivf", "exact"],
                            "benchmark": ["cifar10"] * 3, "seconds": [130.0, 132.0, 434.0]})
    table = inference_time_table(records)
    assert table.loc[("grood", "ivf"), ("cifar10", "seconds", "mean")] == 131.0
    assert table.loc[("grood", "ivf"), ("cifar10", "seconds", "n")] == 2
    tex = to_latex_table(table, metric="seconds", decimals=0, environment=None)
    assert r"\textbf{131 $\pm$ 1}" in tex


# ----------------------------------------------------------------------------------------------- figures
def _assert_written(paths: list[Path]) -> None:
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert all(p.stat().st_size > 1000 for p in paths)
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_figure2_tsne(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, -1], 15)
    centres = np.eye(8)[np.where(labels < 0, 3, labels)] * 5
    features = centres + rng.normal(size=(60, 8))
    gradients = rng.normal(size=(60, 8))
    _assert_written(figure_tsne(features, gradients, labels, features[labels < 0].mean(0), tmp_path,
                                subsample=40, perplexity=5.0, max_iter=250))
    with pytest.raises(ValueError, match="perplexity"):
        figure_tsne(features, gradients, labels, np.zeros(8), tmp_path, subsample=4, perplexity=5.0)


def test_figure3_auroc_per_epoch(tmp_path):
    long = pd.DataFrame([{"method": m, "seed": s, "dataset": d, "extra.epoch": e, "AUROC": 80 + e + s}
                         for m in ("grood", "vim") for s in (0, 1) for d in ("nearood", "farood") for e in range(5)])
    curves = epoch_curves(long)
    assert len(curves) == 2 * 2 * 5 and curves["AUROC"].iloc[0] == 80.5  # mean over the two seeds
    _assert_written(figure_auroc_per_epoch(curves, tmp_path))


def test_figure4_score_densities(tmp_path):
    rng = np.random.default_rng(0)
    scores = {b: {"id": rng.normal(2, 1, 300), "near": rng.normal(0, 1, 200), "far": rng.normal(-2, 1, 200)}
              for b in ("cifar10", "cifar100")}
    _assert_written(figure_score_densities(scores, tmp_path, max_points=100))
    with pytest.raises(ValueError, match="NaN"):
        figure_score_densities({"cifar10": {"id": [np.nan, 1.0]}}, tmp_path)


def test_figure5_auroc_vs_k(tmp_path):
    data = pd.DataFrame([{"k": k, "group": g, "seed": s, "AUROC": 90 - k + s}
                         for k in (1, 2, 5, 10) for g in ("near", "far") for s in range(2)])
    _assert_written(figure_auroc_vs_k(data, tmp_path))


def test_class_colours_are_distinct_and_never_grey():
    from grood.reporting.figures import class_colours

    for count in (2, 10, 18):
        colours = class_colours(count)
        assert len(colours) >= count and len(set(colours[:count])) == count
        for red, green, blue in colours:
            assert max(red, green, blue) - min(red, green, blue) > 0.1  # not a grey like the OOD points

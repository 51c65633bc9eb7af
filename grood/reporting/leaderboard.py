"""A results folder as entries of OpenOOD's leaderboard (``make leaderboard RUN=<results folder>``).

OpenOOD v1.5's leaderboard submissions (its ``.github/ISSUE_TEMPLATE/adding-leaderboard-entry.md``) give,
per entry: Training, Postprocessor, Near-OOD AUROC, Far-OOD AUROC, ID Accuracy, Outlier Data, Model Arch.
and an Additional Description. :func:`leaderboard_rows` reads them from a results folder: ``run.json`` +
``metrics.csv`` of one method, or one per method below a ``method=all`` folder (``summary.json``).

- Near/Far-OOD AUROC: the ``nearood`` / ``farood`` rows of ``metrics.csv`` (percent); ID Accuracy: run.json
  ``id_accuracy`` (percent, the classifier's ID test accuracy).
- Training: ``training`` (the caller says; OpenOOD's v1.5 checkpoints: ``CrossEntropy``). grood's results
  folders do not record how a checkpoint was trained.
- Outlier Data: ``No``, except GROOD with an OOD prototype built from OOD images (``val_ood``: OpenOOD's
  validation OOD images; the oracles: OOD test images), which the entry says. No method here trains with
  outliers.
- A method whose run failed is an entry with its error in the description and no numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from grood.reporting.runs import RunFormatError

COLUMNS = ["Training", "Postprocessor", "Near-OOD AUROC", "Far-OOD AUROC", "ID Accuracy", "Outlier Data",
           "Model Arch.", "Additional Description"]

#: grood's method names -> the postprocessor names of OpenOOD's leaderboard.
POSTPROCESSOR_NAMES = {
    "grood": "GROOD", "openmax": "OpenMax", "msp": "MSP", "odin": "ODIN", "mds": "MDS", "ebo": "EBO",
    "react": "ReAct", "mls": "MLS", "gradnorm": "GradNorm", "vim": "ViM", "knn": "KNN", "dice": "DICE",
    "ash": "ASH", "she": "SHE", "gen": "GEN", "fdbd": "fDBD", "nci": "NCI", "rmds": "RMDS", "scale": "SCALE",
}
#: grood's parameter name -> OpenOOD's, per method, where they differ (OpenOOD v1.5's
#: ``configs/postprocessors/<name>.yml`` ``postprocessor_args``; OpenMax's ``openmax_postprocessor.py``
#: constants): the entry's description gives a method's parameters in OpenOOD's spelling. The one place
#: that knows them: grood's configs, run hashes and ``run.json`` use grood's names only.
OPENOOD_PARAM_NAMES: dict[str, dict[str, str]] = {
    "knn": {"k": "K"},
    "gen": {"m": "M"},
    "openmax": {"tail_size": "weibull_tail", "alpha": "weibull_alpha"},
}


def openood_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``method`` with OpenOOD's names (:data:`OPENOOD_PARAM_NAMES`)."""
    names = OPENOOD_PARAM_NAMES.get(method, {})
    return {names.get(key, key): value for key, value in params.items()}


#: grood's backbone names -> the architecture names of OpenOOD's leaderboard.
ARCHITECTURE_NAMES = {
    "resnet18_32x32": "ResNet18", "resnet18_224x224": "ResNet18", "resnet50": "ResNet50", "vit_b_16": "ViT-B-16",
    "swin_t": "Swin-T", "resnet20": "ResNet20", "resnet32": "ResNet32", "resnet44": "ResNet44",
    "resnet56": "ResNet56",
}
_OUTLIER_PROTOTYPES = {"val_ood": "Yes (GROOD's OOD prototype: OpenOOD's validation OOD images)",
                       "local_oracle": "Yes (oracle OOD prototype from the OOD test set)",
                       "global_oracle": "Yes (oracle OOD prototype from the other OOD test sets)"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFormatError(f"{path}: unreadable ({error})") from None


def _auroc(metrics: pd.DataFrame, row: str, path: Path) -> float:
    if row not in metrics.index or "AUROC" not in metrics.columns:
        raise RunFormatError(f"{path}: no {row!r} row with an AUROC column (OpenOOD's table)")
    return float(metrics.loc[row, "AUROC"])


def _entry(run_dir: Path, training: str) -> dict[str, Any]:
    record = _read_json(run_dir / "run.json")
    for key in ("method", "benchmark"):
        if key not in record:
            raise RunFormatError(f"{run_dir / 'run.json'}: missing key {key!r}")
    method = record["method"]
    config = record.get("config") or {}
    backbone = (record.get("backbone") or {}).get("name") or (config.get("backbone") or {}).get("name") or ""
    prototype = (record.get("extra") or {}).get("prototype")
    params = openood_params(method, record.get("method_params") or {})
    description = [f"ID: {record['benchmark']}", f"seed {record.get('seed')}"]
    if prototype:
        source = (record.get("extra") or {}).get("prototype_source")
        description.append(f"OOD prototype {prototype}" + (f" ({source})" if source else ""))
    if params:
        description.append(", ".join(f"{k}={v}" for k, v in sorted(params.items())))
    if record.get("checkpoint"):
        description.append(f"checkpoint {Path(record['checkpoint']).name}")
    entry = {
        "Training": training,
        "Postprocessor": POSTPROCESSOR_NAMES.get(method, method),
        "Near-OOD AUROC": math.nan, "Far-OOD AUROC": math.nan, "ID Accuracy": math.nan,
        "Outlier Data": _OUTLIER_PROTOTYPES.get(prototype, "No") if method == "grood" else "No",
        "Model Arch.": ARCHITECTURE_NAMES.get(backbone, backbone),
    }
    if record.get("status", "ok") != "ok":
        entry["Additional Description"] = "; ".join(description + [f"FAILED: {record.get('error', 'no reason')}"])
        return entry
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.is_file():
        raise RunFormatError(f"{metrics_path}: missing (a finished run has run.json and metrics.csv)")
    metrics = pd.read_csv(metrics_path, index_col=0)
    if "id_accuracy" not in record:
        raise RunFormatError(f"{run_dir / 'run.json'}: missing key 'id_accuracy'")
    entry.update({"Near-OOD AUROC": _auroc(metrics, "nearood", metrics_path),
                  "Far-OOD AUROC": _auroc(metrics, "farood", metrics_path),
                  "ID Accuracy": float(record["id_accuracy"]),
                  "Additional Description": "; ".join(description)})
    return entry


def leaderboard_rows(results_dir: str | Path, training: str = "CrossEntropy") -> pd.DataFrame:
    """One leaderboard entry per method of ``results_dir`` (columns :data:`COLUMNS`).

    ``results_dir``: a method's results folder (``run.json``), or a ``method=all`` folder (``summary.json``;
    one entry per method it lists, in the order ``method=all`` runs them).

    Raises:
        RunFormatError: no ``run.json`` / ``summary.json`` there, or one that lacks what an entry needs
            (the message names the file).
    """
    root = Path(results_dir)
    if (root / "summary.json").is_file():
        methods = (_read_json(root / "summary.json").get("methods") or {})
        if not methods:
            raise RunFormatError(f"{root / 'summary.json'}: lists no method")
        missing = [name for name in methods if not (root / name / "run.json").is_file()]
        if missing:
            raise RunFormatError(f"{root}: summary.json lists {missing} but their folders hold no run.json")
        from grood.detectors.registry import DETECTORS

        order = ["grood", *(name for name in DETECTORS if name != "grood")]  # the order method=all runs them
        ranked = sorted(methods, key=lambda name: (order.index(name) if name in order else len(order), name))
        entries = [_entry(root / name, training) for name in ranked]
    elif (root / "run.json").is_file():
        entries = [_entry(root, training)]
    else:
        raise RunFormatError(f"{root}: neither run.json (one method's results) nor summary.json (method=all) is "
                             "there; give RUN=<the results folder grood run wrote>")
    return pd.DataFrame(entries, columns=COLUMNS)


def format_leaderboard(rows: pd.DataFrame) -> str:
    """``rows`` as a markdown table (numbers with two decimals, as OpenOOD prints them; ``-`` for none)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.2f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for _, row in rows.iterrows()]
    return "\n".join(lines)

"""What eval.run writes: results.json, results.md (our numbers beside the paper's table), a
confusion-matrix PNG and a per-layer accuracy PNG."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from schemas.io import atomic_path, write_text_atomic  # noqa: E402

# SPEC.md section 2: the paper's accuracies (%), column -> row -> value.
PAPER_COLUMNS = ("ESC-50", "ESC-10", "DCASE 2013")
PAPER_ROWS: dict[str, tuple[float | None, float | None, float | None]] = {
    "SVM on MFCC": (39.6, 67.5, None),
    "Conv autoencoder": (39.9, 74.3, None),
    "SoundNet-8 (KL, both teachers)": (74.2, 92.2, 88.0),
    "Human": (81.3, 95.7, None),
}
DATASET_COLUMN = {"esc50": "ESC-50", "esc10": "ESC-10"}


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def results_markdown(results: Mapping[str, Any]) -> str:
    """The paper's table with our rows added in this dataset's column, then the folds."""
    column = DATASET_COLUMN.get(results["dataset"])
    columns = list(PAPER_COLUMNS) if column else [*PAPER_COLUMNS, results["dataset"]]
    column = column or results["dataset"]
    lines = [
        f"# {results['dataset']}: {results['description']}",
        "",
        f"Protocol `{results['protocol']}`, {results['num_clips']} clips, "
        f"folds {results['folds']}. Accuracy (%), ours in **bold**; the other rows are the "
        "paper's (Aytar, Vondrick & Torralba 2016).",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, values in PAPER_ROWS.items():
        cells = [*values, *([None] * (len(columns) - len(values)))]
        lines.append(f"| {name} (paper) | " + " | ".join(_pct(v) for v in cells) + " |")
    for layer, entry in results["layers"].items():
        cells = [f"**{100 * entry['accuracy_mean']:.1f}**" if c == column else "" for c in columns]
        lines.append(f"| {results['description']}, {layer} | " + " | ".join(cells) + " |")
    folds = results["folds"]
    lines += ["", "Per fold (%):", "", "| layer | " + " | ".join(f"fold {f}" for f in folds)]
    lines[-1] += " | mean | C |"
    lines.append("|---|" + "---|" * (len(folds) + 2))
    for layer, entry in results["layers"].items():
        accs = " | ".join(f"{100 * a:.1f}" for a in entry["accuracy_per_fold"])
        cs = ", ".join(f"{c:g}" for c in entry["C_per_fold"])
        lines.append(f"| {layer} | {accs} | {100 * entry['accuracy_mean']:.1f} | {cs} |")
    return "\n".join(lines) + "\n"


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(
    path: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], title: str
) -> None:
    size = max(6.0, 0.22 * len(classes) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=np.arange(len(classes)),
        display_labels=list(classes),
        xticks_rotation="vertical",
        include_values=len(classes) <= 20,
        colorbar=False,
        ax=ax,
    )
    ax.set_title(title)
    save_figure(fig, path)


def plot_layers(path: Path, accuracy: Mapping[str, float], title: str) -> None:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(accuracy) + 2), 4))
    names, values = list(accuracy), [100 * v for v in accuracy.values()]
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    save_figure(fig, path)

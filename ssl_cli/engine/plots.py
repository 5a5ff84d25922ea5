"""The pictures every run writes (matplotlib, file-only Agg backend): training curves and the confusion matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402


def confusion_figure(matrix, class_names: Sequence[str], title: Optional[str] = None):
    """The confusion matrix (rows: true class, columns: predicted), each row's share as colour, counts written in."""
    counts = np.asarray(matrix, dtype=float)
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = min(max(4.0, 0.55 * n + 2.0), 14.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [str(c) for c in class_names]
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names), default=0) > 3 else 0, ha="right"
                  if max(map(len, names), default=0) > 3 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:  # the counts stay legible up to about 30 classes
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8 if n > 12 else 9,
                            color="white" if share[i, j] > 0.5 else "black")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else 0.0
    ax.set_title(f"{title + ': ' if title else ''}accuracy {100 * accuracy:.1f} % on {int(total)} images")
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix, class_names: Sequence[str], path, title: Optional[str] = None) -> Path:
    """Writes the confusion matrix (rows: true class) as a PNG at `path`."""
    fig = confusion_figure(matrix, class_names, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def read_metrics(path) -> List[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: List[dict], key: str):
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


# Subplots of curves.png: title, y label, then (metrics.jsonl key, legend label) pairs. A panel without data is left out.
PANELS = [
    ("losses", "loss", [("train/loss", "total"), ("train/sup_loss", "supervised"),
                        ("train/unsup_loss", "unsupervised")]),
    ("learning rate", "lr", [("lr", "lr")]),
    ("pseudo-labels", "rate", [("train/mask_rate", "mask rate (confident share)"),
                               ("train/pseudo_label_acc", "pseudo-label accuracy (of the confident)")]),
    ("accuracy", "accuracy", [("test/accuracy", "test"), ("val/accuracy", "validation"),
                              ("test/knn_accuracy", "test, kNN")]),
]


def plot_training_curves(metrics_jsonl_path, path) -> Optional[Path]:
    """curves.png from metrics.jsonl: losses, learning rate, mask rate and pseudo-label accuracy, accuracies
    against step. Other training figures of the method (its adaptive statistics) join the losses' panel when
    they are losses and are otherwise left to TensorBoard. None when there is nothing to plot yet."""
    rows = read_metrics(metrics_jsonl_path)
    if not rows:
        return None
    keys = {k for r in rows for k in r}
    panels = []
    for title, ylabel, lines in PANELS:
        extra = []
        if title == "losses":  # a method's own losses (e.g. train/contrastive_loss)
            named = {k for k, _ in lines}
            extra = [(k, k[len("train/"):].replace("_", " ")) for k in sorted(keys)
                     if k.startswith("train/") and k.endswith("loss") and k not in named]
        present = [(k, label) for k, label in lines + extra if k in keys and _series(rows, k)[0]]
        if present:
            panels.append((title, ylabel, present))
    columns = 2 if len(panels) > 1 else 1
    grid_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(6.0 * columns, 3.6 * grid_rows), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes.flat, panels):
        for key, label in lines:
            steps, values = _series(rows, key)
            ax.plot(steps, values, marker="o" if len(steps) < 25 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if title in ("accuracy", "pseudo-labels"):  # fractions: never drawn beyond [0, 1], zoomed on the data
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, -0.02), min(high, 1.02))
        if title == "losses" and all(v > 0 for k, _ in lines for v in _series(rows, k)[1]):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_mean_std_curves(curves: Dict[str, List[List[tuple]]], path, title: str, ylabel: str = "test accuracy (%)"):
    """One line per name: the mean over its runs (each a list of (step, value)) at the steps they share,
    with a ± one standard deviation band (sample std over the runs, as the report's tables)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in sorted(curves.items()):
        shared = sorted(set.intersection(*(set(s for s, _ in run) for run in runs))) if runs else []
        if not shared:
            continue
        values = np.array([[dict(run)[s] for s in shared] for run in runs], dtype=float)
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        line, = ax.plot(shared, 100 * mean, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(shared, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_reliability(bins: Sequence[dict], ece: float, path, title: Optional[str] = None) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration,
    with the share of images per bin below. `bins` as engine.inference.calibration returns them."""
    low = np.array([b["low"] for b in bins])
    width = np.array([b["high"] - b["low"] for b in bins])
    count = np.array([b["count"] for b in bins], dtype=float)
    accuracy = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins])
    confidence = np.array([b["confidence"] if b["confidence"] is not None else 0.0 for b in bins])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(low, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    gap_bottom = np.minimum(accuracy, confidence)
    top.bar(low, np.abs(confidence - accuracy) * (count > 0), width=width, bottom=gap_bottom, align="edge",
            color="tab:red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title or f"reliability (ECE {ece:.4f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(low, count / max(count.sum(), 1.0), width=width, align="edge", edgecolor="black", color="grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

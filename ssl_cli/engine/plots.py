"""PNG figures of an evaluation: the confusion matrix as a heat map and the reliability diagram.

matplotlib's file-only backend (Agg): no display is needed, and nothing opens a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402


def plot_confusion_matrix(matrix, class_names: Sequence[str], path, title: Optional[str] = None) -> Path:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    m = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side, side))
    # Colour by the share of each true class, so that rare classes read as clearly as common ones.
    rows = m.sum(axis=1, keepdims=True)
    shares = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels=list(class_names), rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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

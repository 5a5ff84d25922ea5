"""Uncertainty sampling from a trained model's predictions, for later rounds: `margin` picks the smallest
gap between the two most likely classes, `entropy` the most spread-out predictions."""

from __future__ import annotations

import numpy as np

from ssl_cli.selection.base import Selection, register


def _least(score: np.ndarray, budget: int, already: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64).copy()
    score[already] = np.inf
    return np.argsort(score, kind="stable")[:budget].astype(np.int64)


@register("margin")
def select_margin(features, budget, already, seed, probabilities=None, **_) -> Selection:
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return Selection(_least(top2[:, 1] - top2[:, 0], budget, already))


@register("entropy")
def select_entropy(features, budget, already, seed, probabilities=None, **_) -> Selection:
    p = np.clip(probabilities, 1e-12, 1.0)
    return Selection(_least((p * np.log(p)).sum(axis=1), budget, already))  # sum p log p = -entropy

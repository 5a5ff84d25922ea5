"""ProbCover (Yehuda et al., NeurIPS 2022): greedy maximum coverage of delta-balls on L2-normalised features.

A point covers every point closer than delta (an open ball, so it always covers itself). Each pick is
the point whose ball holds the most points not yet covered; already-labeled points cover their balls
from the start. delta is chosen without labels, by the paper's purity heuristic: with k-means
pseudo-labels (K = the number of classes), the largest delta for which at least 95 % of the balls
hold one pseudo-label only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from ssl_cli.selection.base import Selection, l2_normalize, register
from ssl_cli.selection.typiclust import cluster

PURITY = 0.95
CHUNK = 2048  # rows of the distance matrix held at once


def distance_chunks(x: torch.Tensor):
    for start in range(0, len(x), CHUNK):
        yield start, torch.cdist(x[start:start + CHUNK], x)


def purity_delta(features: np.ndarray, pseudo_labels: np.ndarray, purity: float = PURITY) -> float:
    """The largest delta whose balls are pure (one pseudo-label) for at least `purity` of the points.

    A ball around i of radius delta is pure exactly when delta <= the distance from i to the nearest point
    with another pseudo-label, so the answer is a quantile of those distances.
    """
    x, labels = torch.from_numpy(l2_normalize(features)), torch.from_numpy(pseudo_labels)
    nearest_other = torch.empty(len(x))
    for start, d in distance_chunks(x):
        same = labels[start:start + CHUNK, None] == labels[None, :]
        nearest_other[start:start + len(d)] = d.masked_fill(same, math.inf).min(dim=1).values
    ordered = nearest_other.sort().values
    need = math.ceil(purity * len(x))  # at least this many balls must be pure
    delta = float(ordered[len(x) - need])
    return delta if math.isfinite(delta) else 2.0  # one pseudo-label only: every ball is pure (2 = the diameter)


def ball_graph(features: np.ndarray, delta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edges (centre, covered) of the delta-ball graph: dist(centre, covered) < delta (int32: the graph of a
    large pool can hold hundreds of millions of edges)."""
    x = torch.from_numpy(l2_normalize(features))
    centres, covered = [], []
    for start, d in distance_chunks(x):
        rows, cols = torch.nonzero(d < delta, as_tuple=True)
        centres.append((rows + start).int())
        covered.append(cols.int())
    return torch.cat(centres), torch.cat(covered)


def coverage(features: np.ndarray, chosen: np.ndarray, delta: float) -> float:
    """Share of the points closer than delta to at least one chosen point."""
    if len(chosen) == 0:
        return 0.0
    x = torch.from_numpy(l2_normalize(features))
    d = torch.cdist(x, x[torch.as_tensor(chosen)])
    return float((d < delta).any(dim=1).float().mean())


@register("probcover")
def select_probcover(features, budget, already, seed, probabilities=None, num_classes: Optional[int] = None,
                     delta: Optional[float] = None, **_) -> Selection:
    n = len(features)
    delta_from = "given" if delta is not None else "purity heuristic"
    if delta is None:
        k = num_classes or (probabilities.shape[1] if probabilities is not None else 10)
        delta = purity_delta(features, cluster(l2_normalize(features), k, seed))
    centres, covered = ball_graph(features, delta)
    is_covered = torch.zeros(n, dtype=torch.bool)
    for i in already:  # the labeled points' balls are covered already
        is_covered[covered[centres == int(i)]] = True
    taken = torch.zeros(n, dtype=torch.bool)
    taken[torch.as_tensor(already, dtype=torch.long)] = True
    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(budget):
        keep = ~is_covered[covered]  # edges that still cover something new
        centres, covered = centres[keep], covered[keep]
        gain = torch.bincount(centres.long(), minlength=n).masked_fill(taken, -1)
        if int(gain.max()) > 0:
            chosen = int(gain.argmax())
            is_covered[covered[centres == chosen]] = True
        else:  # everything is covered: the rest of the budget goes to random unpicked points
            chosen = int(rng.choice(np.flatnonzero(~taken.numpy())))
        taken[chosen] = True
        picks.append(chosen)
    picks = np.asarray(picks, dtype=np.int64)
    reached = coverage(features, np.concatenate([np.asarray(already, dtype=np.int64), picks]), delta)
    return Selection(picks, {"delta": round(float(delta), 6), "delta_from": delta_from,
                            "coverage": round(reached, 6)})

"""Greedy k-center (the core-set of Sener & Savarese 2018): each pick is the point farthest from every
point picked or labeled so far, which shrinks the largest distance from any point to its nearest pick."""

from __future__ import annotations

import numpy as np
import torch

from ssl_cli.selection.base import Selection, register


@register("kcenter")
def select_kcenter(features, budget, already, seed, probabilities=None, **_) -> Selection:
    x = torch.from_numpy(features)
    nearest = torch.full((len(x),), float("inf"))
    for start in range(0, len(already), 1024):  # distance to the nearest labeled point
        d = torch.cdist(x, x[torch.as_tensor(already[start:start + 1024])])
        nearest = torch.minimum(nearest, d.min(dim=1).values)
    picks = []
    for i in range(budget):
        if i == 0 and len(already) == 0:  # nothing labeled yet: start at a seeded random point
            chosen = int(np.random.default_rng(seed).integers(len(x)))
        else:
            chosen = int(nearest.argmax())
        picks.append(chosen)
        nearest = torch.minimum(nearest, torch.cdist(x, x[chosen:chosen + 1])[:, 0])
        nearest[chosen] = -1.0  # never again
    radius = float(nearest.clamp_min(0).max())
    return Selection(np.asarray(picks, dtype=np.int64), {"radius": round(radius, 6)})

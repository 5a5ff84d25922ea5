"""Uniformly random images from the pool (no class balance: a real pool has no labels to balance by)."""

from __future__ import annotations

import numpy as np

from ssl_cli.selection.base import Selection, register


@register("random")
def select_random(features, budget, already, seed, probabilities=None, **_) -> Selection:
    free = np.setdiff1d(np.arange(len(features)), already)
    return Selection(np.random.default_rng(seed).choice(free, size=budget, replace=False))

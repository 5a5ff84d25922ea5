"""Uniformly random images from the pool (no class balance: a real pool has no labels to balance by).

The label-free baseline of every selector: `dataset.labeled_selection=uniform` in a run, `--strategy uniform`
in ssl-select. It ignores the features, so a run needs no feature run for it.
"""

from __future__ import annotations

import numpy as np

from ssl_cli.selection.base import Selection, register


@register("uniform")
def select_uniform(features, budget, already, seed, probabilities=None, **_) -> Selection:
    free = np.setdiff1d(np.arange(len(features)), already)
    return Selection(np.random.default_rng(seed).choice(free, size=budget, replace=False))

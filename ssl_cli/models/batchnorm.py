"""Forward passes that must not move BatchNorm's running statistics (VAT's perturbed copies of a batch).

In training mode a BatchNorm layer normalises with the batch's own statistics and also folds them into its
running mean and variance, the ones evaluation uses. Passes over artificial inputs (an adversarially
perturbed batch) would pull those towards inputs that never occur; USB's `bn_controller` saves and restores
them around such passes; this context manager keeps them from being written. The normalisation itself is unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def batchnorm_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Inside the block, forward passes leave every BatchNorm's running_mean/var and batch count as they were.

    The layers stop tracking (`track_running_stats=False`) for the block: in training mode they then
    normalise with the batch statistics and write nothing. Saving and restoring the buffers instead
    would change, in place, tensors that autograd saved for the backward pass of the earlier passes.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True

"""The exponential moving average of a model's weights: the trainer evaluates it, methods use it as a teacher.

One implementation serves both: the trainer's `trainer.ema_decay` copy that is evaluated and saved, and
any method that needs an EMA teacher (Mean Teacher) or target network asks for the same class.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay used at `step`.

    With warm-up the decay grows as (1 + t) / (10 + t) until it reaches `decay`: otherwise the random
    initial weights keep a share of decay**t in the average (37 % after 1,000 steps at 0.999), which
    ruins short runs. Long runs (FixMatch's 2^20 steps) are unaffected.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """Exponential moving average of the weights (buffers such as BatchNorm statistics are copied)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, eval_mode: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model)
        self.model.train(not eval_mode)  # a teacher evaluated as is; BYOL's target keeps batch statistics
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._params = [p for p in self.model.parameters()]
        self._source_params = None
        self._pairs_buffers = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, decay: Optional[float] = None) -> None:
        """Moves the average towards `model`'s weights, at `decay` if given (a method's own schedule)."""
        if self._source_params is None:
            self._source_params = list(model.parameters())
            self._pairs_buffers = list(zip(self.model.buffers(), model.buffers()))
        if decay is None:
            decay = ema_decay_at(step, self.decay, self.warmup)
        # One fused call for all parameters: ema = ema + (1 - decay) * (param - ema).
        torch._foreach_lerp_(self._params, self._source_params, 1.0 - decay)
        for ema_b, b in self._pairs_buffers:
            ema_b.copy_(b)

"""Optimizers, learning-rate schedules and the EMA of the weights used for evaluation."""

from __future__ import annotations

import copy
import math
from typing import List

import torch
from torch import nn

from ssl_cli.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "warmup_cosine")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on conv and linear weights only; none on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_optimizer_options(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                            nesterov: bool = True, betas=(0.9, 0.999)) -> None:
    """The `optim` group's values, checked before anything is built (also from config.check_config)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    # Upper bounds far beyond any useful value: they keep float32 arithmetic in the optimiser finite.
    if not 0 < lr <= 10:
        raise UserError(f"optim.lr must be in (0, 10], got {lr}")
    if not 0 <= weight_decay < 1:
        raise UserError(f"optim.weight_decay must be in [0, 1), got {weight_decay}")
    if name == "sgd" and not 0 <= momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1), got {momentum}")
    if name in ("adam", "adamw"):
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise UserError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {list(betas)}")


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = True, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    check_optimizer_options(name, lr, weight_decay, momentum, nesterov, betas)
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_factor(step: int, schedule: str, max_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at `step`.

    cosine: FixMatch's cos(7*pi*k / (16*K)), which ends at about 0.2 of the base rate rather than 0.
    warmup_cosine: linear warm-up over `warmup_steps`, then the same cosine over the remaining steps.
    """
    if schedule == "constant":
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule in ("cosine", "warmup_cosine"):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return math.cos(7 * math.pi * progress / 16)
    raise UserError(f"unknown scheduler '{schedule}'; choose one of: {', '.join(SCHEDULES)}")


def build_scheduler(optimizer, name: str, max_steps: int, warmup_steps: int = 0):
    if warmup_steps < 0:
        raise UserError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    lr_factor(0, name, max_steps, warmup_steps)  # validates the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k, name, max_steps, warmup_steps))


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay used at `step`.

    With warm-up the decay grows as (1 + t) / (10 + t) until it reaches `decay`: otherwise the random
    initial weights keep a share of decay**t in the average (37 % after 1,000 steps at 0.999), which
    ruins short runs. Long runs (FixMatch's 2^20 steps) are unaffected.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """Exponential moving average of the weights (buffers such as BatchNorm statistics are copied)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"trainer.ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._params = [p for p in self.model.parameters()]
        self._source_params = None
        self._pairs_buffers = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._source_params is None:
            self._source_params = list(model.parameters())
            self._pairs_buffers = list(zip(self.model.buffers(), model.buffers()))
        decay = ema_decay_at(step, self.decay, self.warmup)
        # One fused call for all parameters: ema = ema + (1 - decay) * (param - ema).
        torch._foreach_lerp_(self._params, self._source_params, 1.0 - decay)
        for ema_b, b in self._pairs_buffers:
            ema_b.copy_(b)

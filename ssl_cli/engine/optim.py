"""Optimisers and learning-rate schedules, each registered with its declared options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, option
from ssl_cli.core.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "optim")
SCHEDULERS: Registry = Registry("scheduler", "scheduler")


@dataclass
class OptimOptions(Options):
    group = "optim"
    # Upper bounds far beyond any useful value: they keep float32 arithmetic in the optimiser finite.
    lr: float = option(0.03, "learning rate", above=0, high=10)
    weight_decay: float = option(0.0005, "L2 weight decay on conv and linear weights (never on BatchNorm or biases)",
                                 low=0, below=1)


@dataclass
class SGDOptions(OptimOptions):
    momentum: float = option(0.9, "momentum", low=0, below=1)
    nesterov: bool = option(True, "Nesterov momentum")


@dataclass
class AdamOptions(OptimOptions):
    lr: float = option(0.001, "learning rate", above=0, high=10)
    weight_decay: float = option(0.0, "weight decay (coupled for adam, decoupled for adamw)", low=0, below=1)
    betas: List[float] = option([0.9, 0.999], "the two moment decays, each in [0, 1)")

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {self.betas}")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on conv and linear weights only; none on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register("sgd", SGDOptions)
def sgd(model: nn.Module, o: SGDOptions) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, FixMatch's settings."""
    return torch.optim.SGD(param_groups(model, o.weight_decay), lr=o.lr, momentum=o.momentum,
                           nesterov=o.nesterov and o.momentum > 0)


@OPTIMIZERS.register("adam", AdamOptions)
def adam(model: nn.Module, o: AdamOptions) -> torch.optim.Optimizer:
    """Adam."""
    return torch.optim.Adam(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas))


@dataclass
class AdamWOptions(AdamOptions):
    weight_decay: float = option(0.01, "decoupled weight decay", low=0, below=1)


@OPTIMIZERS.register("adamw", AdamWOptions)
def adamw(model: nn.Module, o: AdamWOptions) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas))


def build_optimizer(model: nn.Module, name: str, options: OptimOptions) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name)(model, options)


# --------------------------------------------------------------------------- schedules


@dataclass
class ScheduleOptions(Options):
    group = "scheduler"
    warmup_steps: int = option(0, "linear warm-up over this many steps", low=0)


@dataclass
class WarmupScheduleOptions(ScheduleOptions):
    warmup_steps: int = option(100, "linear warm-up over this many steps", low=0)


def _cosine(step: int, max_steps: int, warmup_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return math.cos(7 * math.pi * progress / 16)


@SCHEDULERS.register("cosine", ScheduleOptions)
def cosine(step: int, max_steps: int, warmup_steps: int) -> float:
    """FixMatch's cos(7 pi k / 16 K), which ends at about 0.2 of the base rate rather than 0."""
    return _cosine(step, max_steps, warmup_steps)


@SCHEDULERS.register("warmup_cosine", WarmupScheduleOptions)
def warmup_cosine(step: int, max_steps: int, warmup_steps: int) -> float:
    """Linear warm-up over warmup_steps, then FixMatch's cosine over the remaining steps."""
    return _cosine(step, max_steps, warmup_steps)


@SCHEDULERS.register("constant", ScheduleOptions)
def constant(step: int, max_steps: int, warmup_steps: int) -> float:
    """The base rate throughout (after an optional warm-up)."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def lr_factor(step: int, schedule: str, max_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at `step`."""
    return SCHEDULERS.get(schedule)(step, max_steps, warmup_steps)


def build_scheduler(optimizer, name: str, max_steps: int, options: ScheduleOptions):
    schedule = SCHEDULERS.get(name)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: schedule(k, max_steps, options.warmup_steps))

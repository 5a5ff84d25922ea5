"""Optimisers and learning-rate schedules, each registered with its declared options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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
    backbone_lr_scale: float = option(1.0, "the backbone's learning rate relative to the classifier's and the "
                                           "method's heads (fine-tuning a pretrained backbone: e.g. 0.1)",
                                      above=0, high=1)
    layer_decay: float = option(1.0, "layer-wise learning-rate decay: a layer k levels below the classifier "
                                     "trains at layer_decay^k times the rate (1: off; for backbones that know "
                                     "their layers: backbone=timm)", above=0, high=1)


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


def lr_scales(backbone: Optional[nn.Module], o: OptimOptions) -> Dict[int, float]:
    """id(parameter) -> its learning-rate multiplier: backbone_lr_scale and layer_decay on the backbone.

    The classifier and everything outside the backbone (projection heads) train at the base rate.
    """
    if backbone is None or (o.backbone_lr_scale == 1 and o.layer_decay == 1):
        return {}
    layer_of = backbone.layer_ids() if o.layer_decay != 1 else None
    if o.layer_decay != 1 and layer_of is None:
        raise UserError(f"optim.layer_decay={o.layer_decay} needs a backbone that knows its layers "
                        f"(backbone=timm); this one does not: set optim.layer_decay=1")
    deepest = max(layer_of.values()) if layer_of else 0
    scales = {}
    for name, p in backbone.named_parameters():
        if name.startswith("classifier."):
            continue
        depth_scale = o.layer_decay ** (deepest - layer_of[name]) if layer_of else 1.0
        scales[id(p)] = o.backbone_lr_scale * depth_scale
    return scales


def param_groups(model: nn.Module, weight_decay: float, lr: Optional[float] = None,
                 scales: Optional[Dict[int, float]] = None) -> List[dict]:
    """Weight decay on conv and linear weights only; none on BatchNorm parameters and biases. Parameters
    with a learning-rate scale go into groups of their own (after the two base groups, which always exist,
    so an optimiser state saved before scales existed still loads)."""
    scales = scales or {}
    groups: Dict[Tuple[float, bool], List[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((scales.get(id(p), 1.0), p.ndim > 1), []).append(p)
    out = []
    for (scale, decay), params in groups.items():
        group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:  # else the optimiser's lr (without scales)
            group["lr"] = lr * scale
        out.append(group)
    return out


@OPTIMIZERS.register("sgd", SGDOptions)
def sgd(groups: List[dict], o: SGDOptions) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, FixMatch's settings."""
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)


@OPTIMIZERS.register("adam", AdamOptions)
def adam(groups: List[dict], o: AdamOptions) -> torch.optim.Optimizer:
    """Adam."""
    return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas))


@dataclass
class AdamWOptions(AdamOptions):
    weight_decay: float = option(0.01, "decoupled weight decay", low=0, below=1)


@OPTIMIZERS.register("adamw", AdamWOptions)
def adamw(groups: List[dict], o: AdamWOptions) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def build_optimizer(model: nn.Module, name: str, options: OptimOptions, backbone: Optional[nn.Module] = None
                    ) -> torch.optim.Optimizer:
    """The optimiser `name` over `model`'s trainable parameters; `backbone` (part of `model`) gets the
    backbone and layer-wise learning-rate scales."""
    groups = param_groups(model, options.weight_decay, options.lr, lr_scales(backbone, options))
    return OPTIMIZERS.get(name)(groups, options)


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

"""Where this process stands in a multi-process run, and the collectives methods and losses may call.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for every worker; without them the run is one process
and every helper here is the identity (no process group, no communication, today's behaviour exactly).

Helpers for statistics over the whole (global) batch:

- `all_gather(x)`: every rank's `x` concatenated along dim 0, in rank order, without gradient. Use it
  for statistics that update state (distribution alignment's running mean, FreeMatch/SoftMatch EMAs,
  memory banks): gather in `after_step` or the `update` of the state, then reduce as in one process.
- `all_gather_with_grad(x)`: the same, with gradient flowing back to each rank's own slice
  (SimCLR's negatives come from the whole global batch).
- `all_reduce_sum(x)`: the sum over ranks (a new tensor).
"""

from __future__ import annotations

import os
from typing import List

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True inside a started process group of more than one rank."""
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Rank 0 writes the run directory, logs, metrics and checkpoints; the others only train."""
    return rank() == 0


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` (same shape on each) concatenated along dim 0 in rank order; no gradient."""
    if not is_distributed():
        return x
    parts: List[torch.Tensor] = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: every rank's rows. Backward: each rank's loss sends gradient to every rank's rows, so the
    gradients are summed over ranks and each rank keeps the slice of its own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """As `all_gather`, and the gradient of each rank's slice flows back to the rank that owns it."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x.contiguous())


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out

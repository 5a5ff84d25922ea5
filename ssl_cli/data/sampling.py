"""Which images each step trains on: a pure function of (seed, stream, step), so resuming needs no state."""

from __future__ import annotations

from typing import Dict

import torch

from ssl_cli.core.seeding import mix


class StepSampler:
    """Batches as consecutive slices of per-epoch random permutations of `n` items.

    The batch at a step is a pure function of (seed, stream, step): resuming at step k needs no
    sampler state, and a resumed run draws exactly the batches an uninterrupted one would. The
    permutations are drawn on the CPU (then copied to `device` once per epoch, without a host sync), so
    the schedule is the same on every device and a streaming source can compute it on the CPU.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, device: torch.device):
        self.n, self.batch_size, self.seed, self.stream, self.device = n, batch_size, seed, stream, device
        self._perms: Dict[int, torch.Tensor] = {}
        self._gen = torch.Generator()

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._gen.manual_seed(mix(self.seed, self.stream, epoch))
            perm = torch.randperm(self.n, generator=self._gen)
            if self.device.type == "cuda":
                perm = perm.pin_memory().to(self.device, non_blocking=True)
            self._perms[epoch] = perm.to(self.device)
        return self._perms[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos, remaining, parts = step * self.batch_size, self.batch_size, []
        while remaining > 0:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, remaining)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos, remaining = pos + take, remaining - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

"""Self-supervised losses: SimCLR's NT-Xent, BYOL's regression loss and rotation prediction.

All in float32 even under bf16 autocast: autocast would run the similarity matmul in bf16 (about three
significant digits), and NT-Xent's logits are similarities divided by a small temperature.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ssl_cli.core.distributed import all_gather_with_grad, is_distributed, rank


def _float32(like: torch.Tensor):
    """Autocast off on `like`'s device type: the matmuls inside run in the inputs' float32."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _positives(n: int, device) -> torch.Tensor:
    """For 2N stacked embeddings (view 1 then view 2), the index of each one's other view."""
    return torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(device)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2N embeddings of N image pairs.

    Each embedding's positive is the other view of its image; the other 2N - 2 embeddings are its
    negatives. Rows are L2-normalised, similarities divided by `temperature`, and the loss averaged
    over all 2N anchors.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    if is_distributed():
        return _nt_xent_global(z, n, temperature)
    with _float32(z):
        logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    return F.cross_entropy(logits, _positives(n, z.device))


def _nt_xent_global(z: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    """NT-Xent of this rank's 2n anchors against the embeddings of every rank (the whole global batch).

    Each rank holds [view 1; view 2] of its n images; gathered in rank order, this rank's rows start at
    rank * 2n. DDP averages the ranks' losses' gradients, which is the loss over all global anchors.
    """
    everyone = all_gather_with_grad(z)
    offset = rank() * 2 * n
    with _float32(z):
        logits = z @ everyone.t() / temperature
    own = torch.arange(2 * n, device=z.device)
    logits[own, offset + own] = float("-inf")
    return F.cross_entropy(logits, offset + _positives(n, z.device))


def contrastive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Share of anchors whose most similar other embedding is their positive (a training monitor)."""
    z = F.normalize(torch.cat([z1, z2]).detach().float(), dim=1)
    n = z1.shape[0]
    with _float32(z):
        sim = (z @ z.t()).fill_diagonal_(float("-inf"))
    return (sim.argmax(dim=1) == _positives(n, z.device)).float().mean()


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(prediction, target), averaged over rows; no gradient into the target."""
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def rotation_prediction(rotation_logits: torch.Tensor, turns: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotation prediction (Gidaris et al. 2018; ReMixMatch's and CRMatch's self-supervised term): the mean
    cross-entropy of the 4-way head's logits to the number of quarter turns, and the head's accuracy."""
    loss = F.cross_entropy(rotation_logits.float(), turns)
    accuracy = (rotation_logits.detach().argmax(dim=1) == turns).float().mean()
    return loss, accuracy

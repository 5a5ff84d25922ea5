"""Loss functions as pure functions of tensors, each checked against hand-computed values in tests."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of integer targets; computed in float32 even under bf16 autocast."""
    return F.cross_entropy(logits.float(), targets)


def confident_pseudo_labels(logits: torch.Tensor, confidence_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (argmax) and a 0/1 mask of those whose softmax probability reaches the threshold.

    The logits are detached: pseudo-labels are targets, no gradient flows into them.
    """
    probs = torch.softmax(logits.detach().float(), dim=1)
    confidence, pseudo_labels = probs.max(dim=1)
    mask = (confidence >= confidence_threshold).float()
    return pseudo_labels, mask


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over ALL rows, masked rows counting as zero (FixMatch's normalisation)."""
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    per_row = F.cross_entropy(logits.float(), targets, reduction="none")
    return (per_row * mask).mean()


def linear_rampup(step: int, rampup_steps: int) -> float:
    """Weight that grows linearly from 0 to 1 over `rampup_steps`, then stays 1."""
    if rampup_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, step / rampup_steps))


def pseudo_label_accuracy(pseudo_labels: torch.Tensor, mask: torch.Tensor, true_labels: torch.Tensor):
    """(correct, counted): how many confident pseudo-labels match the hidden true labels (-1 = unknown).

    Returned as a numerator / denominator pair so it can be summed over steps without a host sync.
    """
    known = (true_labels >= 0).float() * mask
    correct = ((pseudo_labels == true_labels).float() * known).sum()
    return correct, known.sum()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2N embeddings of N image pairs.

    Each embedding's positive is the other view of its image; the other 2N - 2 embeddings are its
    negatives. Rows are L2-normalised, similarities divided by `temperature`, and the loss averaged
    over all 2N anchors.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def contrastive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Share of anchors whose most similar other embedding is their positive (a training monitor)."""
    z = F.normalize(torch.cat([z1, z2]).detach().float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.t()).fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return (sim.argmax(dim=1) == positives).float().mean()


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(prediction, target), averaged over rows; no gradient into the target."""
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()

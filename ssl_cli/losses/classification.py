"""Cross-entropy with hard (class index) or soft (probability) targets, always computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 one-hot rows, by a scatter: F.one_hot checks the labels' range on the host (a sync on CUDA)."""
    return torch.zeros(labels.shape[0], num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)


def _per_row(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row: integer targets [B] or soft targets [B, C] (rows summing to 1)."""
    if targets.is_floating_point():
        return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; computed in float32 even under bf16 autocast."""
    if not targets.is_floating_point():
        return F.cross_entropy(logits.float(), targets)
    return _per_row(logits, targets).mean()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over ALL rows, each row weighted by `mask` (FixMatch's normalisation).

    `mask` is 0/1 for a confidence threshold, or any weight in [0, 1] (SoftMatch's).
    """
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    return (_per_row(logits, targets) * mask).mean()


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

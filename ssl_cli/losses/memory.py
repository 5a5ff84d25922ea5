"""Memories of past steps that methods compare new images with, and the pseudo-labels read from them.

FIFOQueue       a ring of rows (CoMatch's embeddings and probabilities, a queue of batch means)
LabeledBank     one embedding and label per labeled image (SimMatch's labeled memory buffer)
QueueAlignment  distribution alignment over the mean predictions of the last L steps (USB's
                DistAlignQueueHook, used by SimMatch and CoMatch)

State is buffers, written only by `push`/`update`, which a method calls from `after_step` with that
step's detached tensors; the writes are index_copy_ / torch.where on fixed shapes, so nothing is read
back to the host (no sync on CUDA) and a checkpoint restores them exactly. The functions below them are
pure: similarities to a memory and the pseudo-labels SimMatch and CoMatch propagate through it.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ssl_cli.core.distributed import all_gather


class FIFOQueue(nn.Module):
    """`size` rows of each named field, overwritten oldest first; `ptr` is the next row to write.

    `filled` counts the rows written so far (at most `size`): rows [0, filled) hold data, since the
    ring starts at row 0. The caller gathers across ranks before `push` (what it pushes may be a mean).
    """

    def __init__(self, size: int, widths: Dict[str, int]):
        super().__init__()
        self.size, self.names = size, tuple(widths)
        for name, width in widths.items():
            self.register_buffer(name, torch.zeros(size, width))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def valid(self) -> torch.Tensor:
        """Bool [size]: which rows hold data."""
        return torch.arange(self.size, device=self.ptr.device) < self.filled

    @torch.no_grad()
    def push(self, **rows: torch.Tensor) -> None:
        n = next(iter(rows.values())).shape[0]
        if n > self.size:  # shapes are host values: no sync
            raise ValueError(f"cannot push {n} rows into a queue of {self.size}")
        positions = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size  # wraps around
        for name in self.names:
            buffer = getattr(self, name)
            buffer.index_copy_(0, positions, rows[name].detach().to(buffer.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))


class LabeledBank(nn.Module):
    """SimMatch's labeled memory buffer: an L2-normalised embedding and the label of every labeled image.

    Each update moves an image's entry to normalise(m · old + (1 - m) · new) (USB's classic-CV bank,
    m = 0.7; m = 0 replaces it). An image drawn twice in one step gets the mean of its new embeddings,
    so the result does not depend on the order of duplicate writes. The entries start random (fixed
    seed: building the bank leaves the global random stream alone) with label 0, as in USB.
    """

    def __init__(self, size: int, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        start = torch.randn(size, dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("embeddings", F.normalize(start, dim=1))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        embeddings, labels, indices = all_gather(embeddings.float()), all_gather(labels), all_gather(indices)
        counts = torch.zeros(self.labels.shape[0], device=indices.device).index_add_(
            0, indices, torch.ones_like(indices, dtype=torch.float32))
        sums = torch.zeros_like(self.embeddings).index_add_(0, indices, embeddings)
        new = sums / counts.clamp_min(1.0)[:, None]
        moved = F.normalize(self.momentum * self.embeddings + (1 - self.momentum) * new, dim=1)
        self.embeddings.copy_(torch.where(counts[:, None] > 0, moved, self.embeddings))
        self.labels.index_copy_(0, indices, labels)  # duplicates carry the same label


class QueueAlignment(nn.Module):
    """Distribution alignment (ReMixMatch, sec. 3.2) against the mean of the last `length` batch means.

    align(p) = normalise(p · (target + 1e-6) / (mean + 1e-6)); until the first update the mean is 0 and
    a uniform target leaves p unchanged. USB's hook pushes the current batch before aligning it; here the
    queue moves in after_step, so a step is aligned with the steps before it.
    """

    def __init__(self, num_classes: int, length: int):
        super().__init__()
        self.history = FIFOQueue(length, {"means": num_classes})
        self.register_buffer("target", torch.full((num_classes,), 1.0 / num_classes))  # USB: uniform

    def model_probs(self) -> torch.Tensor:
        return self.history.means.sum(dim=0) / self.history.filled.clamp_min(1)

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        aligned = probs * (self.target + 1e-6) / (self.model_probs() + 1e-6)
        return aligned / aligned.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        self.history.push(means=all_gather(probs).mean(dim=0, keepdim=True))


def similarity_logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """a · bᵀ / T in float32 (autocast off: bf16 keeps ~3 digits, and T is small)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a.float() @ b.float().t() / temperature


def simmatch_pseudo_labels(probs: torch.Tensor, similarity: torch.Tensor, bank_labels: torch.Tensor,
                           alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """SimMatch's label propagation (Zheng et al. 2022, sec. 3.3), as USB computes it.

    probs [B, C]: the weak view's (aligned) class probabilities; similarity [B, K]: softmax over the
    labeled bank of the weak embedding's similarities; bank_labels [K].
    Unfolding: each bank entry's similarity scaled by the class probability of its label, renormalised
    over K: the instance pseudo-label q̂ (target of the in-bank loss).
    Aggregation: the similarities summed per class, mixed into the class pseudo-label,
    p̂ = α p + (1 - α) Σ_{k: label k = c} similarity_k. Returns (q̂, p̂).
    """
    labels = bank_labels.expand(probs.shape[0], -1)
    unfolded = similarity * probs.gather(1, labels)
    unfolded = unfolded / unfolded.sum(dim=1, keepdim=True)
    aggregated = torch.zeros_like(probs).scatter_add_(1, labels, similarity)
    return unfolded, alpha * probs + (1 - alpha) * aggregated


def memory_smoothed(probs: torch.Tensor, embeddings: torch.Tensor, queue: FIFOQueue, alpha: float,
                    temperature: float) -> torch.Tensor:
    """CoMatch's memory-smoothed pseudo-labels (Li et al. 2021, sec. 3.3): q = α p + (1 - α) Σ_k a_k q_k.

    a = softmax over the queue's filled rows of embedding · queue embedding / T; q_k the queued
    probabilities (the queue's fields `feats` and `probs`). Unchanged while the queue is empty.
    """
    logits = similarity_logits(embeddings, queue.feats, temperature)
    logits = logits.masked_fill(~queue.valid()[None, :], float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all rows -inf (empty queue): 0
    smoothed = alpha * probs + (1 - alpha) * weights @ queue.probs
    return torch.where(queue.filled > 0, smoothed, probs)


def pseudo_label_graph(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """CoMatch's pseudo-label graph (Li et al. 2021, sec. 3.2): W = q qᵀ with self-loops (diagonal 1),
    edges below `threshold` cut, each row normalised to sum to 1 (the contrastive target)."""
    graph = probs @ probs.t()
    graph = graph.fill_diagonal_(1.0)
    graph = graph * (graph >= threshold).float()
    return graph / graph.sum(dim=1, keepdim=True)


def graph_contrastive_loss(z0: torch.Tensor, z1: torch.Tensor, graph: torch.Tensor, temperature: float) -> torch.Tensor:
    """CoMatch's contrastive loss (Li et al. 2021, sec. 3.2): cross-entropy between each row of the graph and
    the softmax over the batch of view-0 · view-1 similarities / T (embeddings already L2-normalised)."""
    log_probs = F.log_softmax(similarity_logits(z0, z1, temperature), dim=1)
    return -(graph * log_probs).sum(dim=1).mean()

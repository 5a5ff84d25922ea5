"""Shared pieces of pseudo-labelling methods: which unlabeled images count, and what their targets are.

Stateless helpers are functions. The adaptive thresholds and distribution alignment keep running
statistics in buffers (so they are checkpointed with the method that owns them) and split into a pure
part used inside `training_step` (`mask`, `align`) and an `update` that the method calls once per
optimiser step from `after_step`, with that step's detached outputs. Nothing here reads a tensor back
to the host, so none of it costs a sync on CUDA.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ssl_cli.core.distributed import all_gather


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of detached logits in float32: pseudo-labels are targets, no gradient flows into them.

    float32 also under bf16 autocast, so the comparison with a threshold such as 0.95 is not rounded.
    """
    return torch.softmax(logits.detach().float(), dim=1)


def confident_pseudo_labels(logits: torch.Tensor, confidence_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (argmax) and a 0/1 mask of those whose probability reaches a fixed threshold."""
    confidence, pseudo_labels = probabilities(logits).max(dim=1)
    return pseudo_labels, (confidence >= confidence_threshold).float()


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T), renormalised (MixMatch, UDA): T < 1 makes the distribution more confident."""
    p = probs.pow(1.0 / temperature)
    return p / p.sum(dim=1, keepdim=True)


def symmetric_beta(alpha: float, generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """One draw of Beta(α, α) as a 0-d float32 tensor on the generator's device, from `generator` alone.

    X / (X + Y) with X, Y ~ Gamma(α, 1): torch.distributions.Beta cannot take a generator, so it would
    draw from the global stream (not restored on resume) and, on CUDA, from the CPU's (a copy per step).
    """
    device = generator.device if generator is not None else device
    gammas = torch._standard_gamma(torch.full((2,), float(alpha), device=device), generator=generator)
    return gammas[0] / (gammas[0] + gammas[1]).clamp_min(1e-30)


def mixup_draw(n: int, alpha: float, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """MixMatch's MixUp draw (Berthelot et al. 2019, eq. 8-11): λ ~ Beta(α, α), λ' = max(λ, 1 - λ), and a
    random permutation of the n rows (each row's partner), both from `generator` on its device."""
    lam = symmetric_beta(alpha, generator, device)
    device = lam.device
    return torch.maximum(lam, 1 - lam), torch.randperm(n, generator=generator, device=device)


def mix_rows(inputs: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor,
             partners: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row i becomes λ·row_i + (1 - λ)·row_partners[i], for the inputs and their (soft) targets alike."""
    lam = lam.to(inputs.device)
    partners = partners.to(inputs.device)
    mixed = lam.to(inputs.dtype) * inputs + (1 - lam.to(inputs.dtype)) * inputs[partners]
    mixed_targets = lam * targets + (1 - lam) * targets[partners]
    return mixed, mixed_targets


def mixup(inputs: torch.Tensor, targets: torch.Tensor, alpha: float,
          generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixMatch's MixUp: each row mixed with a random other row, λ ~ Beta(α, α) and λ = max(λ, 1 - λ).

    The max keeps each mixed row closer to its own input, so the first rows stay "labeled" and the rest
    "unlabeled" when both kinds are mixed together. Returns (mixed inputs, mixed targets, λ). All the
    randomness comes from `generator` (the global stream without one).
    """
    lam, partners = mixup_draw(inputs.shape[0], alpha, generator, inputs.device)
    mixed, mixed_targets = mix_rows(inputs, targets, lam, partners)
    return mixed, mixed_targets, lam


class ClassWiseThreshold(nn.Module):
    """FlexMatch's curriculum (Zhang et al. 2021, eq. 6-7): each class's threshold follows how many unlabeled
    images it has already claimed.

    State: `selected_label[i]`, the last confident pseudo-label of unlabeled image i (-1: none yet).
    Learning effect σ_c = (images claimed by class c) / (the most claimed by any class, counting the
    unclaimed too during warm-up); threshold_c = τ · M(σ_c) with the convex mapping M(x) = x / (2 - x).
    """

    def __init__(self, num_unlabeled: int, num_classes: int, threshold: float, warmup: bool = True):
        super().__init__()
        self.num_classes, self.threshold, self.warmup = num_classes, threshold, warmup
        self.register_buffer("selected_label", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("learning_effect", torch.zeros(num_classes))

    def thresholds(self) -> torch.Tensor:
        sigma = self.learning_effect
        return self.threshold * sigma / (2.0 - sigma)

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        confidence, label = probs.max(dim=1)
        return (confidence >= self.thresholds()[label]).float()

    @torch.no_grad()
    def update(self, probs: torch.Tensor, indices: torch.Tensor) -> None:
        # Under torchrun every rank records every rank's images (their pool positions), so all keep one state.
        probs, indices = all_gather(probs), all_gather(indices)
        confidence, label = probs.max(dim=1)
        confident = confidence > self.threshold
        current = self.selected_label[indices]
        self.selected_label[indices] = torch.where(confident, label, current)
        # A bincount into a fixed-size vector: torch.bincount itself reads the max back to size its output
        # (a host sync on CUDA), index_add_ into num_classes + 1 slots (slot 0: unclaimed) does not.
        slots = self.selected_label + 1
        counts = torch.zeros(self.num_classes + 1, device=slots.device).index_add_(
            0, slots, torch.ones_like(slots, dtype=torch.float32))
        claimed = counts[1:]
        denominator = counts.max() if self.warmup else claimed.max()
        # Until some image is claimed (every image still unclaimed), the effects stay as they were.
        anything = counts[0] < self.selected_label.numel()
        effect = claimed / denominator.clamp_min(1.0)
        self.learning_effect.copy_(torch.where(anything, effect, self.learning_effect))


class SelfAdaptiveThreshold(nn.Module):
    """FreeMatch's thresholds (Wang et al. 2023, eq. 5-8): a global τ (EMA of the mean confidence) scaled per
    class by the EMA of the mean class probabilities, τ_c = τ · p̃_c / max(p̃)."""

    def __init__(self, num_classes: int, momentum: float = 0.999):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_probs", torch.full((num_classes,), 1.0 / num_classes))

    def thresholds(self) -> torch.Tensor:
        return self.global_threshold * self.class_probs / self.class_probs.max()

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        confidence, label = probs.max(dim=1)
        return (confidence >= self.thresholds()[label]).float()

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        probs = all_gather(probs)  # under torchrun: EMAs of the whole global batch, as in one process
        m = self.momentum
        self.global_threshold.mul_(m).add_((1 - m) * probs.max(dim=1).values.mean())
        self.class_probs.mul_(m).add_((1 - m) * probs.mean(dim=0))


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment (Berthelot et al. 2020, sec. 3.2): scale the unlabeled
    predictions by target / running mean of the model's predictions, then renormalise.

    The target is the labeled set's class prior or uniform; the running mean is an EMA over steps.
    """

    def __init__(self, target: Sequence[float], momentum: float = 0.999):
        super().__init__()
        self.momentum = momentum
        # A class with target 0 (no labeled image has it) would get probability 0 forever: a floor (USB's 1e-6).
        target = torch.as_tensor(list(target), dtype=torch.float32) + 1e-6
        self.register_buffer("target", target / target.sum())
        self.register_buffer("model_probs", torch.full_like(target, 1.0 / len(target)))

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        aligned = probs * (self.target / self.model_probs.clamp_min(1e-6))
        return aligned / aligned.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        probs = all_gather(probs)  # under torchrun: the mean over the whole global batch, as in one process
        self.model_probs.mul_(self.momentum).add_((1 - self.momentum) * probs.mean(dim=0))


def class_histogram(labels: torch.Tensor, num_classes: int, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Share of each class among `labels` (optionally weighted), a float vector summing to 1 (or all 0).

    A weighted count into a fixed-size vector instead of boolean indexing or torch.bincount (both size
    their output from the data, a host sync on CUDA).
    """
    weights = torch.ones_like(labels, dtype=torch.float32) if weights is None else weights.float()
    counts = torch.zeros(num_classes, device=labels.device).index_add_(0, labels, weights)
    return counts / counts.sum().clamp_min(1e-12)


def fairness_loss(probs_strong: torch.Tensor, mask: torch.Tensor, class_probs: torch.Tensor,
                  label_hist: torch.Tensor) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term (Wang et al. 2023, eq. 9-11): L_f = -H(SumNorm(p̃/h̃), SumNorm(p̄/h̄)).

    p̃, h̃ are the EMAs of the weak view's mean probabilities and argmax histogram; p̄, h̄ the same over the
    masked strong-view predictions of this batch. H(a, b) = -Σ a log b, so L_f = Σ a log b; its gradient
    flows through p̄ only. 0 when no image passes the mask.
    """
    num_classes = probs_strong.shape[1]
    weight = mask.float()
    count = weight.sum()
    mean_strong = (probs_strong * weight[:, None]).sum(dim=0) / count.clamp_min(1e-12)
    hist_strong = class_histogram(probs_strong.detach().argmax(dim=1), num_classes, weight)
    # 1/h with empty classes scaled by 0, as in the reference (nan_to_num of 1/0).
    inverse = torch.where(hist_strong > 0, 1.0 / hist_strong.clamp_min(1e-12), torch.zeros_like(hist_strong))
    target = class_probs / label_hist.clamp_min(1e-12)
    target = target / target.sum()
    scaled = mean_strong * inverse
    scaled = scaled / scaled.sum().clamp_min(1e-12)
    loss = (target * torch.log(scaled + 1e-12)).sum()
    return torch.where(count > 0, loss, torch.zeros_like(loss))


def relative_threshold(probs_labeled: torch.Tensor, threshold: float) -> torch.Tensor:
    """AdaMatch's relative threshold (Berthelot et al. 2022, eq. 6): τ times the labeled batch's mean confidence."""
    return threshold * probs_labeled.max(dim=1).values.mean()


def tsa_threshold(step: int, max_steps: int, schedule: str, num_classes: int) -> float:
    """UDA's training-signal annealing (Xie et al. 2020, sec. 3.2): η_t = α_t (1 - 1/C) + 1/C.

    α_t grows from 0 to 1 over training: t/T (linear), exp(5 (t/T - 1)) (exp), 1 - exp(-5 t/T) (log);
    'none' keeps η = 1 (no labeled image is masked).
    """
    if schedule == "none":
        return 1.0
    progress = min(1.0, step / max(1, max_steps))
    alpha = {"linear": progress, "exp": math.exp(5 * (progress - 1)), "log": 1 - math.exp(-5 * progress)}[schedule]
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


class TruncatedGaussianWeight(nn.Module):
    """SoftMatch's weights (Chen et al. 2023, eq. 7-9): images below the EMA mean confidence μ get the
    Gaussian weight exp(-(conf - μ)² / (2 σ² / n_σ²)); images at or above μ get 1.

    μ starts at 1/C and σ² at 1; both are EMAs of the batch's mean and unbiased variance of the confidence.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, n_sigma: float = 2.0):
        super().__init__()
        self.momentum, self.n_sigma = momentum, n_sigma
        self.register_buffer("mean", torch.tensor(1.0 / num_classes))
        self.register_buffer("variance", torch.tensor(1.0))

    def weight(self, probs: torch.Tensor) -> torch.Tensor:
        confidence = probs.max(dim=1).values
        below = torch.clamp(confidence - self.mean, max=0.0)
        return torch.exp(-below.pow(2) / (2 * self.variance / self.n_sigma ** 2))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        confidence = all_gather(probs).max(dim=1).values  # the whole global batch under torchrun
        m = self.momentum
        self.mean.mul_(m).add_((1 - m) * confidence.mean())
        if confidence.numel() > 1:  # the unbiased variance of one value is undefined
            self.variance.mul_(m).add_((1 - m) * confidence.var(unbiased=True))

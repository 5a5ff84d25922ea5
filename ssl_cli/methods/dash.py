"""Dash (Xu et al., ICML 2021, eq. 4-6 and Alg. 1): select unlabeled images by a loss threshold that decreases.

After `warmup_steps` supervised-only steps, an unlabeled image counts when the loss of its weak view
against its own pseudo-label is at most ρ_t = max(C · γ^-k · ρ̂, ρ_min), k = (t - warm-up) // update
steps (eq. 6); ρ̂ is the labeled loss at the end of the warm-up (an EMA of the warm-up's batch losses:
USB takes the evaluation loss, which would need the test set). The pseudo-label is the weak softmax
sharpened with temperature T until ρ_t reaches ρ_min, the hard argmax from then on (as USB); the
strong view is trained towards it with cross-entropy as in FixMatch.

State (buffers, moved in after_step): the labeled-loss EMA ρ̂ and the threshold ρ_t. The warm-up counts
within trainer.max_steps (USB adds it before the run).
USB's defaults (config/classic_cv/dash): γ 1.27, C 1.0001, ρ_min 0.05, 2,048 warm-up steps, T 0.5,
ρ updated every 10 epochs (10 × 1,024 steps), μ 7, λ_u 1.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, one_hot
from ssl_cli.losses.pseudo_labels import sharpen
from ssl_cli.methods.base import METHODS, SemiSupervisedOptions, StepOutput
from ssl_cli.methods.fixmatch import FixMatch

# ρ̂: the labeled loss averaged over the last warm-up steps, momentum min(this, t / (t + 1)).
LABELED_LOSS_MOMENTUM = 0.9


@dataclass
class DashOptions(SemiSupervisedOptions):
    temperature: float = option(0.5, "sharpening temperature of the soft pseudo-labels (until ρ reaches "
                                     "min_threshold)", above=0, high=1)
    warmup_steps: int = option(2048, "supervised-only steps before the unlabeled loss starts; their labeled "
                                     "loss sets the initial threshold", low=1)
    threshold_decay: float = option(1.27, "the loss threshold is divided by this at each update (γ)", low=1)
    threshold_scale: float = option(1.0001, "C in ρ = C · γ^-k · ρ̂", above=0)
    min_threshold: float = option(0.05, "the loss threshold never falls below this (ρ_min)", above=0)
    threshold_update_steps: int = option(10240, "steps between two threshold updates", low=1)


@METHODS.register("dash")
class Dash(FixMatch):
    """Dash (Xu et al. 2021): a per-image loss threshold ρ_t that decays from the warm-up's labeled loss."""

    name = "dash"
    Options = DashOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self.register_buffer("labeled_loss", torch.tensor(0.0))  # ρ̂
        self.register_buffer("loss_threshold", torch.tensor(0.0))  # ρ_t

    def hard_labels(self) -> torch.Tensor:
        """True (a 0-d tensor, no host sync) once ρ_t is at its floor."""
        return self.loss_threshold <= self.options.min_threshold

    def pseudo_targets(self, weak_probs, batch, step, context):
        hard = one_hot(weak_probs.argmax(dim=1), weak_probs.shape[1])
        return torch.where(self.hard_labels(), hard, sharpen(weak_probs, self.options.temperature))

    def unlabeled_mask(self, weak_probs, targets, batch, step, context):
        # The weak view's cross-entropy against its own target (eq. 4); xlogy: 0 · log 0 = 0.
        weak_loss = -torch.xlogy(targets, weak_probs).sum(dim=1)
        return (weak_loss <= self.loss_threshold).float()

    def adaptive_metrics(self):
        return {"loss_threshold": self.loss_threshold.clone()}

    def training_step(self, model, batch, step: int) -> StepOutput:
        if step >= self.options.warmup_steps:
            return super().training_step(model, batch, step)
        (labeled,) = batch.labeled  # warm-up: the labeled images only
        sup_loss = cross_entropy(model(labeled).logits, batch.labels)
        zero = sup_loss.detach() * 0
        return StepOutput(sup_loss, {"sup_loss": sup_loss.detach(), "unsup_loss": zero, "mask_rate": zero,
                                     "pseudo_label_acc": (zero, zero), **self.adaptive_metrics()},
                          {"sup_loss": sup_loss.detach()})

    @torch.no_grad()
    def after_step(self, model, step: int, outputs) -> None:
        super().after_step(model, step, outputs)
        o = self.options
        if step < o.warmup_steps:
            momentum = min(LABELED_LOSS_MOMENTUM, step / (step + 1))
            batch_loss = torch.stack([out.state["sup_loss"] for out in outputs]).mean()
            self.labeled_loss.mul_(momentum).add_((1 - momentum) * batch_loss)
        # The threshold the next step uses (eq. 6); during the warm-up, the one it would start from.
        updates = max(0, step + 1 - o.warmup_steps) // o.threshold_update_steps
        rho = o.threshold_scale * o.threshold_decay ** -updates * self.labeled_loss
        self.loss_threshold.copy_(rho.clamp_min(o.min_threshold))

"""FreeMatch (Wang et al., ICLR 2023, eq. 5-11): self-adaptive thresholds and a self-adaptive fairness term.

The global threshold τ_t is the EMA of the weak view's mean confidence (eq. 5-6); each class scales it by
its EMA mean probability p̃_c / max(p̃) (eq. 7-8). The fairness term (eq. 9-11) pulls the masked strong
predictions' normalised mean towards the EMA's, correcting for the histograms h̃ and h̄ of the argmax.

USB's defaults (config/classic_cv/freematch): EMA momentum 0.999, λ_f (ent_loss_ratio) 0.001, hard
labels, μ 7, λ_u 1; all statistics start at 1/C.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import SelfAdaptiveThreshold, class_histogram, fairness_loss
from ssl_cli.methods.base import METHODS
from ssl_cli.methods.fixmatch import FixMatch, FixMatchOptions


@dataclass
class FreeMatchOptions(FixMatchOptions):
    ema_momentum: float = option(0.999, "EMA momentum of the confidence, class probabilities and histogram",
                                 low=0, below=1)
    fairness_weight: float = option(0.001, "weight λ_f of the self-adaptive fairness term", low=0)


@METHODS.register("freematch")
class FreeMatch(FixMatch):
    """FreeMatch (Wang et al. 2023): self-adaptive global and class-wise thresholds, plus a fairness term."""

    name = "freematch"
    Options = FreeMatchOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        c = data.num_classes
        self.adaptive = SelfAdaptiveThreshold(c, options.ema_momentum)
        self.register_buffer("label_hist", torch.full((c,), 1.0 / c))  # h̃: EMA of the argmax histogram

    def unlabeled_mask(self, weak_probs, targets, batch, step, context):
        return self.adaptive.mask(weak_probs)

    def extra_loss(self, logits_strong, mask, context):
        if self.options.fairness_weight == 0:
            return logits_strong.new_zeros(())
        probs_strong = torch.softmax(logits_strong.float(), dim=1)
        fair = fairness_loss(probs_strong, mask, self.adaptive.class_probs, self.label_hist)
        context["metrics"]["fairness_loss"] = fair.detach()
        return self.options.fairness_weight * fair

    @torch.no_grad()
    def update_state(self, outputs) -> None:
        super().update_state(outputs)
        probs = torch.cat([o.state["weak_probs"] for o in outputs])
        self.adaptive.update(probs)
        m = self.options.ema_momentum
        self.label_hist.mul_(m).add_((1 - m) * class_histogram(probs.argmax(dim=1), probs.shape[1]))

    def adaptive_metrics(self):
        thresholds = self.adaptive.thresholds()
        return {"threshold": self.adaptive.global_threshold.clone(),
                "threshold_spread": thresholds.max() - thresholds.min()}

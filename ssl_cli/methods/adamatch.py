"""AdaMatch (Berthelot et al., ICLR 2022, eq. 4-6): distribution alignment and a relative threshold.

The weak probabilities are aligned with a target that is itself learnt, the EMA of the labeled batch's
mean prediction, over the EMA of the unlabeled one (eq. 4-5). The threshold is relative (eq. 6): τ times
the labeled batch's mean confidence, so it tracks how confident the model is on images it knows.

USB's defaults (config/classic_cv/adamatch): τ 0.95, EMA momentum 0.999, hard labels, μ 7, λ_u 1 (USB,
like us, leaves out the paper's random logit interpolation and its λ_u warm-up).
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.distributed import all_gather
from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import DistributionAlignment, relative_threshold
from ssl_cli.methods.base import METHODS, ThresholdOptions
from ssl_cli.methods.fixmatch import FixMatch


@dataclass
class AdaMatchOptions(ThresholdOptions):
    ema_momentum: float = option(0.999, "EMA momentum of the labeled and unlabeled mean predictions", low=0, below=1)


@METHODS.register("adamatch")
class AdaMatch(FixMatch):
    """AdaMatch (Berthelot et al. 2022): alignment to the labeled predictions and a relative threshold."""

    name = "adamatch"
    Options = AdaMatchOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        # The target starts uniform and follows the labeled predictions (USB's p_target_type "model").
        self.alignment = DistributionAlignment([1.0] * data.num_classes, options.ema_momentum)

    def unlabeled_mask(self, weak_probs, targets, batch, step, context):
        threshold = relative_threshold(context["probs_labeled"], self.options.confidence_threshold)
        context["metrics"]["threshold"] = threshold
        return (weak_probs.max(dim=1).values >= threshold).float()

    @torch.no_grad()
    def update_state(self, outputs) -> None:
        super().update_state(outputs)  # the unlabeled EMA
        labeled = all_gather(torch.cat([o.state["probs_labeled"] for o in outputs])).mean(dim=0)
        m = self.options.ema_momentum
        self.alignment.target.mul_(m).add_((1 - m) * labeled)

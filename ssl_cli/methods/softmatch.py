"""SoftMatch (Chen et al., ICLR 2023, eq. 7-10): soft weights instead of a hard threshold.

Every unlabeled image counts, weighted by a truncated Gaussian of its confidence: 1 at or above the EMA
mean μ_t, exp(-(conf - μ_t)² / (2 σ_t² / n_σ²)) below it (eq. 7-9), so the quantity-quality trade-off
adapts as the model grows confident. The confidence is taken after uniform distribution alignment
(sec. 3.3: the weak probabilities scaled by (1/C) / EMA mean prediction); the pseudo-label stays the
argmax of the unaligned probabilities, as in USB.

USB's defaults (config/classic_cv/softmatch): EMA momentum 0.999, n_σ 2, hard labels, μ 7, λ_u 1.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import DistributionAlignment, TruncatedGaussianWeight
from ssl_cli.methods.base import METHODS, SemiSupervisedOptions
from ssl_cli.methods.fixmatch import FixMatch


@dataclass
class SoftMatchOptions(SemiSupervisedOptions):
    ema_momentum: float = option(0.999, "EMA momentum of the confidence's mean and variance, and of the "
                                        "alignment's mean prediction", low=0, below=1)
    n_sigma: float = option(2.0, "width of the Gaussian in standard deviations (n_σ)", above=0)
    uniform_alignment: bool = option(True, "align the weak probabilities to uniform before weighting")


@METHODS.register("softmatch")
class SoftMatch(FixMatch):
    """SoftMatch (Chen et al. 2023): truncated-Gaussian weights from the EMA mean and variance of the confidence."""

    name = "softmatch"
    Options = SoftMatchOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        c = data.num_classes
        self.gaussian = TruncatedGaussianWeight(c, options.ema_momentum, options.n_sigma)
        if options.uniform_alignment:
            self.alignment = DistributionAlignment([1.0] * c, options.ema_momentum)

    def pseudo_targets(self, weak_probs, batch, step, context):
        return context["raw_weak_probs"].argmax(dim=1)

    def unlabeled_mask(self, weak_probs, targets, batch, step, context):
        return self.gaussian.weight(weak_probs)

    @torch.no_grad()
    def update_state(self, outputs) -> None:
        # The weights of this step used the statistics before it; its aligned probabilities move them now.
        super().update_state(outputs)
        self.gaussian.update(torch.cat([o.state["weak_probs"] for o in outputs]))

    def adaptive_metrics(self):
        return {"confidence_mean": self.gaussian.mean.clone(), "confidence_std": self.gaussian.variance.sqrt()}

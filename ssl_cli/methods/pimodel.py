"""Π-model (Laine & Aila, ICLR 2017, sec. 2.1; Rasmus et al. 2015): two stochastic passes should agree.

Each unlabeled image comes as two weak views; the first view's softmax is trained towards the second's
(detached) with the squared error, averaged over classes and images (USB's 'mse' consistency), and the
unlabeled weight w(t) = λ_u · min(1, t / (0.4 T)) ramps up linearly over the first 40 % of training
(the paper ramps on a Gaussian; USB ramps linearly):  L = CE(labeled) + w(t) · ||p(v1) - p(v2)||².

This class is also the frame of Mean Teacher, which takes the target from an EMA teacher instead
(override `predictions`), and its options (the ramp-up, ratio 1) are shared by VAT.

USB's defaults (config/classic_cv/pimodel): λ_u 10, ramp-up over 0.4 of training, μ 1.
One concatenated forward pass over labeled and both unlabeled views, so BatchNorm sees them all (USB
freezes BatchNorm for the unlabeled passes instead).
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, linear_rampup
from ssl_cli.losses.consistency import probability_mse
from ssl_cli.losses.pseudo_labels import probabilities
from ssl_cli.methods.base import METHODS, Method, SemiSupervisedOptions, StepOutput


@dataclass
class ConsistencyOptions(SemiSupervisedOptions):
    unlabeled_weight: float = option(10.0, "weight of the unlabeled loss once ramped up (λ_u)", low=0)
    unlabeled_ratio: int = option(1, "unlabeled images per labeled image in a batch", low=1, high=1024)
    warmup_fraction: float = option(0.4, "the unlabeled weight ramps up linearly over this share of training",
                                    low=0, high=1)


@METHODS.register("pimodel")
class PiModel(Method):
    """Π-model (Laine & Aila 2017): MSE between the softmaxes of two weak views, the second one the target."""

    name = "pimodel"
    Options = ConsistencyOptions
    unlabeled_views = ("weak", "weak")

    def rampup_weight(self, step: int) -> float:
        """λ_u · min(1, t / (warmup_fraction · T)): the unlabeled weight at step t (a Python number)."""
        rampup_steps = int(self.options.warmup_fraction * self.max_steps)
        return self.options.unlabeled_weight * linear_rampup(step, rampup_steps)

    def predictions(self, model, labeled, first, second):
        """(labeled logits, trained logits of the first view, detached target probabilities of the second)."""
        n, u = labeled.shape[0], first.shape[0]
        logits = model(torch.cat([labeled, first, second])).logits
        return logits[:n], logits[n:n + u], probabilities(logits[n + u:])

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        first, second = batch.unlabeled
        logits_labeled, logits_student, target_probs = self.predictions(model, labeled, first, second)
        sup_loss = cross_entropy(logits_labeled, batch.labels)
        unsup_loss = probability_mse(logits_student, target_probs)
        weight = self.rampup_weight(step)
        loss = sup_loss + weight * unsup_loss
        return StepOutput(loss, {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(),
                                 "unsup_weight": torch.full((), weight, device=loss.device)})

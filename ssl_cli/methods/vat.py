"""VAT (Miyato et al., TPAMI 2018, eq. 1-12): smooth the prediction against its most sensitive direction.

For each weak unlabeled view x, one power iteration finds r_adv = ε · d/||d|| with
d = ∇_r KL(p(x) || p(x + r)) at r = ξ · (a random unit vector) (eq. 12); the local distributional smoothness
term is LDS = KL(p(x) || p(x + r_adv)) with p(x) held fixed (eq. 3). Entropy minimisation on p(x) is added
(sec. 3.3, "VAT + EntMin"), and the unlabeled weight ramps up linearly as in the Π-model frame:
L = CE(labeled) + w(t) · LDS + λ_ent · H(p(x)).

The labeled images update BatchNorm's running statistics; the unlabeled passes (clean, power iteration,
adversarial) leave them alone (USB's bn_controller). The power iteration runs in float32 even under bf16
autocast: ξ = 1e-6 is far below bf16's resolution. Its gradient is taken with respect to r only
(torch.autograd.grad), so the parameters' gradients are never touched.

USB's defaults (semilearn/algorithms/vat): ξ 1e-6, ε 6, 1 iteration, λ_ent 0.06, ramp-up over 0.4 of
training; λ_u 0.3, μ 1.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy
from ssl_cli.losses.consistency import adversarial_perturbation, entropy, kl_divergence
from ssl_cli.methods.base import METHODS, StepOutput
from ssl_cli.methods.pimodel import ConsistencyOptions, PiModel
from ssl_cli.models.batchnorm import batchnorm_statistics_frozen


@dataclass
class VATOptions(ConsistencyOptions):
    unlabeled_weight: float = option(0.3, "weight of the unlabeled loss once ramped up (λ_u)", low=0)
    perturbation_norm: float = option(6.0, "L2 norm ε of each image's adversarial perturbation", above=0)
    finite_difference: float = option(1e-6, "size ξ of the probe perturbation of the power iteration", above=0)
    power_iterations: int = option(1, "power iterations for the adversarial direction", low=1, high=10)
    entropy_weight: float = option(0.06, "weight of the entropy of the unlabeled predictions (EntMin)", low=0)


@METHODS.register("vat")
class VAT(PiModel):
    """VAT (Miyato et al. 2018): KL between the clean and the virtually adversarial prediction, plus EntMin."""

    name = "vat"
    Options = VATOptions
    unlabeled_views = ("weak",)

    def training_step(self, model, batch, step: int) -> StepOutput:
        o = self.options
        (labeled,) = batch.labeled
        (unlabeled,) = batch.unlabeled
        sup_loss = cross_entropy(model(labeled).logits, batch.labels)
        with batchnorm_statistics_frozen(model):
            logits_clean = model(unlabeled).logits
            with torch.autocast(unlabeled.device.type, enabled=False):
                r_adv = adversarial_perturbation(lambda x: model(x).logits, unlabeled.float(),
                                                 o.finite_difference, o.perturbation_norm, o.power_iterations)
            logits_adversarial = model(unlabeled + r_adv.to(unlabeled.dtype)).logits
        unsup_loss = kl_divergence(logits_clean, logits_adversarial)
        entropy_loss = entropy(logits_clean)
        weight = self.rampup_weight(step)
        loss = sup_loss + weight * unsup_loss + o.entropy_weight * entropy_loss
        return StepOutput(loss, {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(),
                                 "entropy": entropy_loss.detach(),
                                 "unsup_weight": torch.full((), weight, device=loss.device)})

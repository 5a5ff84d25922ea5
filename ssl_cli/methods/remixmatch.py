"""ReMixMatch (Berthelot et al., ICLR 2020, Algorithm 1, sec. 3.1-3.3): MixMatch with distribution alignment,
augmentation anchoring and a rotation loss.

* Distribution alignment (sec. 3.2, eq. 1): the weak view's prediction q is scaled by the labeled class
  histogram over the running mean of the model's unlabeled predictions, renormalised, then sharpened (T);
* augmentation anchoring (sec. 3.3): that guess is the target of the K strong views as well as of the
  weak one, all of them MixUp-ed with the labeled images as in MixMatch (λ ~ Beta(α, α), max(λ, 1 - λ));
  the loss of the mixed unlabeled rows is cross-entropy (λ_u), not MixMatch's squared error;
* the pre-mixup loss L_Û1 (Algorithm 1): cross-entropy of the first strong view, unmixed, to the guess (λ_Û1);
* self-supervised rotation (sec. 3.3): the first strong view turned by a random multiple of 90°, a 4-way
  linear head on its features predicts the turn (λ_r).

λ_u and λ_Û1 ramp up linearly; the rotation loss does not (as in USB). The running mean moves in
`after_step` (DistributionAlignment, from the step's raw weak probabilities), so a step aligns with the
mean from before it (USB updates it first; one step apart). The turns, like MixUp's draws, come from
the generator seeded with `Batch.seed`.

USB's classic-CV defaults (config/classic_cv/remixmatch, semilearn/algorithms/remixmatch): K = 2
strong views (the paper uses 8), T 0.5, α 0.75, λ_u 1.5, λ_Û1 (kl_loss_ratio) 0.5, λ_r 0.5, ramp over
1/64 of training, μ 1, alignment target the labeled histogram with an EMA (0.999) of the model's mean.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy
from ssl_cli.losses.pseudo_labels import DistributionAlignment, probabilities, sharpen
from ssl_cli.losses.selfsup import rotation_prediction
from ssl_cli.methods.base import METHODS, alignment_momentum_option
from ssl_cli.methods.mixmatch import MixMatch, MixMatchOptions
from ssl_cli.models.heads import rotation_head
from ssl_cli.transforms.ops import check_rotatable, rotate_quarter_turns


@dataclass
class ReMixMatchOptions(MixMatchOptions):
    unlabeled_weight: float = option(1.5, "weight λ_u of the mixed unlabeled cross-entropy once ramped up", low=0)
    mixup_alpha: float = option(0.75, "MixUp's λ ~ Beta(α, α), then max(λ, 1 - λ)", above=0, high=100)
    warmup_fraction: float = option(1 / 64, "λ_u and the pre-mixup weight ramp up linearly over this share of "
                                            "training", low=0, high=1)
    premix_weight: float = option(0.5, "weight λ_Û1 of the first strong view's cross-entropy to the guess "
                                       "before MixUp, once ramped up", low=0)
    rotation_weight: float = option(0.5, "weight λ_r of the rotation-prediction loss (0: no rotation head)",
                                    low=0)
    alignment_momentum: float = alignment_momentum_option()


@METHODS.register("remixmatch")
class ReMixMatch(MixMatch):
    """ReMixMatch (Berthelot et al. 2020): aligned, sharpened weak guesses anchor 2 strong views; MixUp; rotation."""

    name = "remixmatch"
    Options = ReMixMatchOptions
    unlabeled_views = ("weak", "strong", "strong")

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        if options.rotation_weight > 0:
            check_rotatable(data.image_size, "remixmatch")
        self.alignment = DistributionAlignment(data.class_prior, options.alignment_momentum)

    def setup(self, model, ema):
        if self.options.rotation_weight > 0:
            self.rotation_head = rotation_head(model.feature_dim)

    def guess(self, model, batch):
        """Sec. 3.2: the weak view's prediction, aligned to the labeled histogram, then sharpened."""
        with torch.no_grad():
            raw_weak_probs = probabilities(model(batch.unlabeled[0]).logits)
        return sharpen(self.alignment.align(raw_weak_probs), self.options.temperature), {"raw_weak_probs": raw_weak_probs}

    def mixed_views(self, batch):
        weak, strong_1, strong_2 = batch.unlabeled
        return strong_1, strong_2, weak  # USB's order

    def unlabeled_loss(self, logits, targets):
        return cross_entropy(logits, targets)

    def extra_inputs(self, batch, generator, context):
        strong_1 = batch.unlabeled[1]
        if self.options.rotation_weight == 0:
            return (strong_1,)
        turns = torch.randint(4, (strong_1.shape[0],), generator=generator, device=generator.device)
        context["rotation_targets"] = turns.to(strong_1.device)
        return strong_1, rotate_quarter_turns(strong_1, context["rotation_targets"])

    def extra_loss(self, output, rows, ramp, guess, context):
        u = guess.shape[0]
        premix = cross_entropy(output.logits[rows:rows + u], guess)
        context["metrics"]["premix_loss"] = premix.detach()
        loss = ramp * self.options.premix_weight * premix
        if self.options.rotation_weight > 0:
            rotation_logits = self.rotation_head(output.features[rows + u:])
            rotation, accuracy = rotation_prediction(rotation_logits, context["rotation_targets"])
            context["metrics"].update(rotation_loss=rotation.detach(), rotation_acc=accuracy)
            loss = loss + self.options.rotation_weight * rotation
        # How far alignment moves the predictions: the largest class scale, target / model mean.
        scale = self.alignment.target / self.alignment.model_probs.clamp_min(1e-6)
        context["metrics"]["alignment_scale_max"] = scale.max()
        return loss

    @torch.no_grad()
    def update_state(self, outputs) -> None:
        self.alignment.update(torch.cat([o.state["raw_weak_probs"] for o in outputs]))

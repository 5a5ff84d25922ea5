"""MixMatch (Berthelot et al., NeurIPS 2019, Algorithm 1 and eq. 2-5, 8-11): guess, sharpen, mix.

Each unlabeled image comes in K = 2 weak views; the label guess is the mean of their predictions (eq. 6)
sharpened with temperature T (eq. 7), the target of both views. Labeled images (one-hot targets) and the
unlabeled views (guessed targets) are concatenated and MixUp-ed with a shuffled copy of the same batch
(eq. 8-11: λ ~ Beta(α, α), λ' = max(λ, 1 - λ), so a mixed row stays closest to its own image). The loss is
cross-entropy on the mixed labeled rows (eq. 3) plus λ_u times the squared error between the predicted
probabilities and the mixed targets of the unlabeled rows (eq. 4, the mean over rows and classes), with
λ_u ramped up linearly from 0.

λ and the partners are drawn from a generator on the device seeded with `Batch.seed` (the run seed, the
micro-batch, the rank), so a resumed run mixes exactly as an uninterrupted one and nothing is read back.
The guess is one no-gradient forward pass; USB's code also keeps BatchNorm's running statistics out of
it and interleaves the mixed batch, which one concatenated forward pass here does not need.

USB's classic-CV defaults (config/classic_cv/mixmatch): T 0.5, α 0.5, μ 1, λ_u 100 (SVHN, STL-10; 75
on CIFAR-10, 150 on CIFAR-100), ramped over the first 40 % of training (unsup_warm_up 0.4; the code's
argument default 1/64 is overridden by every config).

This class is also the frame of ReMixMatch: `guess` (the targets of the unlabeled views), `mixed_views`
(which views are mixed), `unlabeled_loss`, `extra_inputs` / `extra_loss` (more images in the same
forward pass, and their loss) and `update_state` are its override points.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, linear_rampup, one_hot, pseudo_label_accuracy
from ssl_cli.losses.pseudo_labels import mix_rows, mixup_draw, probabilities, sharpen
from ssl_cli.methods.base import METHODS, Method, SemiSupervisedOptions, StepOutput


@dataclass
class MixMatchOptions(SemiSupervisedOptions):
    unlabeled_weight: float = option(100.0, "weight λ_u of the unlabeled loss once ramped up", low=0)
    unlabeled_ratio: int = option(1, "unlabeled images per labeled image in a batch", low=1, high=1024)
    temperature: float = option(0.5, "sharpening temperature of the guessed labels", above=0, high=1)
    mixup_alpha: float = option(0.5, "MixUp's λ ~ Beta(α, α), then max(λ, 1 - λ)", above=0, high=100)
    warmup_fraction: float = option(0.4, "the unlabeled weight ramps up linearly over this share of training",
                                    low=0, high=1)


@METHODS.register("mixmatch")
class MixMatch(Method):
    """MixMatch (Berthelot et al. 2019): sharpened K-view guesses, MixUp of labeled and unlabeled, MSE."""

    name = "mixmatch"
    Options = MixMatchOptions
    unlabeled_views = ("weak", "weak")  # K = 2

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self._generator: Optional[torch.Generator] = None

    def generator(self, batch, device: torch.device) -> torch.Generator:
        """The generator of this batch's draws, on the images' device, seeded from the batch alone."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        return self._generator.manual_seed(batch.seed)

    # -- override points -------------------------------------------------------------------------

    def guess(self, model, batch) -> Tuple[torch.Tensor, Dict]:
        """Eq. 6-7: the K views' mean prediction, sharpened; and tensors for `update_state` (none here)."""
        views = batch.unlabeled
        with torch.no_grad():
            probs = probabilities(model(torch.cat(views)).logits)
        mean = probs.view(len(views), views[0].shape[0], -1).mean(dim=0)
        return sharpen(mean, self.options.temperature), {}

    def mixed_views(self, batch) -> Tuple[torch.Tensor, ...]:
        return tuple(batch.unlabeled)

    def unlabeled_loss(self, logits, targets) -> torch.Tensor:
        """Eq. 4: squared error of the probabilities, averaged over rows and classes."""
        return (torch.softmax(logits.float(), dim=1) - targets).pow(2).mean()

    def extra_inputs(self, batch, generator, context) -> Tuple[torch.Tensor, ...]:
        return ()

    def extra_loss(self, output, rows: int, ramp: float, guess, context) -> torch.Tensor:
        return guess.new_zeros(())

    def update_state(self, outputs) -> None:
        """Moves the running statistics with one optimiser step's detached outputs (MixMatch has none)."""

    # -- the step --------------------------------------------------------------------------------

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        n = labeled.shape[0]
        guess, context = self.guess(model, batch)
        context["metrics"] = {}  # an override may add step metrics here
        views = self.mixed_views(batch)
        inputs = torch.cat([labeled, *views])
        targets = torch.cat([one_hot(batch.labels, guess.shape[1]), guess.repeat(len(views), 1)])
        generator = self.generator(batch, labeled.device)
        lam, partners = mixup_draw(inputs.shape[0], self.options.mixup_alpha, generator)
        mixed, mixed_targets = mix_rows(inputs, targets, lam, partners)
        extra = self.extra_inputs(batch, generator, context)
        output = model(torch.cat([mixed, *extra]))  # one pass: BatchNorm sees labeled and unlabeled rows
        rows = mixed.shape[0]
        logits = output.logits[:rows]
        sup_loss = cross_entropy(logits[:n], mixed_targets[:n])
        unsup_loss = self.unlabeled_loss(logits[n:], mixed_targets[n:])
        ramp = linear_rampup(step, int(self.options.warmup_fraction * self.max_steps))
        loss = sup_loss + ramp * self.options.unlabeled_weight * unsup_loss
        loss = loss + self.extra_loss(output, rows, ramp, guess, context)
        metrics = {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "unsup_weight": torch.full((), ramp * self.options.unlabeled_weight, device=loss.device),
            "mixup_lambda": lam,
            **context["metrics"],
        }
        if batch.unlabeled_targets is not None:
            every = torch.ones_like(guess[:, 0])
            metrics["pseudo_label_acc"] = pseudo_label_accuracy(guess.argmax(dim=1), every, batch.unlabeled_targets)
        state = {k: v for k, v in context.items() if isinstance(v, torch.Tensor)}
        return StepOutput(loss, metrics, state)

    def after_step(self, model, step: int, outputs) -> None:
        self.update_state(outputs)

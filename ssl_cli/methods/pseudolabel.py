"""Pseudo-labelling (Lee, 2013): the model's own confident predictions become training targets.

Hard labels come from the current model on weakly augmented unlabeled images; only those above the
confidence threshold count, and the unlabeled loss weight ramps up linearly over a warm-up so that
early, poor predictions do not dominate.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, linear_rampup, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.losses.pseudo_labels import confident_pseudo_labels
from ssl_cli.methods.base import METHODS, Method, StepOutput, ThresholdOptions


@dataclass
class PseudoLabelOptions(ThresholdOptions):
    unlabeled_ratio: int = option(1, "unlabeled images per labeled image in a batch", low=1, high=1024)
    warmup_fraction: float = option(0.4, "the unlabeled weight ramps up linearly over this share of training",
                                    low=0, high=1)


@METHODS.register("pseudolabel")
class PseudoLabel(Method):
    """Pseudo-labelling (Lee 2013), USB's settings: threshold 0.95, ratio 1, weight ramped over 40 % of training."""

    name = "pseudolabel"
    Options = PseudoLabelOptions
    unlabeled_views = ("weak",)

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        (unlabeled,) = batch.unlabeled
        n = labeled.shape[0]
        # One forward pass over labeled and unlabeled images, so BatchNorm sees both.
        logits = model(torch.cat([labeled, unlabeled])).logits
        logits_labeled, logits_unlabeled = logits[:n], logits[n:]
        sup_loss = cross_entropy(logits_labeled, batch.labels)
        pseudo_labels, mask = confident_pseudo_labels(logits_unlabeled, self.options.confidence_threshold)
        unsup_loss = masked_cross_entropy(logits_unlabeled, pseudo_labels, mask)
        rampup_steps = int(self.options.warmup_fraction * self.max_steps)
        weight = self.options.unlabeled_weight * linear_rampup(step, rampup_steps)
        loss = sup_loss + weight * unsup_loss
        return StepOutput(loss, {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(pseudo_labels, mask, batch.unlabeled_targets),
        })

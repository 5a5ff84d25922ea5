"""Pseudo-labelling (Lee, 2013): the model's own confident predictions become training targets.

Hard labels come from the current model on weakly augmented unlabeled images; only those above the
confidence threshold count, and the unlabeled loss weight ramps up linearly over a warm-up so that
early, poor predictions do not dominate.
"""

import torch

from ssl_cli.losses import confident_pseudo_labels, cross_entropy, linear_rampup, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput, check_non_negative, check_positive_int, check_unit_interval


@METHODS.register("pseudolabel")
class PseudoLabel(Method):
    name = "pseudolabel"
    unlabeled_views = ("weak",)

    def __init__(self, num_classes, max_steps, confidence_threshold=0.95, unlabeled_weight=1.0,
                 unlabeled_ratio=1, warmup_fraction=0.4):
        super().__init__(num_classes, max_steps)
        self.confidence_threshold = check_unit_interval("confidence_threshold", confidence_threshold)
        self.unlabeled_weight = check_non_negative("unlabeled_weight", unlabeled_weight)
        self.unlabeled_ratio = check_positive_int("unlabeled_ratio", unlabeled_ratio)
        self.rampup_steps = int(check_unit_interval("warmup_fraction", warmup_fraction) * max_steps)

    def training_step(self, model, batch: Batch, step: int) -> StepOutput:
        (unlabeled,) = batch.unlabeled
        n = batch.labeled.shape[0]
        # One forward pass over labeled and unlabeled images, so BatchNorm sees both.
        logits = model(torch.cat([batch.labeled, unlabeled]))
        logits_labeled, logits_unlabeled = logits[:n], logits[n:]
        sup_loss = cross_entropy(logits_labeled, batch.labels)
        pseudo_labels, mask = confident_pseudo_labels(logits_unlabeled, self.confidence_threshold)
        unsup_loss = masked_cross_entropy(logits_unlabeled, pseudo_labels, mask)
        weight = self.unlabeled_weight * linear_rampup(step, self.rampup_steps)
        loss = sup_loss + weight * unsup_loss
        return StepOutput(loss, {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(pseudo_labels, mask, batch.unlabeled_targets),
        })

"""FixMatch (Sohn et al., 2020): predict on a weak view, train the strong view to agree.

The weak view's argmax is the pseudo-label where its probability reaches the confidence threshold;
the strong view is trained towards it with cross-entropy averaged over all unlabeled images.
"""

import torch

from ssl_cli.losses import confident_pseudo_labels, cross_entropy, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput, check_non_negative, check_positive_int, check_unit_interval


@METHODS.register("fixmatch")
class FixMatch(Method):
    name = "fixmatch"
    unlabeled_views = ("weak", "strong")

    def __init__(self, num_classes, max_steps, confidence_threshold=0.95, unlabeled_weight=1.0, unlabeled_ratio=7):
        super().__init__(num_classes, max_steps)
        self.confidence_threshold = check_unit_interval("confidence_threshold", confidence_threshold)
        self.unlabeled_weight = check_non_negative("unlabeled_weight", unlabeled_weight)
        self.unlabeled_ratio = check_positive_int("unlabeled_ratio", unlabeled_ratio)

    def training_step(self, model, batch: Batch, step: int) -> StepOutput:
        weak, strong = batch.unlabeled
        n, u = batch.labeled.shape[0], weak.shape[0]
        # One concatenated forward pass, as in the reference code, so BatchNorm statistics mix all three.
        logits = model(torch.cat([batch.labeled, weak, strong]))
        logits_labeled, logits_weak, logits_strong = logits[:n], logits[n:n + u], logits[n + u:]
        sup_loss = cross_entropy(logits_labeled, batch.labels)
        pseudo_labels, mask = confident_pseudo_labels(logits_weak, self.confidence_threshold)
        unsup_loss = masked_cross_entropy(logits_strong, pseudo_labels, mask)
        loss = sup_loss + self.unlabeled_weight * unsup_loss
        return StepOutput(loss, {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(pseudo_labels, mask, batch.unlabeled_targets),
        })

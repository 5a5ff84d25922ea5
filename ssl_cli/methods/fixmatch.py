"""FixMatch (Sohn et al., 2020, eq. 2-4): predict on a weak view, train the strong view to agree.

The weak view's argmax is the pseudo-label where its probability reaches the confidence threshold;
the strong view is trained towards it with cross-entropy averaged over all unlabeled images.
"""

from dataclasses import dataclass

import torch

from ssl_cli.losses.classification import cross_entropy, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.losses.pseudo_labels import confident_pseudo_labels
from ssl_cli.methods.base import METHODS, Method, StepOutput, ThresholdOptions


@dataclass
class FixMatchOptions(ThresholdOptions):
    pass


@METHODS.register("fixmatch")
class FixMatch(Method):
    """FixMatch (Sohn et al. 2020): pseudo-label from the weak view, cross-entropy on the strong view."""

    name = "fixmatch"
    Options = FixMatchOptions
    unlabeled_views = ("weak", "strong")

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        weak, strong = batch.unlabeled
        n, u = labeled.shape[0], weak.shape[0]
        # One concatenated forward pass, as in the reference code, so BatchNorm statistics mix all three.
        logits = model(torch.cat([labeled, weak, strong])).logits
        logits_labeled, logits_weak, logits_strong = logits[:n], logits[n:n + u], logits[n + u:]
        sup_loss = cross_entropy(logits_labeled, batch.labels)
        pseudo_labels, mask = confident_pseudo_labels(logits_weak, self.options.confidence_threshold)
        unsup_loss = masked_cross_entropy(logits_strong, pseudo_labels, mask)
        loss = sup_loss + self.options.unlabeled_weight * unsup_loss
        return StepOutput(loss, {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(pseudo_labels, mask, batch.unlabeled_targets),
        })

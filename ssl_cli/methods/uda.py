"""UDA (Xie et al., NeurIPS 2020, sec. 2-3): consistency with sharpened soft targets.

The strong view is trained towards the weak view's prediction sharpened with temperature T (softmax of
logits / T, sec. 3.2 "confidence-based masking" and "sharpening"), for images whose weak confidence
reaches β. Training-signal annealing (sec. 3.2) optionally drops labeled images the model already
predicts with more than η_t = α_t (1 - 1/C) + 1/C, so the few labels are not overfitted early.

USB's defaults (config/classic_cv/uda): T 0.4, β 0.8, TSA none, μ 7, λ_u 1.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import probabilities, sharpen, tsa_threshold
from ssl_cli.methods.base import METHODS
from ssl_cli.methods.fixmatch import FixMatch, FixMatchOptions

TSA_SCHEDULES = ("none", "linear", "exp", "log")


@dataclass
class UDAOptions(FixMatchOptions):
    confidence_threshold: float = option(0.8, "an unlabeled image counts when its top probability reaches this",
                                         low=0, high=1)
    temperature: float = option(0.4, "sharpening temperature of the soft targets", above=0, high=1)
    tsa_schedule: str = option("none", "training-signal annealing of the labeled loss", choices=TSA_SCHEDULES)


@METHODS.register("uda")
class UDA(FixMatch):
    """UDA (Xie et al. 2020): sharpened soft targets from the weak view, confidence mask, optional TSA."""

    name = "uda"
    Options = UDAOptions

    def pseudo_targets(self, weak_probs, batch, step, context):
        return sharpen(weak_probs, self.options.temperature)

    def supervised_loss(self, logits_labeled, batch, step):
        per_image = F.cross_entropy(logits_labeled.float(), batch.labels, reduction="none")
        if self.options.tsa_schedule == "none":
            return per_image.mean()
        eta = tsa_threshold(step, self.max_steps, self.options.tsa_schedule, self.data.num_classes)
        correct_prob = probabilities(logits_labeled).gather(1, batch.labels[:, None]).squeeze(1)
        keep = (correct_prob <= eta).float()  # the reference code tests the true class's probability
        return (per_image * keep).mean()

"""FlexMatch (Zhang et al., NeurIPS 2021, eq. 6-11): curriculum pseudo-labelling with class-wise thresholds.

Each class's threshold τ·M(β_c) follows its learning effect β_c, the share of unlabeled images whose
last confident pseudo-label (over the fixed τ) is c, relative to the most-claimed class; during warm-up
the still-unclaimed images count as a class of their own (eq. 11), so thresholds start near 0 and rise.
M(x) = x / (2 - x) is the convex mapping (eq. 7). The per-image state `selected_label` is indexed by the
batch's pool positions and counted with torch.bincount on the device (USB counts on the host).

USB's defaults (config/classic_cv/flexmatch): τ 0.95, hard labels, warm-up on, μ 7, λ_u 1.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import ClassWiseThreshold
from ssl_cli.methods.base import METHODS
from ssl_cli.methods.fixmatch import FixMatch, FixMatchOptions


@dataclass
class FlexMatchOptions(FixMatchOptions):
    threshold_warmup: bool = option(True, "count the unclaimed images as a class while they are the most "
                                          "(FlexMatch's threshold warm-up, eq. 11)")


@METHODS.register("flexmatch")
class FlexMatch(FixMatch):
    """FlexMatch (Zhang et al. 2021): class-wise thresholds that follow each class's learning effect."""

    name = "flexmatch"
    Options = FlexMatchOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self.class_threshold = ClassWiseThreshold(data.num_unlabeled, data.num_classes,
                                                  options.confidence_threshold, options.threshold_warmup)

    def unlabeled_mask(self, weak_probs, targets, batch, step, context):
        return self.class_threshold.mask(weak_probs)

    def update_state(self, outputs) -> None:
        super().update_state(outputs)
        for out in outputs:
            self.class_threshold.update(out.state["weak_probs"], out.state["unlabeled_index"])

    def adaptive_metrics(self):
        thresholds = self.class_threshold.thresholds()
        return {"threshold": thresholds.mean(), "threshold_spread": thresholds.max() - thresholds.min()}

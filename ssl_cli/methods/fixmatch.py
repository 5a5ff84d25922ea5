"""FixMatch (Sohn et al., 2020, eq. 2-4): predict on a weak view, train the strong view to agree.

The weak view's argmax is the pseudo-label where its probability reaches the confidence threshold;
the strong view is trained towards it with cross-entropy averaged over all unlabeled images.

This class is also the common frame of the methods built on FixMatch (FlexMatch, FreeMatch, SoftMatch,
AdaMatch, Dash, UDA): each subclass overrides only the small steps it changes,

* `pseudo_targets(weak_probs, batch, step, context)`: the strong view's targets (hard labels or soft rows),
* `unlabeled_mask(weak_probs, targets, batch, step, context)`: per-image weight in [0, 1],
* `supervised_loss(logits_labeled, batch, step)` and `extra_loss(logits_strong, mask, context)`,
  (`context` holds this step's probabilities, the forward pass's whole `output` and the row counts `rows`
  (labeled, unlabeled); an override may add step metrics to context["metrics"]),
* `extra_inputs(batch, context)`: more images for the same forward pass, after the strong views (CRMatch),
* `update_state(outputs)`: the running statistics, once per optimiser step (from detached tensors),
* `adaptive_metrics()`: what the method adapts, for the progress bar and metrics.jsonl.

`method.distribution_alignment=true` (ReMixMatch, Berthelot et al. 2020, sec. 3.2) aligns the weak
probabilities towards the labeled class histogram (or uniform) before any of that.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.losses.pseudo_labels import DistributionAlignment, probabilities
from ssl_cli.methods.base import METHODS, Method, StepOutput, ThresholdOptions, alignment_momentum_option

ALIGNMENT_TARGETS = ("labeled-histogram", "uniform")


@dataclass
class FixMatchOptions(ThresholdOptions):
    distribution_alignment: bool = option(False, "align the weak-view probabilities to the target distribution "
                                                 "(ReMixMatch) before thresholding")
    alignment_target: str = option("labeled-histogram", "distribution alignment's target: the labeled images' "
                                                        "class histogram or uniform", choices=ALIGNMENT_TARGETS)
    alignment_momentum: float = alignment_momentum_option()


@METHODS.register("fixmatch")
class FixMatch(Method):
    """FixMatch (Sohn et al. 2020): pseudo-label from the weak view, cross-entropy on the strong view."""

    name = "fixmatch"
    Options = FixMatchOptions
    unlabeled_views = ("weak", "strong")

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self.alignment = None
        if getattr(options, "distribution_alignment", False):
            uniform = [1.0] * data.num_classes
            target = list(data.class_prior) if options.alignment_target == "labeled-histogram" else uniform
            self.alignment = DistributionAlignment(target, options.alignment_momentum)

    # -- override points -------------------------------------------------------------------------

    def align(self, weak_probs: torch.Tensor, probs_labeled: torch.Tensor) -> torch.Tensor:
        return weak_probs if self.alignment is None else self.alignment.align(weak_probs)

    def pseudo_targets(self, weak_probs: torch.Tensor, batch, step: int, context: Dict) -> torch.Tensor:
        return weak_probs.argmax(dim=1)

    def unlabeled_mask(self, weak_probs, targets, batch, step: int, context: Dict) -> torch.Tensor:
        return (weak_probs.max(dim=1).values >= self.options.confidence_threshold).float()

    def supervised_loss(self, logits_labeled, batch, step: int) -> torch.Tensor:
        return cross_entropy(logits_labeled, batch.labels)

    def extra_loss(self, logits_strong, mask, context: Dict) -> torch.Tensor:
        return logits_strong.new_zeros(())

    def extra_inputs(self, batch, context: Dict) -> Tuple[torch.Tensor, ...]:
        return ()

    def update_state(self, outputs) -> None:
        """Moves the running statistics with one optimiser step's outputs (their detached `state`)."""
        if self.alignment is not None:
            self.alignment.update(torch.cat([o.state["raw_weak_probs"] for o in outputs]))

    def adaptive_metrics(self) -> Dict[str, torch.Tensor]:
        return {}

    # -- the step --------------------------------------------------------------------------------

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        weak, strong = batch.unlabeled
        n, u = labeled.shape[0], weak.shape[0]
        context = {"metrics": {}, "rows": (n, u)}  # an override may add step metrics here
        # One concatenated forward pass, as in the reference code, so BatchNorm statistics mix all views.
        output = model(torch.cat([labeled, weak, strong, *self.extra_inputs(batch, context)]))
        logits = output.logits
        logits_labeled, logits_weak, logits_strong = logits[:n], logits[n:n + u], logits[n + u:n + 2 * u]
        sup_loss = self.supervised_loss(logits_labeled, batch, step)
        raw_weak_probs, probs_labeled = probabilities(logits_weak), probabilities(logits_labeled)
        weak_probs = self.align(raw_weak_probs, probs_labeled)
        context.update(raw_weak_probs=raw_weak_probs, weak_probs=weak_probs, probs_labeled=probs_labeled,
                       output=output)
        targets = self.pseudo_targets(weak_probs, batch, step, context)
        mask = self.unlabeled_mask(weak_probs, targets, batch, step, context)
        unsup_loss = masked_cross_entropy(logits_strong, targets, mask)
        extra = self.extra_loss(logits_strong, mask, context)
        loss = sup_loss + self.options.unlabeled_weight * unsup_loss + extra
        hard = targets if not targets.is_floating_point() else targets.argmax(dim=1)
        metrics = {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "mask_rate": mask.mean(),  # the mean weight for methods with soft weights
            "pseudo_label_acc": pseudo_label_accuracy(hard, (mask > 0).float(), batch.unlabeled_targets),
            **self.adaptive_metrics(),
            **context["metrics"],
        }
        state = {k: v for k, v in context.items() if isinstance(v, torch.Tensor)}
        if batch.unlabeled_index is not None:
            state["unlabeled_index"] = batch.unlabeled_index
        return StepOutput(loss, metrics, state)

    def after_step(self, model, step: int, outputs) -> None:
        self.update_state(outputs)

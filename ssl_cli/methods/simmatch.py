"""SimMatch (Zheng et al., CVPR 2022, sec. 3): pseudo-labels from the classifier and from a labeled memory bank.

A projection head maps the backbone's features to L2-normalised embeddings; a bank keeps one embedding
and the label of every labeled image (sec. 3.2). The weak view's similarities to the bank, softmax at
T, are its instance similarity; the strong view is trained to match them (the in-bank loss L_in,
cross-entropy between the teacher and student similarity distributions). Label propagation (sec. 3.3):
unfolding scales each bank entry's similarity by the class probability of its label (the instance
pseudo-label, L_in's target); aggregation sums the similarities per class and mixes them into the class
pseudo-label, p̂ = α p + (1 - α) agg. The strong view is trained towards p̂ where max p̂ >= τ (soft
targets), with the weak probabilities first aligned to uniform over the last `alignment_length` steps.

USB's defaults (config/classic_cv/simmatch): T 0.1, τ 0.95, α 0.9, λ_in 1, projection 128, da_len 32,
bank K = the labeled set, μ 7, λ_u 1. On CIFAR/SVHN/STL USB uses no EMA teacher: the bank is filled
with the model's own detached labeled embeddings, each entry an EMA with momentum 0.7; the trainer's
EMA is not used. USB also skips propagation and L_in in the first epoch (1024 steps): `warmup_steps`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, masked_cross_entropy, pseudo_label_accuracy
from ssl_cli.losses.memory import LabeledBank, QueueAlignment, similarity_logits, simmatch_pseudo_labels
from ssl_cli.losses.pseudo_labels import probabilities
from ssl_cli.methods.base import METHODS, Method, StepOutput, ThresholdOptions
from ssl_cli.models.heads import projection_head


@dataclass
class MemoryOptions(ThresholdOptions):
    """What SimMatch and CoMatch share: an embedding, similarities at T, smoothing, alignment, a warm-up."""

    projection_dim: int = option(128, "size of the L2-normalised embedding of the projection head", low=1, high=65536)
    temperature: float = option(0.1, "temperature T of the embedding similarities", above=0)
    smoothing_alpha: float = option(0.9, "weight α of the model's own prediction in the pseudo-label "
                                         "(1 - α: the memory's)", low=0, high=1)
    alignment_length: int = option(32, "steps whose mean weak prediction the distribution alignment averages "
                                       "(USB da_len)", low=1, high=65536)
    warmup_steps: int = option(1024, "steps before the memory is used (USB: its first epoch, 1024 steps)", low=0)


@dataclass
class SimMatchOptions(MemoryOptions):
    bank_momentum: float = option(0.7, "EMA momentum of each labeled image's bank entry (0: replace it)",
                                  low=0, below=1)
    in_loss_weight: float = option(1.0, "weight λ_in of the in-bank loss (strong vs weak similarities)", low=0)


def embed(projector, features: torch.Tensor) -> torch.Tensor:
    """The projection head's L2-normalised output, in float32."""
    return F.normalize(projector(features).float(), dim=1)


def joined(outputs, key: str) -> torch.Tensor:
    """One state tensor of all of a step's micro-batches."""
    return torch.cat([out.state[key] for out in outputs])


@METHODS.register("simmatch")
class SimMatch(Method):
    """SimMatch (Zheng et al. 2022): class and instance pseudo-labels propagated through a labeled bank."""

    name = "simmatch"
    Options = SimMatchOptions
    unlabeled_views = ("weak", "strong")

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self.alignment = QueueAlignment(data.num_classes, options.alignment_length)
        self.bank = LabeledBank(data.num_labeled, options.projection_dim, options.bank_momentum)

    def setup(self, model, ema):
        d = model.feature_dim  # USB's head: hidden width = the backbone's feature width, no BatchNorm
        self.projector = projection_head(d, d, self.options.projection_dim, batch_norm=False)

    def training_step(self, model, batch, step: int) -> StepOutput:
        o = self.options
        (labeled,) = batch.labeled
        weak, strong = batch.unlabeled
        n, u = labeled.shape[0], weak.shape[0]
        output = model(torch.cat([labeled, weak, strong]))  # one pass: BatchNorm sees all three
        logits, z = output.logits, embed(self.projector, output.features)
        logits_strong = logits[n + u:]
        sup_loss = cross_entropy(logits[:n], batch.labels)
        raw_weak_probs = probabilities(logits[n:n + u])
        weak_probs = self.alignment.align(raw_weak_probs)
        bank = self.bank.embeddings
        similarity = torch.softmax(similarity_logits(z[n:n + u].detach(), bank, o.temperature), dim=1)
        instance_targets, targets = simmatch_pseudo_labels(weak_probs, similarity, self.bank.labels,
                                                           o.smoothing_alpha)
        student = F.log_softmax(similarity_logits(z[n + u:], bank, o.temperature), dim=1)
        in_loss = -(instance_targets * student).sum(dim=1).mean()
        if step < o.warmup_steps:  # the bank is still mostly its random start
            targets, in_loss = weak_probs, in_loss * 0.0
        confidence, hard = targets.max(dim=1)
        mask = (confidence >= o.confidence_threshold).float()
        unsup_loss = masked_cross_entropy(logits_strong, targets, mask)
        loss = sup_loss + o.unlabeled_weight * unsup_loss + o.in_loss_weight * in_loss
        model_probs = self.alignment.model_probs()
        metrics = {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "in_loss": in_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(hard, mask, batch.unlabeled_targets),
            # how often the bank's nearest labels agree with the classifier: the propagation's effect
            "bank_agreement": (self.bank.labels[similarity.argmax(dim=1)] == weak_probs.argmax(dim=1)).float().mean(),
            "alignment_spread": model_probs.max() - model_probs.min(),
        }
        state = {"labeled_embeddings": z[:n].detach(), "labels": batch.labels,
                 "labeled_index": batch.labeled_index, "raw_weak_probs": raw_weak_probs}
        return StepOutput(loss, metrics, state)

    def after_step(self, model, step: int, outputs) -> None:
        self.alignment.update(joined(outputs, "raw_weak_probs"))
        self.bank.update(joined(outputs, "labeled_embeddings"), joined(outputs, "labels"),
                         joined(outputs, "labeled_index"))

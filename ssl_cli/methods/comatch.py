"""CoMatch (Li et al., ICCV 2021, sec. 3): pseudo-labels smoothed by a memory, and a pseudo-label graph that
weights a contrastive loss between two strong views.

The weak view's probabilities, aligned to uniform over the last `alignment_length` steps, are smoothed
with a queue of past weak and labeled embeddings and their probabilities (memory-smoothed pseudo-labels,
sec. 3.3): q = α p + (1 - α) Σ_k softmax_k(z · z_k / T) q_k. The first strong view is trained towards q
where max q >= τ (soft targets). The pseudo-label graph W = q qᵀ (self-loops 1, edges below
`graph_threshold` cut, rows normalised) is the target of a contrastive loss between the two strong views'
embeddings (sec. 3.2): images with the same pseudo-label are pulled together.

USB's defaults (config/classic_cv/comatch): T 0.2, τ 0.95, graph threshold 0.8, λ_c 1, α 0.9, soft
labels, projection 64, da_len 32, queue of 5 steps of 64 × (7 + 1) images (2,560), μ 7, λ_u 1. USB's
second strong view is a second RandAugment draw (`contrastive_view=strong`); `contrastive_view=contrastive`
uses SimCLR's crop and colour jitter instead. The queue and its pointer move in after_step; smoothing
starts after `warmup_steps` (USB: after the first epoch).
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.distributed import all_gather
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import option
from ssl_cli.losses.classification import cross_entropy, masked_cross_entropy, one_hot, pseudo_label_accuracy
from ssl_cli.losses.memory import (FIFOQueue, QueueAlignment, graph_contrastive_loss, memory_smoothed,
                                   pseudo_label_graph)
from ssl_cli.losses.pseudo_labels import probabilities
from ssl_cli.methods.base import METHODS, Method, StepOutput
from ssl_cli.methods.simmatch import MemoryOptions, embed, joined
from ssl_cli.models.heads import projection_head


@dataclass
class CoMatchOptions(MemoryOptions):
    projection_dim: int = option(64, "size of the L2-normalised embedding of the projection head", low=1, high=65536)
    temperature: float = option(0.2, "temperature T of the embedding similarities", above=0)
    queue_size: int = option(2560, "images whose embeddings and probabilities the memory keeps (USB: 5 steps "
                                   "of 64 × (7 + 1))", low=1, high=1 << 24)
    graph_threshold: float = option(0.8, "pseudo-label graph edges below this similarity are cut", low=0, high=1)
    contrastive_weight: float = option(1.0, "weight λ_c of the graph contrastive loss", low=0)
    contrastive_view: str = option("strong", "the second strong view, contrasted with the first: another strong "
                                             "draw (USB) or SimCLR's contrastive view",
                                   choices=("strong", "contrastive"))


@METHODS.register("comatch")
class CoMatch(Method):
    """CoMatch (Li et al. 2021): memory-smoothed pseudo-labels and graph-contrastive learning."""

    name = "comatch"
    Options = CoMatchOptions
    unlabeled_views = ("weak", "strong", "strong")

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        self.unlabeled_views = ("weak", "strong", options.contrastive_view)
        self.alignment = QueueAlignment(data.num_classes, options.alignment_length)
        self.queue = FIFOQueue(options.queue_size, {"feats": options.projection_dim, "probs": data.num_classes})

    def setup(self, model, ema):
        d = model.feature_dim  # USB's head: hidden width = the backbone's feature width, no BatchNorm
        self.projector = projection_head(d, d, self.options.projection_dim, batch_norm=False)

    def training_step(self, model, batch, step: int) -> StepOutput:
        o = self.options
        (labeled,) = batch.labeled
        weak, strong0, strong1 = batch.unlabeled
        n, u = labeled.shape[0], weak.shape[0]
        if n + u > o.queue_size:
            raise UserError(f"method.queue_size ({o.queue_size}) must hold one step's labeled and unlabeled "
                            f"images ({n + u}); raise it or lower trainer.batch_size")
        output = model(torch.cat([labeled, weak, strong0, strong1]))  # one pass: BatchNorm sees all four
        logits, z = output.logits, embed(self.projector, output.features)
        z_weak, z_strong0, z_strong1 = z[n:n + u].detach(), z[n + u:n + 2 * u], z[n + 2 * u:]
        logits_strong0 = logits[n + u:n + 2 * u]
        sup_loss = cross_entropy(logits[:n], batch.labels)
        raw_weak_probs = probabilities(logits[n:n + u])
        weak_probs = self.alignment.align(raw_weak_probs)
        targets = weak_probs
        if step >= o.warmup_steps:
            targets = memory_smoothed(weak_probs, z_weak, self.queue, o.smoothing_alpha, o.temperature)
        confidence, hard = targets.max(dim=1)
        mask = (confidence >= o.confidence_threshold).float()
        unsup_loss = masked_cross_entropy(logits_strong0, targets, mask)
        graph = pseudo_label_graph(targets, o.graph_threshold)
        contrastive_loss = graph_contrastive_loss(z_strong0, z_strong1, graph, o.temperature)
        loss = sup_loss + o.unlabeled_weight * unsup_loss + o.contrastive_weight * contrastive_loss
        model_probs = self.alignment.model_probs()
        metrics = {
            "sup_loss": sup_loss.detach(),
            "unsup_loss": unsup_loss.detach(),
            "contrastive_loss": contrastive_loss.detach(),
            "mask_rate": mask.mean(),
            "pseudo_label_acc": pseudo_label_accuracy(hard, mask, batch.unlabeled_targets),
            "graph_edges": (graph > 0).float().sum(dim=1).mean(),  # neighbours per image, itself included
            "alignment_spread": model_probs.max() - model_probs.min(),
            "queue_filled": self.queue.filled.float() / o.queue_size,
        }
        labeled_probs = one_hot(batch.labels, weak_probs.shape[1])
        # The memory keeps the weak embeddings with their aligned (unsmoothed) probabilities, and the
        # labeled embeddings with their one-hot labels, as in the reference code.
        state = {"raw_weak_probs": raw_weak_probs,
                 "queue_feats": torch.cat([z_weak, z[:n].detach()]),
                 "queue_probs": torch.cat([weak_probs, labeled_probs])}
        return StepOutput(loss, metrics, state)

    def after_step(self, model, step: int, outputs) -> None:
        self.alignment.update(joined(outputs, "raw_weak_probs"))
        self.queue.push(feats=all_gather(joined(outputs, "queue_feats")),
                        probs=all_gather(joined(outputs, "queue_probs")))

"""BYOL (Grill et al., 2020): an online network predicts a slowly moving target network's embedding.

Online: backbone features -> projector -> predictor. Target: a copy of backbone and projector whose
weights follow the online ones as an exponential moving average, the decay rising from `target_decay`
to 1 on a cosine over training. The loss is symmetric over the two views. No labels are used: the
classifier is fitted as a linear probe at evaluation time.
"""

import copy
import math

import torch
from torch import nn

from ssl_cli.losses import byol_loss
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput, check_positive_int, check_unit_interval
from ssl_cli.methods.simclr import projection_head


class _Encoder(nn.Module):
    """Backbone features followed by the projector: the part the target network copies."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x):
        return self.projector(self.backbone.features(x))


def target_decay_at(step: int, max_steps: int, base: float) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi k / K) + 1) / 2, from `base` up to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, max_steps)) + 1.0) / 2.0


@METHODS.register("byol")
class BYOL(Method):
    name = "byol"
    labeled_view = None
    unlabeled_views = ("contrastive", "contrastive")
    trains_classifier = False

    def __init__(self, num_classes, max_steps, target_decay=0.99, projection_dim=128, hidden_dim=512):
        super().__init__(num_classes, max_steps)
        self.target_decay = check_unit_interval("target_decay", target_decay)
        self.projection_dim = check_positive_int("projection_dim", projection_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.unlabeled_ratio = 1

    def setup(self, model):
        self.projector = projection_head(model.feature_dim, self.hidden_dim, self.projection_dim)
        self.predictor = projection_head(self.projection_dim, self.hidden_dim, self.projection_dim)
        self.target = copy.deepcopy(_Encoder(model, self.projector))
        for p in self.target.parameters():
            p.requires_grad_(False)
        self._online = None

    def training_step(self, model, batch: Batch, step: int) -> StepOutput:
        view1, view2 = batch.unlabeled
        n = view1.shape[0]
        both = torch.cat([view1, view2])
        prediction = self.predictor(self.projector(model.features(both)))
        with torch.no_grad():
            target = self.target(both)
        # View 1's prediction regresses view 2's target and vice versa.
        loss = byol_loss(prediction[:n], target[n:]) + byol_loss(prediction[n:], target[:n])
        return StepOutput(loss, {})

    @torch.no_grad()
    def after_step(self, model, step: int) -> None:
        online = list(model.parameters()) + list(self.projector.parameters())
        decay = target_decay_at(step, self.max_steps, self.target_decay)
        torch._foreach_lerp_(list(self.target.parameters()), online, 1.0 - decay)
        for t, o in zip(self.target.buffers(), list(model.buffers()) + list(self.projector.buffers())):
            t.copy_(o)

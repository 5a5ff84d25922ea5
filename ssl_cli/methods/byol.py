"""BYOL (Grill et al., 2020): an online network predicts a slowly moving target network's embedding.

Online: backbone features -> projector -> predictor. Target: a copy of backbone and projector whose
weights follow the online ones as an exponential moving average (the trainer's EMA class), the decay
rising from `target_decay` to 1 on a cosine over training. The loss is symmetric over the two views. No
labels are used: the classifier is fitted as a linear probe at evaluation time.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ssl_cli.core.options import option
from ssl_cli.losses.selfsup import byol_loss
from ssl_cli.methods.base import METHODS, Method, StepOutput
from ssl_cli.methods.simclr import ProjectionOptions
from ssl_cli.models.ema import EMA
from ssl_cli.models.heads import projection_head


class _Encoder(nn.Module):
    """Backbone features followed by the projector: the part the target network copies."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x):
        return self.projector(self.backbone(x).features)


def target_decay_at(step: int, max_steps: int, base: float) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi k / K) + 1) / 2, from `base` up to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, max_steps)) + 1.0) / 2.0


@dataclass
class BYOLOptions(ProjectionOptions):
    target_decay: float = option(0.99, "the target's EMA decay rises from this to 1 on a cosine over training",
                                 low=0, high=1)


@METHODS.register("byol")
class BYOL(Method):
    """BYOL (Grill et al. 2020): self-supervised pretraining against an EMA target; the classifier is a linear probe."""

    name = "byol"
    Options = BYOLOptions
    labeled_views = ()
    unlabeled_views = ("contrastive", "contrastive")
    trains_classifier = False

    def setup(self, model, ema):
        o = self.options
        self.projector = projection_head(model.feature_dim, o.hidden_dim, o.projection_dim)
        self.predictor = projection_head(o.projection_dim, o.hidden_dim, o.projection_dim)
        online = _Encoder(model, self.projector)
        # The target keeps training-mode BatchNorm (batch statistics), as in BYOL.
        self._target = EMA(online, o.target_decay, warmup=False, eval_mode=False)
        self.target = self._target.model  # a submodule: saved and restored with the method
        self._online = [online]  # a list: not a submodule (its weights are the model's and the projector's)

    def training_step(self, model, batch, step: int) -> StepOutput:
        view1, view2 = batch.unlabeled
        n = view1.shape[0]
        both = torch.cat([view1, view2])
        prediction = self.predictor(self.projector(model(both).features))
        with torch.no_grad():
            target = self.target(both)
        # View 1's prediction regresses view 2's target and vice versa.
        loss = byol_loss(prediction[:n], target[n:]) + byol_loss(prediction[n:], target[:n])
        return StepOutput(loss, {})

    def after_step(self, model, step: int, outputs) -> None:
        self._target.update(self._online[0], step, decay=target_decay_at(step, self.max_steps, self.options.target_decay))

"""SimCLR (Chen et al., 2020): two augmented views of each image should be each other's nearest embedding.

Both views go through the backbone's features and a projection head (an MLP); the NT-Xent loss treats
the other view of the same image as the positive and the other 2N - 2 views in the batch as negatives.
No labels are used: the classifier is fitted as a linear probe at evaluation time.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.options import option
from ssl_cli.losses.selfsup import contrastive_accuracy, nt_xent
from ssl_cli.methods.base import METHODS, Method, MethodOptions, StepOutput
from ssl_cli.models.heads import projection_head


@dataclass
class ProjectionOptions(MethodOptions):
    projection_dim: int = option(128, "size of the projection head's output", low=1, high=65536)
    hidden_dim: int = option(512, "size of the projection head's hidden layer", low=1, high=65536)


@dataclass
class SimCLROptions(ProjectionOptions):
    temperature: float = option(0.5, "NT-Xent temperature: 0.5 for CIFAR-sized batches, 0.1-0.2 for very "
                                     "large ones", above=0)


@METHODS.register("simclr")
class SimCLR(Method):
    """SimCLR (Chen et al. 2020): self-supervised pretraining with the NT-Xent loss; the classifier is a linear probe."""

    name = "simclr"
    Options = SimCLROptions
    labeled_views = ()
    unlabeled_views = ("contrastive", "contrastive")
    trains_classifier = False

    def setup(self, model, ema):
        o = self.options
        self.projector = projection_head(model.feature_dim, o.hidden_dim, o.projection_dim)

    def training_step(self, model, batch, step: int) -> StepOutput:
        view1, view2 = batch.unlabeled
        n = view1.shape[0]
        z = self.projector(model(torch.cat([view1, view2])).features)
        loss = nt_xent(z[:n], z[n:], self.options.temperature)
        return StepOutput(loss, {"contrastive_acc": contrastive_accuracy(z[:n], z[n:])})

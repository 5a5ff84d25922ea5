"""SimCLR (Chen et al., 2020): two augmented views of each image should be each other's nearest embedding.

Both views go through the backbone's features and a projection head (an MLP); the NT-Xent loss treats
the other view of the same image as the positive and the other 2N - 2 views in the batch as negatives.
No labels are used: the classifier is fitted as a linear probe at evaluation time.
"""

import torch
from torch import nn

from ssl_cli.losses import contrastive_accuracy, nt_xent
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput, check_positive_int


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def check_positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        from ssl_cli.errors import UserError

        raise UserError(f"method.{name} must be a number > 0, got {value!r}")
    return float(value)


@METHODS.register("simclr")
class SimCLR(Method):
    name = "simclr"
    labeled_view = None
    unlabeled_views = ("contrastive", "contrastive")
    trains_classifier = False

    def __init__(self, num_classes, max_steps, temperature=0.5, projection_dim=128, hidden_dim=512):
        super().__init__(num_classes, max_steps)
        self.temperature = check_positive("temperature", temperature)
        self.projection_dim = check_positive_int("projection_dim", projection_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.unlabeled_ratio = 1  # the pretraining batch is trainer.batch_size images, two views each

    def setup(self, model):
        self.projector = projection_head(model.feature_dim, self.hidden_dim, self.projection_dim)

    def training_step(self, model, batch: Batch, step: int) -> StepOutput:
        view1, view2 = batch.unlabeled
        n = view1.shape[0]
        z = self.projector(model.features(torch.cat([view1, view2])))
        loss = nt_xent(z[:n], z[n:], self.temperature)
        return StepOutput(loss, {"contrastive_acc": contrastive_accuracy(z[:n], z[n:])})

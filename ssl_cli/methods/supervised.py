"""Supervised baseline: cross-entropy on the labeled images only."""

from ssl_cli.losses.classification import cross_entropy
from ssl_cli.methods.base import METHODS, Method, StepOutput


@METHODS.register("supervised")
class Supervised(Method):
    """The labeled images only: the baseline every SSL method must beat."""

    name = "supervised"

    def training_step(self, model, batch, step: int) -> StepOutput:
        (labeled,) = batch.labeled
        loss = cross_entropy(model(labeled).logits, batch.labels)
        return StepOutput(loss, {"sup_loss": loss.detach()})

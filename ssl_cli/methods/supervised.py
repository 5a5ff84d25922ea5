"""Supervised baseline: cross-entropy on the labeled images only."""

from ssl_cli.losses import cross_entropy
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput


@METHODS.register("supervised")
class Supervised(Method):
    name = "supervised"

    def training_step(self, model, batch: Batch, step: int) -> StepOutput:
        loss = cross_entropy(model(batch.labeled), batch.labels)
        return StepOutput(loss, {"sup_loss": loss.detach()})

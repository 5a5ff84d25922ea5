"""The one contract every training method implements.

Per optimiser step the trainer builds a `Batch` with the views the method asks for
(`labeled_views`, `unlabeled_views`, by name: ssl_cli.transforms.views), calls
`training_step(model, batch, step)` once per micro-batch, back-propagates the returned loss, steps the
optimiser, then calls `after_step(model, step, outputs)` once with that step's outputs. It never looks
at which method it runs.

A method is an `nn.Module` built from its declared `Options` and a `DataInfo` (class count, pool sizes,
the labeled set's class prior). Modules it owns besides the backbone (a projection head, a target
network) are built in `setup`; they are trained by the same optimiser and saved in the same checkpoint.
State kept across steps (thresholds, class histograms, banks, queues) lives in buffers, so it is
checkpointed and restored exactly; it changes only in `after_step`, from `StepOutput.state`, so it
moves once per optimiser step whatever `trainer.grad_accumulation` is, and never for a skipped step.

The model is only ever called, `model(x) -> ModelOutput(logits, features)`: a wrapped model
(DistributedDataParallel, torch.compile) works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ssl_cli.core.options import Options, option
from ssl_cli.core.registry import Registry
from ssl_cli.data.batches import Batch, DataInfo
from ssl_cli.models.ema import EMA

# A metric is a scalar tensor (averaged over steps) or a (numerator, denominator) pair (summed, then divided).
Metric = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]

METHODS: Registry = Registry("method", "method")


@dataclass
class MethodOptions(Options):
    """Base of every method's options (the `method` group)."""

    group = "method"


@dataclass
class SemiSupervisedOptions(MethodOptions):
    """What every method that trains on labeled and unlabeled images together has."""

    unlabeled_weight: float = option(1.0, "weight of the unlabeled loss", low=0)
    unlabeled_ratio: int = option(7, "unlabeled images per labeled image in a batch", low=1, high=1024)


@dataclass
class ThresholdOptions(SemiSupervisedOptions):
    confidence_threshold: float = option(0.95, "an unlabeled image counts when its top probability reaches this",
                                         low=0, high=1)


def alignment_momentum_option():
    """Distribution alignment's momentum, declared once for every method that aligns (FixMatch's family, ReMixMatch)."""
    return option(0.999, "EMA momentum of the model's mean prediction (alignment)", low=0, below=1)


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: Dict[str, Metric] = field(default_factory=dict)
    # Detached tensors that after_step needs to update the method's state (e.g. weak-view probabilities).
    state: Dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set `name`, `Options`, the views they need, and implement `training_step`."""

    name: ClassVar[str]
    Options: ClassVar[type] = MethodOptions
    labeled_views: ClassVar[Tuple[str, ...]] = ("weak",)  # (): the method trains without labels
    unlabeled_views: ClassVar[Tuple[str, ...]] = ()
    # False for self-supervised pretraining: the classifier is then a linear probe fitted on the frozen
    # features of the labeled images at every evaluation, instead of being trained by the loss.
    trains_classifier: ClassVar[bool] = True

    def __init__(self, options: MethodOptions, data: DataInfo, max_steps: int):
        super().__init__()
        self.options, self.data, self.max_steps = options, data, max_steps

    @property
    def unlabeled_ratio(self) -> int:
        """Unlabeled images per labeled image in a batch (per `trainer.batch_size` image without labels)."""
        return int(getattr(self.options, "unlabeled_ratio", 1))

    @classmethod
    def stages(cls, cfg, run_dir) -> list:
        """The runs this method is trained as: [(sub-directory, config)]; one run in `run_dir` for most."""
        return [("", cfg)]

    def setup(self, model: nn.Module, ema: Optional[EMA]) -> None:
        """Builds the modules the method owns around `model` (once, before the optimiser exists).

        `ema` is the trainer's weight average (None with trainer.ema_decay=0): a method that needs an EMA
        teacher uses it instead of keeping a second copy.
        """

    def training_step(self, model: nn.Module, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int, outputs: List[StepOutput]) -> None:
        """Called once after each optimiser step with its micro-batches' outputs: update state here."""

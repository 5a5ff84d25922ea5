"""The one interface every training method implements.

The training loop builds a `Batch` with the views a method asks for (`labeled_view`,
`unlabeled_views`), calls `training_step`, back-propagates the returned loss, steps the optimiser and
calls `after_step`. It never looks at which method it runs.

A method is an `nn.Module`: modules it owns besides the backbone (a projection head, a predictor, a
target network) are built in `setup`, trained by the same optimiser and saved in the same checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ssl_cli.errors import UserError
from ssl_cli.registry import Registry

# A metric is a scalar tensor (averaged over steps) or a (numerator, denominator) pair (summed, then divided).
Metric = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Batch:
    labeled: Optional[torch.Tensor] = None  # normalised float images of the labeled view (None: labels unused)
    labels: Optional[torch.Tensor] = None
    unlabeled: Tuple[torch.Tensor, ...] = ()  # one tensor per view in Method.unlabeled_views, same images
    unlabeled_targets: torch.Tensor = None  # hidden true labels of the unlabeled images (-1: unknown), monitoring only


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: Dict[str, Metric] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set `name`, the views they need, and implement `training_step`."""

    name: ClassVar[str]
    labeled_view: ClassVar[Optional[str]] = "weak"  # None: the method trains without labels
    unlabeled_views: ClassVar[Tuple[str, ...]] = ()
    unlabeled_ratio: int = 0  # unlabeled images per labeled image in a batch
    # False for self-supervised pretraining: the classifier is then a linear probe fitted on the frozen
    # features of the labeled images at every evaluation, instead of being trained by the loss.
    trains_classifier: ClassVar[bool] = True

    def __init__(self, num_classes: int, max_steps: int):
        super().__init__()
        self.num_classes = num_classes
        self.max_steps = max_steps

    @classmethod
    def stages(cls, cfg, run_dir) -> list:
        """The runs this method is trained as: [(sub-directory, config)]; one run in `run_dir` for most."""
        return [("", cfg)]

    def setup(self, model: nn.Module) -> None:
        """Builds the modules the method owns around `model` (called once, before the optimiser exists)."""

    def training_step(self, model: nn.Module, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimiser step (e.g. BYOL moves its target network here)."""


METHODS: Registry[type] = Registry("method")


def check_unit_interval(name: str, value: float) -> float:
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"method.{name} must be in [0, 1], got {value}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"method.{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise UserError(f"method.{name} must be a number >= 0, got {value!r}")
    return float(value)

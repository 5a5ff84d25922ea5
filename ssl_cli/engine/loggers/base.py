"""The logger interface the trainer calls at fixed points, and the list of loggers a run uses.

A logger (TensorBoard, MLflow; W&B or Aim would be one more module) sees the run at four moments:
`start` before the first step (and again after a resume), `log_scalars` at `trainer.log_every`,
`log_eval` at each evaluation (the same numbers as the metrics.jsonl row), and `finish` with the summary.
Each call after a resume carries steps later than the checkpoint only; a logger whose backend keeps
points beyond it (a run killed between checkpoints) drops or skips them itself, so no step appears twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ssl_cli.core.registry import Registry

LOGGERS: Registry = Registry("logger", "logger")


@dataclass
class Evaluation:
    """What one evaluation shows: the metrics.jsonl row's scalars, the test confusion matrix, and (first
    evaluation only) a few uint8 images per augmented view, view name -> [N, C, H, W]."""

    scalars: Dict[str, float]
    confusion: List[List[int]]
    class_names: Sequence[str]
    views: Optional[Dict[str, torch.Tensor]] = None


class Logger:
    """Base class: every call is a no-op, so a logger implements only what its backend shows."""

    def start(self, config: dict, choices: dict, run_dir: Path, resumed_step: int) -> None:
        """Before the first step. `resumed_step` > 0: the run continues from that checkpoint step."""

    def log_scalars(self, step: int, scalars: Dict[str, float]) -> None:
        """Training figures at `trainer.log_every` (losses, lr, mask rate, pseudo-label accuracy, ...)."""

    def log_eval(self, step: int, evaluation: Evaluation) -> None:
        """Everything an evaluation measured."""

    def finish(self, summary: dict, run_dir: Path) -> None:
        """The run ended (completed, interrupted or diverged): the summary and the files it wrote."""

    def close(self) -> None:
        """Releases files and connections; called even when the run fails."""


class LoggerList(Logger):
    """Several loggers behind one: the trainer calls this one only."""

    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = list(loggers)

    def start(self, config, choices, run_dir, resumed_step):
        for logger in self.loggers:
            logger.start(config, choices, run_dir, resumed_step)

    def log_scalars(self, step, scalars):
        for logger in self.loggers:
            logger.log_scalars(step, scalars)

    def log_eval(self, step, evaluation):
        for logger in self.loggers:
            logger.log_eval(step, evaluation)

    def finish(self, summary, run_dir):
        for logger in self.loggers:
            logger.finish(summary, run_dir)

    def close(self):
        for logger in self.loggers:
            logger.close()


def build_loggers(chosen: Sequence[tuple]) -> LoggerList:
    """(name, options) pairs, as `RunConfig.loggers` holds them, -> one LoggerList."""
    return LoggerList([LOGGERS.get(name)(options) for name, options in chosen])

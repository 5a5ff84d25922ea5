"""logger=tensorboard: event files in <run_dir>/tensorboard (`tensorboard --logdir outputs`)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torchvision.utils import make_grid

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, option
from ssl_cli.engine.loggers.base import LOGGERS, Evaluation, Logger
from ssl_cli.engine.plots import confusion_figure


MISSING = "logger=tensorboard needs the tensorboard package: pip install ssl-cli[tensorboard]"
FOLDER = "tensorboard"


@dataclass
class TensorBoardOptions(Options):
    group = "logger.tensorboard"
    images: bool = option(True, "a confusion-matrix image at each evaluation and the augmented views at the first")
    flush_secs: int = option(30, "write buffered events to disk at least this often (seconds)", low=1, high=3600)

    def check(self) -> None:  # with the config check, before anything is written
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError(MISSING)


@LOGGERS.register("tensorboard", TensorBoardOptions)
class TensorBoardLogger(Logger):
    """Scalars at log_every and at each evaluation, the confusion matrix, a grid of each augmented view."""

    def __init__(self, options: TensorBoardOptions):
        self.options = options
        # Imported on first use: the optional extra, and slow to import, so runs without it never pay for it.
        try:
            self.summary_writer = importlib.import_module("torch.utils.tensorboard").SummaryWriter
        except ImportError:
            raise UserError(MISSING) from None
        self.writer = None

    def start(self, config, choices, run_dir: Path, resumed_step: int) -> None:
        # purge_step: events a killed run wrote after its last checkpoint are hidden (TensorBoard drops
        # every point at or after it when reading), so the resumed run's points are the only ones there.
        self.writer = self.summary_writer(log_dir=str(Path(run_dir) / FOLDER), flush_secs=self.options.flush_secs,
                                    purge_step=resumed_step + 1 if resumed_step else None)
        if not resumed_step:
            self.writer.add_text("choices", "  \n".join(f"{k}={v}" for k, v in sorted((choices or {}).items())))

    def log_scalars(self, step, scalars):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_eval(self, step, evaluation: Evaluation):
        self.log_scalars(step, evaluation.scalars)
        if not self.options.images:
            return
        figure = confusion_figure(evaluation.confusion, evaluation.class_names, title=f"test, step {step}")
        self.writer.add_figure("test/confusion_matrix", figure, step, close=True)
        for view, images in (evaluation.views or {}).items():
            self.writer.add_image(f"views/{view}", make_grid(images.cpu(), nrow=8, padding=1), step)
        self.writer.flush()

    def finish(self, summary, run_dir):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None



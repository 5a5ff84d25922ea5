"""The rich progress bar and the console log handler. On a terminal both share rich's default console,
so log lines print above the bar instead of repeating it. Off a terminal (`ssl-train ... > log.txt`,
CI) the bar is off and each log record is one plain, unwrapped line that grep finds whole."""

from __future__ import annotations

import logging
import sys
from typing import Dict

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


PLAIN_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"


def console_handler(datefmt: str = "%H:%M:%S") -> logging.Handler:
    """The log handler of the console (configs/hydra/job_logging/ssl.yaml): rich's on a terminal; else a plain
    stream handler, since rich wraps every line at 80 columns when it cannot ask a terminal for its width."""
    if sys.stdout.isatty():  # rich's default console writes to stdout
        return RichHandler(show_path=False, show_time=True, markup=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT, datefmt=datefmt))
    return handler


class TrainingProgress:
    def __init__(self, total_steps: int, enabled="auto", show_ssl: bool = False):
        if enabled == "auto":
            enabled = sys.stderr.isatty()
        self.enabled = bool(enabled)
        self.show_ssl = show_ssl
        self._progress = None
        if self.enabled:
            from rich import get_console

            console: Console = get_console()
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                                      console=console, transient=False)
            self._task = self._progress.add_task("train", total=total_steps, stats="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, stats: Dict[str, float]) -> None:
        if self._progress is None:
            return
        parts = []
        if "loss" in stats:
            parts.append(f"loss {stats['loss']:.3f}")
        if "lr" in stats:
            parts.append(f"lr {stats['lr']:.4f}")
        if self.show_ssl and "mask_rate" in stats:
            parts.append(f"mask {stats['mask_rate']:.2f}")
        if self.show_ssl and stats.get("pseudo_label_acc") == stats.get("pseudo_label_acc") and "pseudo_label_acc" in stats:
            parts.append(f"pl_acc {stats['pseudo_label_acc']:.2f}")
        # What an adaptive method adapts (FlexMatch, FreeMatch, AdaMatch: threshold; SoftMatch: confidence mean).
        if self.show_ssl and "threshold" in stats:
            parts.append(f"thr {stats['threshold']:.2f}")
        if self.show_ssl and "threshold_spread" in stats:
            parts.append(f"thr_spread {stats['threshold_spread']:.2f}")
        if self.show_ssl and "confidence_mean" in stats:
            parts.append(f"conf_mean {stats['confidence_mean']:.2f}")
        self._progress.update(self._task, completed=step, stats="  ".join(parts))

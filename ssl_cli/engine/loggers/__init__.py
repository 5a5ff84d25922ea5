"""Run loggers behind one interface (base.Logger): logger=[tensorboard,mlflow]; none by default."""

from ssl_cli.engine.loggers import mlflow, tensorboard  # noqa: F401  (registers them)
from ssl_cli.engine.loggers.base import LOGGERS, Evaluation, Logger, LoggerList, build_loggers

__all__ = ["LOGGERS", "Evaluation", "Logger", "LoggerList", "build_loggers"]

"""Training methods, one module each, all registered by name in METHODS (importing this registers them)."""

from ssl_cli.methods import byol, fixmatch, pseudolabel, selfsup, simclr, supervised  # noqa: F401  (registers)
from ssl_cli.methods.base import METHODS, Method, MethodOptions, StepOutput

__all__ = ["METHODS", "Method", "MethodOptions", "StepOutput"]

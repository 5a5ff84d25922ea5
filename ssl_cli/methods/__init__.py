"""Training methods, one module each, all registered by name in METHODS (importing this registers them)."""

from ssl_cli.methods import (adamatch, byol, fixmatch, flexmatch, freematch, mixmatch,  # noqa: F401
                             pseudolabel, remixmatch, selfsup, simclr, softmatch, supervised, uda)  # (registers)
from ssl_cli.methods.base import METHODS, Method, MethodOptions, StepOutput

__all__ = ["METHODS", "Method", "MethodOptions", "StepOutput"]

"""Training methods, one module each, all registered by name in METHODS (importing this registers them)."""

from ssl_cli.methods import (adamatch, byol, comatch, crmatch, dash, fixmatch, flexmatch, freematch,  # noqa: F401
                             meanteacher, mixmatch, pimodel, pseudolabel, remixmatch, selfsup, simclr, simmatch,
                             softmatch, supervised, uda, vat)  # (registers)
from ssl_cli.methods.base import METHODS, Method, MethodOptions, StepOutput

__all__ = ["METHODS", "Method", "MethodOptions", "StepOutput"]

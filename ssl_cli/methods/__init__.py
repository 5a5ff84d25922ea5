"""Training methods, one module each, all registered by name in METHODS."""

import inspect

from ssl_cli.errors import UserError
from ssl_cli.methods import byol, fixmatch, pseudolabel, selfsup, simclr, supervised  # noqa: F401  (registers)
from ssl_cli.methods.base import METHODS, Batch, Method, StepOutput

__all__ = ["METHODS", "Batch", "Method", "StepOutput", "build_method"]


def build_method(name: str, num_classes: int, max_steps: int, **options) -> Method:
    cls = METHODS.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "max_steps")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"method={name} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}")
    return cls(num_classes, max_steps, **options)

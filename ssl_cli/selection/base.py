"""What every selector is: a pure function of features (never of labels) that picks images to label.

`fn(features [N, D] float32, budget, already, seed, probabilities=, num_classes=) -> Selection`. `already` holds the
positions of images labeled in earlier rounds (they are never picked again, and count as covered);
`probabilities` [N, classes] are a trained model's predictions, used by margin and entropy only;
`num_classes` sets ProbCover's pseudo-label count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from ssl_cli.core.errors import UserError


@dataclass
class Selection:
    indices: np.ndarray  # positions into the features' rows, in the order they were picked
    info: Dict[str, object] = field(default_factory=dict)  # what to record: delta, coverage, clusters...
    cluster: Optional[np.ndarray] = None  # per picked image, the cluster it came from (where the selector has one)


Selector = Callable[..., Selection]
SELECTORS: Dict[str, Selector] = {}
NEEDS_PREDICTIONS = {"margin", "entropy"}
NEEDS_NO_FEATURES = {"uniform"}  # picks by chance alone


def register(name: str) -> Callable[[Selector], Selector]:
    def decorator(fn: Selector) -> Selector:
        if name in SELECTORS:
            raise ValueError(f"selector '{name}' is registered twice")
        SELECTORS[name] = fn
        return fn
    return decorator


def strategy_names() -> List[str]:
    return sorted(SELECTORS)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def select(strategy: str, features: np.ndarray, budget: int, already=(), seed: int = 0,
           probabilities: Optional[np.ndarray] = None, num_classes: Optional[int] = None,
           delta: Optional[float] = None, label: str = "--strategy") -> Selection:
    """Runs one selector after the checks every selector shares (name, budget against the pool).

    `delta` fixes ProbCover's ball radius instead of its label-free purity heuristic (other selectors ignore it).
    """
    if strategy not in SELECTORS:
        raise UserError(f"{label}={strategy}: unknown selection strategy; choose one of: {', '.join(strategy_names())}")
    already = np.unique(np.asarray(already, dtype=np.int64))
    free = len(features) - len(already)
    if budget < 1 or budget > free:
        raise UserError(f"budget {budget} is more than the {free} images left to label; allowed: 1..{free}"
                        if budget > free else f"budget must be at least 1, got {budget}")
    if strategy in NEEDS_PREDICTIONS and probabilities is None:
        raise UserError(f"{label}={strategy} needs a trained model's predictions")
    result = SELECTORS[strategy](np.asarray(features, dtype=np.float32), budget, already, seed,
                                 probabilities=probabilities, num_classes=num_classes, delta=delta)
    assert len(result.indices) == budget and not np.isin(result.indices, already).any()
    return result

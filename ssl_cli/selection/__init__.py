"""Which images to label: selectors that are pure functions of features (never of labels).

Importing the package registers every selector in `SELECTORS`; `select(strategy, features, budget, ...)`
runs one. The engine computes the features (ssl_cli.engine.selection); this layer sees only arrays.
"""

from ssl_cli.selection import kcenter, probcover, typiclust, uncertainty, uniform  # noqa: F401  (registers them)
from ssl_cli.selection.base import NEEDS_NO_FEATURES, NEEDS_PREDICTIONS, SELECTORS, Selection, l2_normalize, select, strategy_names

__all__ = ["NEEDS_NO_FEATURES", "NEEDS_PREDICTIONS", "SELECTORS", "Selection", "l2_normalize", "select", "strategy_names"]

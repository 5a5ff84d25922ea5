"""ssl-cli: semi-supervised image classification, config-driven.

    from ssl_cli import load_model
    model = load_model("outputs/2026-12-02/10-00-00_fixmatch_digits")
    names, probabilities = model(["cat.png", "dog.png"])

Layers import downwards only: core -> data, transforms, models, losses -> methods -> engine -> apps.
"""

from ssl_cli.engine.model_io import TrainedModel, load_model

__version__ = "0.2.0"
__all__ = ["load_model", "TrainedModel", "__version__"]

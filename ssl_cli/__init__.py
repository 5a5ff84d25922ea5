"""ssl-cli: a config-driven runner for semi-supervised learning on images."""

__version__ = "0.1.0"

"""Networks: backbones returning logits and features in one call, the weight EMA, method heads."""

from ssl_cli.models import pretrained  # noqa: F401 - registers backbone=timm and backbone=torchvision
from ssl_cli.models.backbones import BACKBONES, Backbone, BackboneOptions, ModelOutput, build_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneOptions", "ModelOutput", "build_backbone"]

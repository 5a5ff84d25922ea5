"""Backbone networks, registered by name: `cnn`, `wrn28_2`, `wrn28_8`, `resnet18`.

Every backbone maps images to an embedding (`features`) and has a linear `classifier` on top, so
self-supervised methods can use the embedding and classifiers can use the logits. Input channels,
class count and image size come from the data set.
"""

from __future__ import annotations

import inspect
from typing import Sequence, Tuple

import torch
from torch import nn

from ssl_cli.errors import UserError
from ssl_cli.registry import Registry

BACKBONES: Registry = Registry("backbone")


class Backbone(nn.Module):
    feature_dim: int

    def __init__(self, in_channels: int, num_classes: int, image_size: Tuple[int, int]):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = tuple(image_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_backbone(name: str, in_channels: int, num_classes: int, image_size: Sequence[int], **options) -> Backbone:
    builder = BACKBONES.get(name)
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("in_channels", "num_classes", "image_size")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"backbone={name} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}")
    return builder(in_channels, num_classes, tuple(image_size), **options)


# --------------------------------------------------------------------------- small CNN


class SmallCNN(Backbone):
    """Three 3x3 conv blocks (32, 64, 128 filters) with 2x2 max-pooling, then a 128-unit dense layer.

    Pooling uses ceil_mode so even 8x8 inputs never shrink to nothing; the dense layer's input size is
    worked out from the image size at construction.
    """

    def __init__(self, in_channels, num_classes, image_size, batch_norm=True, dropout=0.0):
        super().__init__(in_channels, num_classes, image_size)
        layers, channels = [], in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, in_channels, *self.image_size)).numel()
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.feature_dim = 128
        self.classifier = nn.Linear(128, num_classes)

    def features(self, x):
        return self.dense(self.conv(x))


@BACKBONES.register("cnn")
def cnn(in_channels, num_classes, image_size, batch_norm=True, dropout=0.0):
    return SmallCNN(in_channels, num_classes, image_size, batch_norm=batch_norm, dropout=dropout)


# --------------------------------------------------------------------------- WideResNet


class _WideBlock(nn.Module):
    """Pre-activation basic block as in FixMatch's WRN: BN-LeakyReLU-conv, twice, plus a shortcut."""

    def __init__(self, c_in, c_out, stride, bn_momentum, dropout, activate_before_residual=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        pre = self.act(self.bn1(x))
        # The first block of the network also feeds the activated input to its shortcut.
        residual = pre if (self.shortcut is not None and self.activate_before_residual) else x
        out = self.conv2(self.dropout(self.act(self.bn2(self.conv1(pre)))))
        return out + (self.shortcut(residual) if self.shortcut is not None else residual)


class WideResNet(Backbone):
    def __init__(self, in_channels, num_classes, image_size, depth=28, widen=2, bn_momentum=0.001, dropout=0.0):
        super().__init__(in_channels, num_classes, image_size)
        if (depth - 4) % 6:
            raise UserError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for stage, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(widths[stage] if i == 0 else widths[stage + 1], widths[stage + 1],
                                         stride if i == 0 else 1, bn_momentum, dropout,
                                         activate_before_residual=(stage == 0 and i == 0)))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.feature_dim = widths[3]
        self.classifier = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        x = self.act(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@BACKBONES.register("wrn28_2")
def wrn28_2(in_channels, num_classes, image_size, bn_momentum=0.001, dropout=0.0):
    return WideResNet(in_channels, num_classes, image_size, 28, 2, bn_momentum, dropout)


@BACKBONES.register("wrn28_8")
def wrn28_8(in_channels, num_classes, image_size, bn_momentum=0.001, dropout=0.0):
    return WideResNet(in_channels, num_classes, image_size, 28, 8, bn_momentum, dropout)


# --------------------------------------------------------------------------- ResNet-18 (CIFAR stem)


class _BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet18(Backbone):
    """ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool."""

    def __init__(self, in_channels, num_classes, image_size):
        super().__init__(in_channels, num_classes, image_size)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        layers, c_in = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c_in, width, stride), _BasicBlock(width, width, 1)]
            c_in = width
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


@BACKBONES.register("resnet18")
def resnet18(in_channels, num_classes, image_size):
    return ResNet18(in_channels, num_classes, image_size)

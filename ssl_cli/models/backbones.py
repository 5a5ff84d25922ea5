"""Backbone networks, looked up by name: `cnn`, `wrn28_2`, `wrn28_8`, `resnet18`.

A backbone maps images [B, C, H, W] to `ModelOutput(logits, features)` in one call: the embedding
[B, feature_dim] and a linear `classifier` on it. Methods only ever call the model, so a
DistributedDataParallel or compiled wrapper, or a timm model, works the same way. The number of input
channels, the number of classes and the image size come from the data set and are kept on the model,
so a checkpoint can be checked against the data it is resumed with.

Each builder is registered with its options, `@BACKBONES.register(name, Options)`, and called as
`builder(options, in_channels, num_classes, image_size)`. Every backbone's options also hold the
loading keys of `BackboneOptions` (which weights to start from, what to freeze).

Nothing here depends on the device or memory format: the models run on the CPU or CUDA, contiguous or
channels_last.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, option
from ssl_cli.core.registry import Registry

BACKBONES: Registry = Registry("backbone", "backbone")


class ModelOutput(NamedTuple):
    logits: Tensor  # [B, num_classes]
    features: Tensor  # [B, feature_dim], the classifier's input


@dataclass
class BackboneOptions(Options):
    """Keys of every backbone: where its weights start from. Subclasses add the architecture's own."""

    group = "backbone"
    init_from: Optional[str] = option(None, "start from another ssl-cli run's weights: a run directory or a "
                                            "checkpoint file (e.g. a simclr/byol pretraining run)")
    freeze_features: bool = option(False, "train the classifier only (a linear probe): features get no "
                                          "gradient, BatchNorm keeps its statistics")
    freeze_stages: int = option(0, "freeze the first N stages of a timm/torchvision backbone (the stem with "
                                   "the first): no gradient, not in the optimiser, BatchNorm keeps its "
                                   "statistics; 0: train all", low=0)

    LOADING_KEYS = ("init_from", "freeze_features", "freeze_stages")
    WEIGHT_SOURCES = ("init_from",)  # where weights come from at the start; a resumed run has them already

    def without_weight_sources(self) -> "BackboneOptions":
        """These options with nothing to load: what a resumed run builds (its checkpoint holds the weights)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in self.WEIGHT_SOURCES}
        return dataclasses.replace(self, **defaults)

    def architecture(self) -> dict:
        """The options that shape the network (what a checkpoint must match), without the loading keys."""
        return {k: v for k, v in self.to_dict().items() if k not in self.LOADING_KEYS}


class Backbone(nn.Module):
    """Base class of all backbones: an embedding (`features`) followed by a linear classifier."""

    feature_dim: int
    classifier: nn.Linear
    # (mean, std) per channel the network expects (pretrained weights'); None: the data's own statistics.
    normalization: Optional[Tuple[List[float], List[float]]] = None

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int]):
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.image_size: Tuple[int, int] = (int(image_size[0]), int(image_size[1]))

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] images -> [B, feature_dim] embedding."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> ModelOutput:
        f = self.features(x)
        return ModelOutput(self.classifier(f), f)

    def layer_ids(self) -> Optional[Dict[str, int]]:
        """Each parameter's depth (for layer-wise lr decay), or None where the backbone does not know them."""
        return None

    def stages(self) -> Optional[List[List[str]]]:
        """The parameter names of each stage, from the input on (the stem in the first), or None where the
        backbone has no stages to freeze. Parameters after the last stage (a final norm) are in none."""
        return None

    def freeze_features(self) -> None:
        """Trains the classifier only: feature weights get no gradient and BatchNorm keeps its statistics."""
        self.features_frozen = True
        for name, p in self.named_parameters():
            if not name.startswith("classifier."):
                p.requires_grad_(False)
        self.train(self.training)

    def freeze_stages(self, count: int) -> int:
        """Freezes the first `count` stages: their parameters get no gradient (so the optimiser leaves them
        out) and their BatchNorm layers stay in eval mode, keeping their running statistics, through any
        later `train()`. Returns the number of frozen parameters."""
        stages = self.stages()
        if stages is None:
            raise UserError(f"backbone.freeze_stages={count}: this backbone ({type(self).__name__}) has no "
                            f"stages; use backbone.freeze_features=true (train the classifier only) or a "
                            f"timm/torchvision backbone")
        if count > len(stages):
            raise UserError(f"backbone.freeze_stages={count}: {self.describe_stages()} has {len(stages)} "
                            f"stages; allowed 0 to {len(stages)}")
        frozen = {name for stage in stages[:count] for name in stage}
        for name, p in self.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
        self.frozen_norms = _frozen_norm_layers(self)
        self.train(self.training)
        return len(frozen)

    def describe_stages(self) -> str:
        """How an error names the network whose stages it counts."""
        return f"backbone {type(self).__name__}"

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "features_frozen", False):
            for name, child in self.named_children():
                if name != "classifier":
                    child.train(False)
        for name in getattr(self, "frozen_norms", ()):
            self.get_submodule(name).train(False)
        return self


def _frozen_norm_layers(model: nn.Module) -> List[str]:
    """The names of the normalisation layers with running statistics whose weights are all frozen.

    A layer without affine weights counts as frozen when the nearest enclosing module that has weights
    is all frozen (its stage).
    """
    modules = dict(model.named_modules())
    names = []
    for name, module in modules.items():
        if getattr(module, "running_mean", None) is None:
            continue
        owner = name
        while owner and not any(True for _ in modules[owner].parameters()):
            owner = owner.rpartition(".")[0]
        params = list(modules[owner].parameters())
        if params and not any(p.requires_grad for p in params):
            names.append(name)
    return names


def build_backbone(name: str, options: BackboneOptions, in_channels: int, num_classes: int,
                   image_size: Sequence[int]) -> Backbone:
    """Builds the backbone registered as `name` for images of `in_channels` x image_size (H, W)."""
    builder = BACKBONES.get(name)
    in_channels = _positive_int(in_channels, f"backbone={name} needs a positive number of input channels")
    num_classes = _positive_int(num_classes, f"backbone={name} needs a positive number of classes")
    try:
        size = tuple(image_size)
    except TypeError:
        size = ()
    if len(size) != 2:
        raise UserError(f"backbone={name} needs image_size as (height, width), got {image_size!r}")
    size = tuple(_positive_int(s, f"backbone={name} needs a positive image height and width") for s in size)
    return builder(options, in_channels, num_classes, size)


def _positive_int(value, message: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # ints and integer numpy scalars; not floats
    except TypeError:
        number = 0
    if number < 1:
        raise UserError(f"{message}, got {value!r}")
    return number


def _global_average(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C]; works for any spatial size and memory format."""
    return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------- small CNN


class SmallCNN(Backbone):
    """Three blocks of 3x3 conv (32, 64, 128 filters) [+ BatchNorm] + ReLU + 2x2 max-pool, then a 128-unit dense layer.

    The pools use ceil_mode, so each halves a side rounding up and no side ever reaches 0 (8x8 ends at
    1x1). The dense layer's input size follows from the image size given at construction; the network
    therefore takes images of that size only.
    """

    widths = (32, 64, 128)

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int],
                 batch_norm: bool = True, dropout: float = 0.0):
        super().__init__(in_channels, num_classes, image_size)
        layers: List[nn.Module] = []
        c_in = self.in_channels
        for width in self.widths:
            layers.append(nn.Conv2d(c_in, width, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
            c_in = width
        self.conv = nn.Sequential(*layers)
        h, w = self.image_size
        for _ in self.widths:  # a 2x2 stride-2 ceil-mode pool maps n to ceil(n / 2)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.flat_dim = c_in * h * w
        self.feature_dim = 128
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(self.flat_dim, self.feature_dim), nn.ReLU(inplace=True),
                                   nn.Dropout(dropout))
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.dense(self.conv(x))


@dataclass
class CNNOptions(BackboneOptions):
    batch_norm: bool = option(True, "BatchNorm after each convolution")
    dropout: float = option(0.0, "dropout before the classifier", low=0, below=1)


@BACKBONES.register("cnn", CNNOptions)
def cnn(o: CNNOptions, in_channels, num_classes, image_size) -> Backbone:
    """Three 3x3 conv blocks (32, 64, 128 filters) with max-pooling and a 128-unit dense layer."""
    return SmallCNN(in_channels, num_classes, image_size, batch_norm=o.batch_norm, dropout=o.dropout)


# --------------------------------------------------------------------------- WideResNet (FixMatch)


class _PreActBlock(nn.Module):
    """Pre-activation basic block of FixMatch's WideResNet.

    BN-LeakyReLU-conv3x3(stride), BN-LeakyReLU-[dropout]-conv3x3, plus a shortcut: the identity, or a
    1x1 conv (stride) when the shape changes. The shortcut takes the raw input, except in the
    network's first block (`activate_before_residual`), where it takes the activated input.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bn_momentum: float, dropout: float,
                 activate_before_residual: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.act1 = nn.LeakyReLU(0.1, inplace=True)
        self.act2 = nn.LeakyReLU(0.1, inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.project = (nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)
                        if stride != 1 or c_in != c_out else None)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.drop(self.act2(self.bn2(self.conv1(pre)))))
        shortcut = pre if self.activate_before_residual else x
        if self.project is not None:
            shortcut = self.project(shortcut)
        return out + shortcut


class WideResNet(Backbone):
    """WideResNet-depth-widen as in FixMatch: 16-channel stem, three stages of (depth - 4) / 6 blocks of
    16k, 32k, 64k channels (strides 1, 2, 2), final BN-LeakyReLU, global average pooling."""

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int], depth: int, widen: int,
                 bn_momentum: float = 0.001, dropout: float = 0.0):
        super().__init__(in_channels, num_classes, image_size)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UserError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen < 1:
            raise UserError(f"WideResNet widen factor must be >= 1, got {widen}")
        self.depth, self.widen = depth, widen
        blocks_per_stage = (depth - 4) // 6
        stem_width = 16
        stage_widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(self.in_channels, stem_width, kernel_size=3, padding=1, bias=False)
        blocks: List[nn.Module] = []
        c_in = stem_width
        for stage, (width, stride) in enumerate(zip(stage_widths, (1, 2, 2))):
            for i in range(blocks_per_stage):
                blocks.append(_PreActBlock(c_in, width, stride if i == 0 else 1, bn_momentum, dropout,
                                           activate_before_residual=(stage == 0 and i == 0)))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.bn_out = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.act_out = nn.LeakyReLU(0.1, inplace=True)
        self.feature_dim = c_in
        self.classifier = nn.Linear(c_in, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        x = self.act_out(self.bn_out(self.blocks(self.stem(x))))
        return _global_average(x)


@dataclass
class WideResNetOptions(BackboneOptions):
    bn_momentum: float = option(0.001, "BatchNorm momentum, PyTorch's convention (weight of the new batch in "
                                       "the running statistics; FixMatch's 0.999 decay)", above=0, high=1)
    dropout: float = option(0.0, "dropout inside each block", low=0, below=1)


@BACKBONES.register("wrn28_2", WideResNetOptions)
def wrn28_2(o: WideResNetOptions, in_channels, num_classes, image_size) -> Backbone:
    """WideResNet-28-2 (about 1.47 M parameters), the standard SSL backbone for CIFAR-10 and SVHN."""
    return WideResNet(in_channels, num_classes, image_size, depth=28, widen=2, bn_momentum=o.bn_momentum,
                      dropout=o.dropout)


@BACKBONES.register("wrn28_8", WideResNetOptions)
def wrn28_8(o: WideResNetOptions, in_channels, num_classes, image_size) -> Backbone:
    """WideResNet-28-8 (about 23 M parameters), FixMatch's backbone for CIFAR-100."""
    return WideResNet(in_channels, num_classes, image_size, depth=28, widen=8, bn_momentum=o.bn_momentum,
                      dropout=o.dropout)


# --------------------------------------------------------------------------- ResNet-18 (CIFAR stem)


class ResNet18(Backbone):
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool."""

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int]):
        super().__init__(in_channels, num_classes, image_size)
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()  # the network ends at the pooled features; the classifier is ours
        self.net = net
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.net(x)


@BACKBONES.register("resnet18", BackboneOptions)
def resnet18(o: BackboneOptions, in_channels, num_classes, image_size) -> Backbone:
    """ResNet-18 with the CIFAR stem (11.2 M parameters)."""
    return ResNet18(in_channels, num_classes, image_size)

"""Named views of a batch, built from the `augmentation` options: what a method asks for by name.

A method lists the views it wants (`labeled_views = ("weak",)`, `unlabeled_views = ("weak", "strong")`);
the batch builder makes each with `Augmenter(view, images, generator)`. Adding a view is one function
registered here with `@VIEWS.register(name, AugmentOptions)`: it takes a uint8 batch, the step's
generator and the options, and returns a uint8 batch of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ssl_cli.core.options import Options, option
from ssl_cli.core.registry import Registry
from ssl_cli.transforms.ops import classic_augment, contrastive_augment, strong_augment, to_float, weak_augment

WEAK_CHOICES = ("none", "flip_translate", "classic")
STRONG_CHOICES = ("none", "randaugment", "classic")


@dataclass
class AugmentOptions(Options):
    """The `augmentation` group."""

    group = "augmentation"
    weak: str = option("flip_translate", "the weak view: flip + translate, classic, or none", choices=WEAK_CHOICES)
    strong: str = option("randaugment", "the strong view: the weak view + RandAugment + Cutout, classic, or none",
                         choices=STRONG_CHOICES)
    flip: bool = option(True, "horizontal flips in every view (off where dataset.allow_flip is false)")
    translate: float = option(0.125, "weak view: largest shift, as a share of the side", low=0, high=0.5)
    num_ops: int = option(2, "strong view: RandAugment operations per image", low=0, high=64)
    apply_prob: float = option(0.5, "strong view: probability of applying each drawn operation", low=0, high=1)
    cutout_size: float = option(0.5, "strong view: largest Cutout square, as a share of the side", low=0, high=1)
    rotation: float = option(20.0, "classic: largest rotation in degrees", low=0, high=180)
    shift: float = option(0.2, "classic: largest shift, as a share of the side", low=0, high=1)
    vflip: bool = option(True, "classic: vertical flips too (also off when flip is off)")
    crop_scale_min: float = option(0.2, "contrastive view: smallest random-resized-crop area share", low=0, high=1)
    jitter: float = option(0.4, "contrastive view: colour jitter strength", low=0)
    jitter_prob: float = option(0.8, "contrastive view: probability of colour jitter", low=0, high=1)
    grayscale_prob: float = option(0.2, "contrastive view: probability of turning an image grey", low=0, high=1)


VIEWS: Registry = Registry("augmentation view", "augmentation")


def _classic(images: Tensor, gen: torch.Generator, o: AugmentOptions) -> Tensor:
    # flip=False means "orientation matters" (digits), so it switches vertical flips off too.
    return classic_augment(images, gen, rotation=o.rotation, shift=o.shift, hflip=o.flip, vflip=o.flip and o.vflip)


@VIEWS.register("none", AugmentOptions)
def identity_view(images: Tensor, gen: torch.Generator, o: AugmentOptions) -> Tensor:
    """The images themselves."""
    return images


@VIEWS.register("weak", AugmentOptions)
def weak_view(images: Tensor, gen: torch.Generator, o: AugmentOptions) -> Tensor:
    """FixMatch's weak view: flip + reflect-padded translation (or classic, or none)."""
    if o.weak == "flip_translate":
        return weak_augment(images, gen, flip=o.flip, translate=o.translate)
    return _classic(images, gen, o) if o.weak == "classic" else images


@VIEWS.register("strong", AugmentOptions)
def strong_view(images: Tensor, gen: torch.Generator, o: AugmentOptions) -> Tensor:
    """FixMatch's strong view: the weak view, RandAugment, Cutout (or classic, or none)."""
    if o.strong == "randaugment":
        return strong_augment(images, gen, flip=o.flip, translate=o.translate, num_ops=o.num_ops,
                              apply_prob=o.apply_prob, cutout_size=o.cutout_size)
    return _classic(images, gen, o) if o.strong == "classic" else images


@VIEWS.register("contrastive", AugmentOptions)
def contrastive_view(images: Tensor, gen: torch.Generator, o: AugmentOptions) -> Tensor:
    """SimCLR's view: random resized crop, flip, colour jitter, grayscale."""
    return contrastive_augment(images, gen, crop_scale=(o.crop_scale_min, 1.0), flip=o.flip, jitter=o.jitter,
                               jitter_prob=o.jitter_prob, grayscale_prob=o.grayscale_prob)


class Augmenter:
    """`augmenter(view, images_uint8, generator)`: the named view of a uint8 batch, as uint8."""

    def __init__(self, options: AugmentOptions):
        self.options = options

    def __call__(self, view: str, images_uint8: Tensor, generator: torch.Generator) -> Tensor:
        return VIEWS.get(view)(images_uint8, generator, self.options)


class Normalizer(torch.nn.Module):
    """uint8 images -> float32 (x / 255 - mean) / std per channel; mean and std in [0, 1] units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, images_uint8: Tensor) -> Tensor:
        return to_float(images_uint8).sub_(self.mean).div_(self.std)

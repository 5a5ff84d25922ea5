"""The one definition of how an image of any size becomes the size a model takes (`dataset.resize`).

`resize_plan` gives a policy's geometry in whole pixels; the two appliers follow it step for step, so
a file decoded by PIL (`resize_pil`, used by `load_image` for folders, streaming and prediction) and a
uint8 tensor already in memory (`resize_images`, used when `backbone.image_size` resizes a data set)
come out alike:

- `crop` (the default): the centred region of the target's aspect ratio (a square: the shorter side's
  square), cut at whole source pixels, then scaled to the target. As torchvision's Resize(shorter side) +
  CenterCrop, except that the crop comes first, so no rounding of an intermediate size can shift it.
- `stretch`: the whole image scaled to the target (its aspect ratio lost).
- `pad`: the whole image scaled so its longer side fits (the other rounded to whole pixels), centred on
  black.

The scaling is bilinear with antialiasing on both paths: PIL's BILINEAR filter widens its triangle
kernel by the scale factor when it shrinks, and torchvision's `resize(antialias=True)` computes the
same kernel (it was written to match PIL). They differ only in the rounding of their fixed-point
arithmetic: at most a few grey levels, at sharp edges (tests/test_data.py measures it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Sequence, Tuple

import torch
from PIL import Image
from torchvision.transforms.v2.functional import resize

from ssl_cli.core.errors import UserError
from ssl_cli.data.base import ImageData

RESIZE_POLICIES = ("crop", "stretch", "pad")


class ResizePlan(NamedTuple):
    """A policy's geometry in whole pixels: cut `box` (top, left, height, width) from the source, scale it
    to `scaled` (height, width), and place that at `offset` (top, left) of a black `size` canvas."""

    box: Tuple[int, int, int, int]
    scaled: Tuple[int, int]
    offset: Tuple[int, int]
    size: Tuple[int, int]


def resize_plan(height: int, width: int, size: Sequence[int], policy: str = "crop") -> ResizePlan:
    """How `policy` maps a height x width image to `size` (height, width); see the module docstring."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {policy!r}")
    th, tw = int(size[0]), int(size[1])
    whole = (0, 0, height, width)
    if policy == "stretch":
        return ResizePlan(whole, (th, tw), (0, 0), (th, tw))
    if policy == "crop":
        # the largest centred region with the target's aspect ratio (th / tw)
        ch, cw = min(height, max(1, round(width * th / tw))), min(width, max(1, round(height * tw / th)))
        return ResizePlan(((height - ch) // 2, (width - cw) // 2, ch, cw), (th, tw), (0, 0), (th, tw))
    scale = min(th / height, tw / width)  # pad: the side that fits first decides
    sh, sw = min(th, max(1, round(height * scale))), min(tw, max(1, round(width * scale)))
    return ResizePlan(whole, (sh, sw), ((th - sh) // 2, (tw - sw) // 2), (th, tw))


def resize_pil(img: Image.Image, size: Sequence[int], policy: str = "crop") -> Image.Image:
    """A PIL image at `size` (height, width) by `policy`."""
    plan = resize_plan(img.height, img.width, size, policy)
    if (img.height, img.width) == plan.size:
        return img
    top, left, h, w = plan.box
    if (h, w) != (img.height, img.width):
        img = img.crop((left, top, left + w, top + h))  # first, as the tensor path: the filter sees the box only
    scaled = img.resize((plan.scaled[1], plan.scaled[0]), Image.BILINEAR)
    if plan.scaled == plan.size:
        return scaled
    canvas = Image.new(img.mode, (plan.size[1], plan.size[0]), 0)
    canvas.paste(scaled, (plan.offset[1], plan.offset[0]))
    return canvas


def resize_images(images: torch.Tensor, size: Tuple[int, int], policy: str = "crop", chunk: int = 1024
                  ) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size[0], size[1]] by `policy`, in chunks so the intermediates
    stay small; the result stays uint8 (a 224 px RGB image is 150 KB)."""
    plan = resize_plan(int(images.shape[2]), int(images.shape[3]), size, policy)
    if tuple(images.shape[2:]) == plan.size:
        return images
    top, left, h, w = plan.box
    out = torch.zeros(len(images), images.shape[1], *plan.size, dtype=torch.uint8)
    oy, ox = plan.offset
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk, :, top:top + h, left:left + w]
        out[start:start + chunk, :, oy:oy + plan.scaled[0], ox:ox + plan.scaled[1]] = \
            resize(part, list(plan.scaled), antialias=True)
    return out


def resize_data(data: ImageData, size: Tuple[int, int], policy: str = "crop") -> ImageData:
    """The data set with every image resized for the backbone by `policy` (in memory; streamed data resize
    on decode)."""
    if not isinstance(data.train_images, torch.Tensor):
        raise UserError(f"backbone.image_size={size[0]} with streamed images: set dataset.image_size={size[0]} "
                        f"instead, which resizes each file as it is decoded")
    extra = data.extra_unlabeled
    return replace(data, train_images=resize_images(data.train_images, size, policy),
                   test_images=resize_images(data.test_images, size, policy),
                   extra_unlabeled=resize_images(extra, size, policy) if extra is not None else None)


def image_bytes(data: ImageData) -> int:
    """The bytes the in-memory images take (0 for streamed ones)."""
    tensors = (data.train_images, data.test_images, data.extra_unlabeled)
    return sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

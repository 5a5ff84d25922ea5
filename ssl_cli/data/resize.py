"""Images at the size a backbone expects: one small function, so the folder loaders can share it.

`resize_images` maps uint8 [N, C, H, W] images to uint8 [N, C, size, size]: the shorter side is scaled to
`size` (antialiased bilinear) and the centre is cropped, the policy of the image-folder loader. It works
in chunks so the float intermediates stay small; the result stays uint8 (a 224 px RGB image is 150 KB).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Tuple

import torch
from torchvision.transforms.v2.functional import center_crop, resize

from ssl_cli.core.errors import UserError
from ssl_cli.data.base import ImageData


def resize_images(images: torch.Tensor, size: Tuple[int, int], chunk: int = 1024) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size[0], size[1]]: shorter side to the size, centre crop."""
    h, w = int(images.shape[2]), int(images.shape[3])
    if (h, w) == tuple(size):
        return images
    scale = max(size[0] / h, size[1] / w)  # the shorter side (relative to the target) fits exactly
    scaled = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    out = torch.empty(len(images), images.shape[1], *size, dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = resize(images[start:start + chunk], list(scaled), antialias=True)
        out[start:start + chunk] = center_crop(part, list(size))
    return out


def resize_data(data: ImageData, size: Tuple[int, int]) -> ImageData:
    """The data set with every image resized for the backbone (in memory; streamed data resize on decode)."""
    if not isinstance(data.train_images, torch.Tensor):
        raise UserError(f"backbone.image_size={size[0]} with streamed images: set dataset.image_size={size[0]} "
                        f"instead, which resizes each file as it is decoded")
    extra = data.extra_unlabeled
    return replace(data, train_images=resize_images(data.train_images, size),
                   test_images=resize_images(data.test_images, size),
                   extra_unlabeled=resize_images(extra, size) if extra is not None else None)


def image_bytes(data: ImageData) -> int:
    """The bytes the in-memory images take (0 for streamed ones)."""
    tensors = (data.train_images, data.test_images, data.extra_unlabeled)
    return sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

"""One decoder for every image file users have: `load_image(source, image_size, resize, channels)`.

Training (in memory and streamed) and prediction on new images all come through here, so a model sees
new images exactly as it saw its training images. It handles what cameras and tools write:

- EXIF orientation: phone photos are stored sideways with a tag saying how to turn them;
- every PIL mode: grey (L), grey or colour with alpha (LA, RGBA, PA: composited over white, as viewers
  show them), palette (P), 16- and 32-bit grey (I;16, I: scaled to 8 bits, not clipped), CMYK JPEG, ...;
- mixed sizes, by a resize policy: `crop` (the centre square, scaled to image_size: no distortion, the
  default users expect), `stretch` (the whole image squashed to the square) or `pad` (the longer side
  to image_size, the rest filled with black). The policies and their geometry are defined once, in
  ssl_cli/data/resize.py, which also resizes in-memory tensors the same way.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

from ssl_cli.data.resize import resize_pil
ImageSource = Union[str, "os.PathLike[str]", Image.Image]


def _to_8bit(img: Image.Image) -> Image.Image:
    """A high-bit-depth grey image (I;16, I, F) as 8-bit L, scaled by its nominal range."""
    array = np.asarray(img, dtype=np.float64)
    # 16-bit PNGs open as I;16 or I with values 0..65535; float images are taken as 0..1.
    top = 1.0 if img.mode == "F" else 65535.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _over_white(img: Image.Image) -> Image.Image:
    """Composites an image with alpha over white (transparent pixels are shown white by viewers)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def to_standard_mode(img: Image.Image, channels: Optional[int]) -> Image.Image:
    """`img` as L (1 channel) or RGB (3): `channels` when given, else grey stays grey and the rest is RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    elif img.mode == "P":  # a palette with a transparent entry behaves as RGBA
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        grey = img.mode in ("LA", "La")
        img = _over_white(img)
        img = img.convert("L" if grey else "RGB")
    if channels is None:
        return img if img.mode in ("L", "RGB") else img.convert("RGB")  # CMYK, YCbCr, LAB, HSV -> RGB
    return img.convert("L" if channels == 1 else "RGB")


def load_image(source: ImageSource, image_size: Optional[int] = None, resize: str = "crop",
               channels: Optional[int] = None) -> np.ndarray:
    """One image (a path or a PIL image) -> uint8 array [C, H, W], C = 1 or 3.

    `image_size`: a square side to resize to by `resize` (crop, stretch, pad); None keeps the stored size.
    `channels`: 1 or 3 to convert to; None keeps grey images grey and makes every other mode RGB.
    Raises what PIL raises for a file that is not a readable image (OSError, ValueError, ...).
    """
    if isinstance(source, Image.Image):
        return _decode(source, image_size, resize, channels)
    with Image.open(source) as img:
        return _decode(img, image_size, resize, channels)


def _decode(img: Image.Image, image_size: Optional[int], resize: str, channels: Optional[int]) -> np.ndarray:
    img = ImageOps.exif_transpose(img)  # a copy, upright; reading the pixels here surfaces corrupt files
    img = to_standard_mode(img, channels)
    if image_size is not None:
        img = resize_pil(img, (int(image_size), int(image_size)), resize)
    array = np.array(img, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def stored_channels(mode: str) -> int:
    """Channels `load_image(..., channels=None)` gives an image stored in PIL mode `mode`."""
    return 1 if mode in GREY_MODES else 3

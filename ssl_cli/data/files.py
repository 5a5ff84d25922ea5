"""Image files given by the user to a trained model: listing files, folders and globs, decoding one image.

This is the small, isolated decoder of the "using the model" commands (ssl-predict, ssl-evaluate,
load_model); the data loaders have their own. Policy: EXIF orientation applied, converted to the
model's channels (L or RGB; transparency composited on white), shorter side resized to the model's
input size, then a centre crop.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_cli.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GLOB_CHARS = set("*?[")

# What a file that cannot be decoded raises; such files are listed, never fatal.
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _images_under(folder: Path) -> List[Path]:
    """Image files (by suffix) anywhere under `folder`, hidden files and folders left out, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def list_image_files(paths: Iterable[Union[str, Path]]) -> List[Path]:
    """The image files that PATHS name: files as given, folders recursively, globs (`**` too) expanded.

    A path that names nothing is a one-line error; the result holds each file once, in the order given.
    """
    files: List[Path] = []
    for raw in paths:
        text = str(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            files += _images_under(path)
        elif path.is_file():
            files.append(path)  # named explicitly: tried whatever its suffix
        elif GLOB_CHARS & set(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise UserError(f"no file matches {text!r}")
            for m in map(Path, matches):
                files += _images_under(m) if m.is_dir() else [m] if m.suffix.lower() in IMAGE_SUFFIXES else []
        else:
            raise UserError(f"{text}: no such file or folder; give image files, folders or globs")
    seen, unique = set(), []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def list_class_folders(folder: Union[str, Path]) -> Dict[str, List[Path]]:
    """A labeled folder `folder/<class>/<image>` (any depth below the class folder): {class name: files}."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"{folder}: no such folder; expected a labeled folder <folder>/<class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"no class folders in {root}; expected a labeled folder <folder>/<class>/<image>")
    return {c: _images_under(root / c) for c in classes}


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale: scale to 8 bits rather than clipping at 255
        array = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


def resize_and_crop(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """Shorter side to the target (aspect kept), then the centre crop of `size` = (height, width)."""
    h, w = size
    if img.size == (w, h):
        return img
    scale = max(h / img.height, w / img.width)
    new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return img.crop((left, top, left + w, top + h))


def decode_image(source: Union[str, Path, Image.Image], channels: int, size: Tuple[int, int]) -> torch.Tensor:
    """One image (a path or a PIL image) as a uint8 tensor [channels, height, width]."""
    if isinstance(source, Image.Image):
        img = source
    else:
        with Image.open(source) as opened:
            opened.load()
            img = opened.copy()
            img.info = dict(opened.info)
    img = resize_and_crop(_to_mode(ImageOps.exif_transpose(img), channels), tuple(size))
    t = torch.from_numpy(np.array(img, dtype=np.uint8))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def decode_images(files: Sequence[Path], channels: int, size: Tuple[int, int]
                  ) -> Tuple[torch.Tensor, List[int], List[Tuple[str, str]]]:
    """(uint8 batch [n, C, H, W] of the readable files, their positions in `files`, (path, why) of the others)."""
    images, kept, bad = [], [], []
    for i, f in enumerate(files):
        try:
            images.append(decode_image(f, channels, size))
            kept.append(i)
        except DECODE_ERRORS as e:
            bad.append((str(f), " ".join(str(e).split())[:200] or type(e).__name__))
    batch = torch.stack(images) if images else torch.zeros(0, channels, *size, dtype=torch.uint8)
    return batch, kept, bad

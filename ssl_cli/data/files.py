"""Image files given by the user to a trained model: listing files, folders and globs, decoding one image.

The "using the model" commands (ssl-predict, ssl-evaluate, load_model) decode with the training
decoder, ssl_cli.data.images.load_image, so a new image is seen as the training images were.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError

from ssl_cli.core.errors import UserError
from ssl_cli.data.images import load_image

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


def decode_image(source: Union[str, Path, Image.Image], channels: int, size: Tuple[int, int],
                 resize: str = "crop") -> torch.Tensor:
    """One image (a path or a PIL image) as a uint8 tensor [channels, height, width], decoded exactly as
    training images are (ssl_cli.data.images.load_image: EXIF orientation, every mode, `resize` policy)."""
    height, width = size
    if height != width:
        raise UserError(f"image size {height}x{width}: models here take square images")
    return torch.from_numpy(load_image(source, image_size=height, resize=resize, channels=channels))


def decode_images(files: Sequence[Path], channels: int, size: Tuple[int, int], resize: str = "crop"
                  ) -> Tuple[torch.Tensor, List[int], List[Tuple[str, str]]]:
    """(uint8 batch [n, C, H, W] of the readable files, their positions in `files`, (path, why) of the others)."""
    images, kept, bad = [], [], []
    for i, f in enumerate(files):
        try:
            images.append(decode_image(f, channels, size, resize))
            kept.append(i)
        except DECODE_ERRORS as e:
            bad.append((str(f), " ".join(str(e).split())[:200] or type(e).__name__))
    batch = torch.stack(images) if images else torch.zeros(0, channels, *size, dtype=torch.uint8)
    return batch, kept, bad

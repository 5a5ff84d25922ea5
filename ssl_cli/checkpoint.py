"""Checkpoints: written atomically, loaded with weights_only=True so a checkpoint can never run code."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ssl_cli.errors import UserError


def save_checkpoint(state: dict, path: Path) -> None:
    """Writes to a temporary file, flushes it to disk, then renames it over `path`.

    A crash or full disk mid-write leaves the previous file at `path` intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept") from None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or holding objects that are not plain data
        text = (str(e).splitlines() or [""])[0][:200]
        if not zipfile.is_zipfile(path):  # what torch.save writes is a zip archive; this is something else
            text = f"not a PyTorch checkpoint, or a damaged one ({type(e).__name__}: {text})"
        raise UserError(f"cannot load checkpoint {path}: {text}") from None

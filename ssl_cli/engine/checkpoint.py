"""Checkpoints: written atomically, loaded with weights_only=True (a checkpoint can never run code), versioned.

A checkpoint is a dict of plain data. `format_version` says which layout it has:

1  ssl-cli 0.1.0 (up to commit 234092d): no version key, no model card; `backbone.pretrained` in the config.
2  ssl-cli 0.2: adds `model_card` (class names, input shape, normalisation, backbone spec: what
   `load_model` needs without the training data) and renames `backbone.pretrained` to `backbone.init_from`.

`load_checkpoint` upgrades a format-1 checkpoint in memory so it resumes and starts other runs
(`backbone.init_from`) as before; it refuses, in one line, what cannot be upgraded.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ssl_cli.core.errors import UserError
from ssl_cli.engine.outputs import LAST

FORMAT_VERSION = 2
WRITTEN_BY = {1: "ssl-cli 0.1.0", 2: "ssl-cli 0.2"}


def save_checkpoint(state: dict, path: Path) -> None:
    """Writes to a temporary file, flushes it to disk, then renames it over `path`.

    A crash or full disk mid-write leaves the previous file at `path` intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "format_version": FORMAT_VERSION}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept") from None


def read_checkpoint(path: Path, map_location="cpu", mmap: bool = False) -> object:
    """The raw content of a checkpoint file, or a one-line UserError saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, not a checkpoint, or holding objects that are not plain data
        if mmap:
            return read_checkpoint(path, map_location)
        text = (str(e).splitlines() or [""])[0][:200]
        if not zipfile.is_zipfile(path):  # what torch.save writes is a zip archive; this is something else
            text = f"not a PyTorch checkpoint, or a damaged one ({type(e).__name__}: {text})"
        raise UserError(f"cannot load checkpoint {path}: {text}") from None


def format_version(state: dict) -> int:
    return int(state.get("format_version", 1))


def upgrade(state: dict, path) -> dict:
    """The checkpoint in the current format (format 1 upgraded in memory); newer formats are refused."""
    version = format_version(state)
    if version > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format {version}, newer than this ssl-cli reads ({FORMAT_VERSION}); "
                        f"upgrade ssl-cli to use it")
    if version == 1:
        config = state.get("config")
        backbone = (config.get("backbone") if isinstance(config, dict) else None) or {}
        if backbone.get("name") == "resnet18":
            raise UserError(f"checkpoint {path} was written by {WRITTEN_BY[1]} (format 1) with its own ResNet-18, "
                            f"which ssl-cli 0.2 replaced by torchvision's; its weights cannot be carried over: "
                            f"start a new run, or resume it with ssl-cli 0.1.0")
        info = state.get("model_info") or {}
        # Format 1 kept the model's shape but not its class names or normalisation: those stay unknown.
        card = {"backbone": info.get("backbone"), "channels": info.get("in_channels"),
                "num_classes": info.get("num_classes"), "image_size": info.get("image_size"),
                "backbone_options": {k: v for k, v in backbone.items()
                                     if k not in ("name", "pretrained", "freeze_features")},
                "class_names": None, "mean": None, "std": None}
        state = {**state, "config": upgrade_config(config) if isinstance(config, dict) else config,
                 "model_card": card, "format_version": FORMAT_VERSION, "upgraded_from": 1}
    return state


def upgrade_config(config: dict) -> dict:
    """A format-1 run config in today's keys: backbone.pretrained is now backbone.init_from."""
    backbone = config.get("backbone")
    # Today's library backbones have a boolean `pretrained` next to init_from: only format 1 lacks init_from.
    if not isinstance(backbone, dict) or "pretrained" not in backbone or "init_from" in backbone:
        return config
    return {**config, "backbone": {("init_from" if k == "pretrained" else k): v for k, v in backbone.items()}}


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    state = read_checkpoint(path, map_location)
    if not isinstance(state, dict):
        raise UserError(f"cannot load checkpoint {path}: it holds a {type(state).__name__}, not an ssl-cli checkpoint")
    return upgrade(state, path)


def find_checkpoint(source, stage: str, label: str = "") -> Path:
    """A checkpoint file, or the last.pt of a run directory (for a selfsup run, of its `stage` sub-run)."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        for candidate in (path / LAST, path / stage / LAST):
            if candidate.is_file():
                return candidate
        raise UserError(f"{label}{source}: no {LAST} in that directory (nor in its {stage}/); give a run directory "
                        f"or a checkpoint file")
    if not path.is_file():
        raise UserError(f"{label}{source}: no such file or directory; give a run directory or a checkpoint file (.pt)")
    return path

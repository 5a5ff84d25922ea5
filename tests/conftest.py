"""Shared helpers: composing configs in-process, running the installed command, tiny image folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: List[str]):
    """The config `ssl-train <overrides>` would run with (Hydra's compose API, no run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import ssl_cli.cli  # noqa: F401  (registers the resolvers the config uses)

    with initialize_config_module(config_module="ssl_cli.configs", version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    return cfg


def ssl_train(args: List[str], cwd: Path, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    """Runs the console script as a user would, in a child process."""
    exe = Path(sys.executable).with_name("ssl-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ssl_cli.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SSL_CLI_CACHE": str(cwd / ".cache"), **(env_extra or {})}
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class=12, size=12, test=True,
                       seed=0) -> Path:
    """A tiny ImageFolder tree of PNGs whose class is visible (a bright quadrant per class)."""
    rng = np.random.default_rng(seed)
    splits = {"train": per_class, "test": max(2, per_class // 3)} if test else {"train": per_class}
    for split, n in splits.items():
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
                q = size // 2
                y, x = divmod(c % 4, 2)
                img[y * q:(y + 1) * q, x * q:(x + 1) * q] += 180
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "folder")

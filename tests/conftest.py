"""Shared helpers: composing configs in-process, running the installed command, tiny image folders."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
from PIL import Image

import ssl_cli.apps.train as ssl_train_cli
from ssl_cli.engine import config as engine_config
from ssl_cli.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: List[str]):
    """The config `ssl-train <overrides>` would run with (Hydra's compose API, no run directory)."""
    return engine_config.compose(list(overrides))


def trainer_for(overrides: List[str], run_dir: Path):
    """A Trainer built as `ssl-train <overrides>` would build it (in `run_dir`, not trained yet)."""
    return Trainer(engine_config.check_config(compose(overrides)), run_dir)


def ssl_train(args: List[str], cwd: Path, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    """Runs the console script as a user would, in a child process."""
    exe = Path(sys.executable).with_name("ssl-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ssl_cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SSL_CLI_CACHE": str(cwd / ".cache"), **(env_extra or {})}
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@contextlib.contextmanager
def _isolated(cwd: Path):
    """One in-process run: in `cwd`, restoring afterwards what a run changes in the process."""
    import logging

    import torch
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_cwd, argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv = argv
        GlobalHydra.instance().clear()
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def run_cli(args: List[str], cwd: Path) -> Tuple[int, str, str]:
    """`ssl-train <args>` in this process (much faster than a child process): (exit code, stdout, stderr).

    Anything but SystemExit propagates, so a traceback fails the test that called it.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _isolated(cwd):
        sys.argv = ["ssl-train", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                ssl_train_cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit code 2 and a single line on stderr, `ssl-train: error: ...`, holding every fragment."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ssl-train: error: "), (code, stderr[-3000:])
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: compare before and after to show nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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

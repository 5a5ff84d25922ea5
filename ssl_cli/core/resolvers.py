"""The OmegaConf resolvers ssl-train's config uses; `register()` is called by whoever composes it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def run_dir(resume, default):
    """Hydra's run directory: the resumed run's own directory, or a fresh one."""
    if resume:
        path = Path(str(resume)).expanduser()
        return str(path if path.is_dir() else path.parent)
    return default


def hydra_subdir(resume):
    """Where Hydra saves the composed config; a resumed run keeps the original .hydra/ untouched."""
    return ".hydra-resume" if resume else ".hydra"


RESOLVERS = {"ssl_run_dir": run_dir, "ssl_hydra_subdir": hydra_subdir}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

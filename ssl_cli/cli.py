"""`ssl-train`: composes the Hydra config and runs `ssl_cli.train.run` on it.

Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_cli.errors import UserError

CONFIG_MODULE = "ssl_cli.configs"
CONFIG_NAME = "train"
EXIT_USER_ERROR = 2

log = logging.getLogger("ssl_cli")


def _run_dir(resume, default):
    """Hydra's run directory: the resumed run's own directory, or a fresh one."""
    if resume:
        path = Path(str(resume)).expanduser()
        return str(path if path.is_dir() else path.parent)
    return default


def _hydra_subdir(resume):
    """Where Hydra saves the composed config; a resumed run keeps the original .hydra/ untouched."""
    return ".hydra-resume" if resume else ".hydra"


for _name, _fn in (("ssl_run_dir", _run_dir), ("ssl_hydra_subdir", _hydra_subdir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def fail(message: str) -> None:
    print(f"ssl-train: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _write_failed_summary(run_dir: Path, cfg: DictConfig, error: str, choices: dict) -> None:
    from ssl_cli.train import write_summary

    if (run_dir / "summary.json").exists():  # never overwrite what an earlier run wrote
        return
    write_summary(run_dir, {"status": "failed", "error": error, "method": OmegaConf.select(cfg, "method.name"),
                            "dataset": OmegaConf.select(cfg, "dataset.name"), "seed": OmegaConf.select(cfg, "seed"),
                            "num_labels": OmegaConf.select(cfg, "dataset.num_labels"), "choices": choices,
                            "run_dir": str(run_dir)})


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig):
    from ssl_cli.train import run  # imported here so `ssl-train --help` stays fast

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, run_dir, choices)
    except UserError as e:
        _write_failed_summary(run_dir, cfg, one_line(e), choices)
        if multirun:  # one failing job must not stop the others
            log.error("job failed: %s", one_line(e))
            return None
        fail(one_line(e))
    except Exception as e:  # a bug: in a sweep, record it and go on; alone, show the traceback
        if not multirun:
            raise
        _write_failed_summary(run_dir, cfg, f"{type(e).__name__}: {one_line(e)}", choices)
        log.exception("job failed")
        return None
    finally:
        if multirun:  # jobs share this process: free what the finished job held
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    from ssl_cli.report import print_run_summary

    print_run_summary(summary)
    return summary["final"]["test/accuracy"]


def _check_composes(argv) -> None:
    """Composes the config once before Hydra does, to turn composition errors into one line.

    Sweeps (-m) are left to Hydra: their comma lists are not plain overrides.
    """
    if any(a in ("-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--version", "-c", "--cfg",
                 "-p", "--package", "-sc", "--shell-completion") or a.startswith("--") for a in argv):
        return
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(argv), return_hydra_config=True)
            run_dir = Path(str(cfg.hydra.run.dir))
            resume = cfg.get("resume")
    except Exception as e:  # composition errors come in several Hydra and OmegaConf types
        fail(one_line(e))
    finally:
        GlobalHydra.instance().clear()
    # Checked before Hydra writes its .hydra/ files there: an earlier run is never overwritten.
    if not resume and any((run_dir / f).exists() for f in ("summary.json", "last.pt")):
        fail(f"{run_dir} already holds a run; continue it with resume={run_dir} or pick another hydra.run.dir")


def main() -> None:
    _check_composes(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()

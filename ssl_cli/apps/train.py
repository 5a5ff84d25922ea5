"""`ssl-train`: composes the Hydra config and runs `ssl_cli.engine.run.run` on it.

Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import logging
import math
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ssl_cli.apps.preflight import check_command_line
from ssl_cli.apps.report import print_run_summary
from ssl_cli.core.errors import EXIT_USER_ERROR, UserError, one_line
from ssl_cli.core.distributed import is_main, rank
from ssl_cli.engine import distributed
from ssl_cli.engine.config import CONFIG_MODULE, CONFIG_NAME, compose, register_schemas
from ssl_cli.engine.outputs import SUMMARY, write_summary
from ssl_cli.engine.run import run

log = logging.getLogger("ssl_cli")


def fail(message: str) -> None:
    print(f"ssl-train: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _write_failed_summary(run_dir: Path, cfg: DictConfig, error: str, choices: dict) -> None:
    existing = run_dir / SUMMARY
    if existing.exists():  # never overwrite what an earlier run wrote; an earlier failure gives way to this one
        try:
            status = json.loads(existing.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        if status != "failed":
            return
    write_summary(run_dir, {"status": "failed", "error": error, "method": OmegaConf.select(cfg, "method.name"),
                            "dataset": OmegaConf.select(cfg, "dataset.name"), "seed": OmegaConf.select(cfg, "seed"),
                            "num_labels": OmegaConf.select(cfg, "dataset.num_labels"), "choices": choices,
                            "run_dir": str(run_dir)})


def _is_optimising_sweep(hc) -> bool:
    """True under a sweeper that optimises the task's return value (Hydra's Optuna sweeper)."""
    target = str(OmegaConf.select(hc.sweeper, "_target_", default="") or "")
    return "optuna" in target.lower()


def _plans_validation(cfg: DictConfig) -> bool:
    d = cfg.get("dataset") or {}
    return bool(d.get("num_validation")) or d.get("labeled_indices") is not None


NEEDS_VALIDATION = ("the hyperparameter search tunes on the validation split, never on the test set: "
                    "set dataset.num_validation > 0 (e.g. dataset.num_validation=200)")


def objective(summary: dict) -> Optional[float]:
    """What the task returns to Hydra's sweeper: the final VALIDATION accuracy, never a test accuracy.

    None without a validation split (Hydra's Optuna sweeper marks such a trial failed and goes on).
    """
    value = (summary.get("final") or {}).get("val/accuracy")
    if value is None or math.isnan(value):
        return None
    return float(value)


@contextmanager
def _job_state(multirun: bool):
    """Jobs of a sweep share this process: restore what one job may change and free what it held."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        if multirun:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> Optional[float]:
    """One job. Returns the validation accuracy (the objective of Hydra's Optuna sweeper), or None."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        with _job_state(multirun):
            if multirun and _is_optimising_sweep(hc) and not _plans_validation(cfg):
                raise UserError(NEEDS_VALIDATION)
            summary = run(cfg, run_dir, choices)
    except UserError as e:
        _write_failed_summary(run_dir, cfg, one_line(e), choices)
        if multirun:  # one failing job must not stop the others
            log.error("job failed: %s", one_line(e))
            return None
        fail(one_line(e))
    except Exception as e:  # a bug: in a sweep, record it and go on; alone, show the traceback
        if isinstance(e, torch.distributed.DistError) and distributed.under_torchrun():
            # Usually another rank died (torchrun then restarts the group or stops): one line, not a traceback.
            print(f"ssl-train: rank {rank()}: a collective with the other ranks failed (did one stop?): "
                  f"{one_line(e)[:300]}", file=sys.stderr)
            sys.exit(1)
        if not multirun:
            raise
        _write_failed_summary(run_dir, cfg, f"{type(e).__name__}: {one_line(e)}", choices)
        log.exception("job failed")
        return None
    if summary.get("signal") and not multirun:
        # Stopped by SIGTERM/SIGINT: saved, but not finished. Exit 128 + N (as the shell reports a signal)
        # so torchrun, SLURM and scripts see that; continue with resume=<run dir>.
        if is_main():
            print_run_summary(summary)
        distributed.stop()
        sys.exit(128 + int(signal.Signals[summary["signal"]]))
    if is_main():
        print_run_summary(summary)
    return objective(summary)


class SweepChecks(Callback):
    """Hydra callback: before a sweep starts any job, stop with one line if every job would fail."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not _is_optimising_sweep(config.hydra) or _plans_validation(config):
            return
        # A value swept by the search itself is not in `config` yet: leave it to the jobs.
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        overrides = OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task])
        swept = set(params) | {o.get_key_element() for o in overrides if o.is_sweep_override()}
        if not swept & {"dataset.num_validation", "dataset.labeled_indices"}:
            fail(NEEDS_VALIDATION)


def _check_composes(argv) -> None:
    """Checks the command line before Hydra starts (see ssl_cli.apps.preflight): one line for anything wrong.

    Nothing is written before this passes: Hydra creates the run directory only afterwards, so a bad
    override never leaves an empty run directory behind and an earlier run is never overwritten.
    """
    try:
        check_command_line(list(argv))
    except UserError as e:
        fail(one_line(e))


def _trainer_setting(argv, key: str, default):
    """One trainer option of the command line, before anything runs (the full check comes after)."""
    if any(a in ("-m", "--multirun", "--help", "-h", "--cfg", "-c", "--info", "--hydra-help") or a.startswith("--cfg")
           for a in argv):
        return default
    try:
        return compose(list(argv)).trainer.get(key, default)
    except UserError as e:
        fail(one_line(e))
def version() -> str:
    """ssl-cli's version, from the installed package's metadata (ssl_cli.__version__ sits above the apps layer)."""
    try:
        return importlib.metadata.version("ssl-cli")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # ours, not Hydra's own version
        print(f"ssl-train (ssl-cli) {version()}")
        return
    register_schemas()
    argv = sys.argv[1:]
    if distributed.under_torchrun():
        # Every rank joins the process group, then runs rank 0's command line (one run directory).
        distributed.start(float(_trainer_setting(argv, "dist_timeout", distributed.DEFAULT_TIMEOUT_S)))
        try:
            argv = distributed.agree_on_command_line(argv)
        except UserError as e:
            fail(one_line(e))
        _check_composes(argv)
        distributed.barrier()  # no rank writes anything before every rank has checked the command line
        sys.argv = [sys.argv[0], *argv]
        try:
            hydra_main()
        finally:
            distributed.stop()
        return
    # trainer.devices=N (given on the command line) starts the same command under torchrun, with the
    # run directory fixed here (the workers' clocks would name their own).
    devices = _trainer_setting(argv, "devices", 1) if any("trainer.devices" in a for a in argv) else 1
    if isinstance(devices, int) and devices > 1:
        argv = distributed.with_run_dir(argv)
        _check_composes(argv)
        sys.exit(distributed.launch(devices, argv))
    _check_composes(argv)
    hydra_main()


if __name__ == "__main__":
    main()

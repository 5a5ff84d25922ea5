"""logger=mlflow: one MLflow run per ssl-cli run, in a local SQLite store by default, one parent run per sweep.

The store is `sqlite:///<folder above the run directory>/mlruns.db` unless `logger.mlflow.tracking_uri`
names another (a server, another database): outputs/<date>/mlruns.db for single runs, the sweep's own
directory for a sweep (`mlflow ui --backend-store-uri sqlite:///multirun/<date>/<time>/mlruns.db`).
The run id is kept in <run_dir>/mlflow_run.json, so `resume=` continues the same MLflow run, and the last
logged step with it: points up to that step are never sent twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, option
from ssl_cli.engine.loggers.base import LOGGERS, Evaluation, Logger
from ssl_cli.engine.outputs import BEST, SUMMARY, write_json
from ssl_cli.engine.plots import plot_confusion_matrix

MISSING = "logger=mlflow needs the mlflow package: pip install ssl-cli[mlflow]"
RUN_FILE = "mlflow_run.json"  # in the run directory: run id, store, last logged step
PARENT_FILE = "mlflow_parent.json"  # in a sweep's directory: the parent run of its jobs
STORE = "mlruns.db"
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch call


@dataclass
class MLflowOptions(Options):
    group = "logger.mlflow"
    tracking_uri: Optional[str] = option(None, "MLflow tracking URI; null: sqlite:///<folder above the run "
                                               "directory>/mlruns.db")
    experiment: str = option("ssl-cli", "MLflow experiment the runs go into")
    log_checkpoint: bool = option(False, "also upload best.pt as an artifact at the end")

    def check(self) -> None:  # with the config check, before anything is written; finding it costs no import
        if importlib.util.find_spec("mlflow") is None:
            raise UserError(MISSING)


def _mlflow():
    """The mlflow package, imported on first use: it is an optional extra and slow to import (seconds),
    so ssl-train without logger=mlflow never pays for it."""
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        raise UserError(MISSING) from None


def store_uri(tracking_uri: Optional[str], folder: Path) -> str:
    return tracking_uri or f"sqlite:///{(Path(folder) / STORE).resolve()}"


def flatten(tree, prefix: str = "") -> Dict[str, str]:
    """A nested config as `dataset.num_labels` -> "40" pairs (MLflow params are flat strings)."""
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]  # MLflow's limit on a param value
    return out


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


@LOGGERS.register("mlflow", MLflowOptions)
class MLflowLogger(Logger):
    """Params: the resolved config flattened, and the group choices. Metrics: as TensorBoard's scalars.
    Artifacts at the end: summary.json, confusion_matrix.png, optionally best.pt."""

    def __init__(self, options: MLflowOptions):
        self.options = options
        self.mlflow = _mlflow()
        self.client = None
        self.run_id: Optional[str] = None
        self.last_step = 0
        self.run_file: Optional[Path] = None

    def start(self, config, choices, run_dir: Path, resumed_step: int) -> None:
        run_dir = Path(run_dir)
        self.run_file = run_dir / RUN_FILE
        saved = json.loads(self.run_file.read_text()) if self.run_file.exists() else None
        uri = saved["tracking_uri"] if saved else store_uri(self.options.tracking_uri, run_dir.parent)
        self.client = self.mlflow.tracking.MlflowClient(tracking_uri=uri)
        if saved:  # a resumed run: the same MLflow run, running again
            self.run_id, self.last_step = saved["run_id"], int(saved.get("last_step", 0))
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"mlflow.runName": run_dir.name, "ssl_cli.run_dir": str(run_dir.resolve())}
        parent = run_dir.parent / PARENT_FILE
        if parent.exists():  # a job of a sweep: nest it under the sweep's run
            tags["mlflow.parentRunId"] = json.loads(parent.read_text())["run_id"]
        run = self.client.create_run(_experiment_id(self.client, self.options.experiment), tags=tags)
        self.run_id = run.info.run_id
        params = {**flatten(config), **{f"choice.{k}": str(v) for k, v in (choices or {}).items()}}
        Param = self.mlflow.entities.Param
        for chunk in _chunks([Param(k, v) for k, v in params.items()], BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        self._save()

    def _save(self) -> None:
        write_json(self.run_file, {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri,
                                   "last_step": self.last_step})

    def log_scalars(self, step, scalars):
        if step <= self.last_step:  # sent before the resumed checkpoint's run was stopped
            return
        now = int(time.time() * 1000)
        Metric = self.mlflow.entities.Metric
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items() if math.isfinite(v)]
        for chunk in _chunks(metrics, 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
        self.last_step = step
        self._save()

    def log_eval(self, step, evaluation: Evaluation):
        self.log_scalars(step, evaluation.scalars)

    def finish(self, summary, run_dir):
        run_dir = Path(run_dir)
        confusion = run_dir / "confusion_matrix.png"
        for path in (run_dir / SUMMARY, confusion, run_dir / "curves.png"):
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        if self.options.log_checkpoint and (run_dir / BEST).exists():
            self.client.log_artifact(self.run_id, str(run_dir / BEST), artifact_path="checkpoints")
        final = summary.get("status") == "completed"
        self.client.set_terminated(self.run_id, status="FINISHED" if final else
                                   ("KILLED" if summary.get("status") == "interrupted" else "FAILED"))


class SweepParentRun(Callback):
    """Hydra callback: a sweep with logger=mlflow gets one parent run, and each job's run is nested under it."""

    def _options(self, config: DictConfig) -> Optional[MLflowOptions]:
        node = OmegaConf.select(config, "logger.mlflow", default=None)
        if node is None:
            return None
        return MLflowOptions(**OmegaConf.to_container(node, resolve=True))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        options = self._options(config)
        if options is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        client = _mlflow().tracking.MlflowClient(tracking_uri=store_uri(options.tracking_uri, sweep_dir))
        run = client.create_run(_experiment_id(client, options.experiment),
                                tags={"mlflow.runName": f"sweep {sweep_dir.name}", "ssl_cli.sweep_dir": str(sweep_dir)})
        overrides = [str(o) for o in config.hydra.overrides.task]
        client.log_param(run.info.run_id, "sweep", " ".join(overrides)[:6000] or "(none)")
        write_json(sweep_dir / PARENT_FILE, {"run_id": run.info.run_id, "tracking_uri": client.tracking_uri})

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / PARENT_FILE
        if self._options(config) is None or not path.exists():
            return
        saved = json.loads(path.read_text())
        client = _mlflow().tracking.MlflowClient(tracking_uri=saved["tracking_uri"])
        report = Path(config.hydra.sweep.dir) / "report.md"
        if report.exists():
            client.log_artifact(saved["run_id"], str(report))
        client.set_terminated(saved["run_id"], status="FINISHED")

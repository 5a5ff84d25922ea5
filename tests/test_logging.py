"""Logging: TensorBoard and MLflow (read back through their own readers), the pictures every run writes,
and the plain log off a terminal (one unwrapped line per evaluation)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import assert_one_line_error, run_cli, ssl_train
from ssl_cli.core.errors import UserError
from ssl_cli.engine.loggers import mlflow as mlflow_logger
from ssl_cli.engine.loggers import tensorboard as tensorboard_logger
from ssl_cli.engine.plots import plot_confusion_matrix, plot_training_curves

# FixMatch on synthetic data: 8 steps, scalars every step, an evaluation every 2, a checkpoint every 2.
SMOKE = ["debug=smoke", "method=fixmatch", "trainer.max_steps=8", "trainer.eval_every=2", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "trainer.num_threads=1"]
LOGGED = ["train/loss", "train/sup_loss", "train/unsup_loss", "train/mask_rate", "lr", "test/accuracy",
          "val/accuracy", "test/knn_accuracy"]


def rows(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def tensorboard_points(run_dir: Path) -> dict:
    """tag -> [(step, value)] as TensorBoard shows it (after its purge of points a resumed run replaced)."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}, tags


def mlflow_points(run_dir: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{(run_dir.parent / 'mlruns.db').resolve()}"
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in LOGGED}
    return client, run, history


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


def check_against_metrics(points: dict, run_dir: Path, what: str) -> None:
    """At every step of metrics.jsonl, each logged key has exactly that value, once; no step is repeated."""
    for key in LOGGED:
        steps = [s for s, _ in points[key]]
        assert len(steps) == len(set(steps)), (what, key, steps)  # nothing logged twice
        logged = dict(points[key])
        for row in rows(run_dir):
            if key in row and math.isfinite(row[key]):
                assert row["step"] in logged, (what, key, row["step"])
                assert same(logged[row["step"]], row[key]), (what, key, row["step"], logged[row["step"]], row[key])


@pytest.mark.slow
def test_tensorboard_and_mlflow_equal_metrics_jsonl_and_resume_appends(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    code, out, err = run_cli([*SMOKE, "logger=[tensorboard,mlflow]", f"hydra.run.dir={run_dir}",
                              "trainer.stop_at_step=4"], tmp_path)
    assert code == 0, err[-2000:]
    assert [r["step"] for r in rows(run_dir)] == [2, 4]
    points, _ = tensorboard_points(run_dir)
    check_against_metrics(points, run_dir, "tensorboard, first part")
    client, run, history = mlflow_points(run_dir)
    check_against_metrics(history, run_dir, "mlflow, first part")
    assert run.info.status == "KILLED"  # stopped early: resumable
    first_run_id = run.info.run_id

    code, out, err = run_cli([f"resume={run_dir}"], tmp_path)
    assert code == 0, err[-2000:]
    assert [r["step"] for r in rows(run_dir)] == [2, 4, 6, 8]
    points, tags = tensorboard_points(run_dir)
    check_against_metrics(points, run_dir, "tensorboard, resumed")
    assert [s for s, _ in points["train/loss"]] == list(range(1, 9))  # every log_every step, once
    assert "test/confusion_matrix" in tags["images"] and "views/strong" in tags["images"]
    client, run, history = mlflow_points(run_dir)
    check_against_metrics(history, run_dir, "mlflow, resumed")
    assert run.info.run_id == first_run_id and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the resume continued the same MLflow run
    assert run.data.params["method.name"] == "fixmatch" and run.data.params["choice.method"] == "fixmatch"
    assert run.data.params["trainer.max_steps"] == "8"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "confusion_matrix.png", "curves.png"} <= artifacts


def test_a_killed_run_resumes_without_duplicate_tensorboard_points(tmp_path):
    """Points written after the last checkpoint (a run killed between checkpoints) are replaced, not doubled."""
    run_dir = tmp_path / "run"
    args = [*SMOKE, "logger=[tensorboard]", "trainer.checkpoint_every=4", f"hydra.run.dir={run_dir}"]
    code, _, err = run_cli([*args, "trainer.stop_at_step=6", "trainer.checkpoint_every=4"], tmp_path)
    assert code == 0, err[-2000:]
    # Pretend the run died at step 6 before saving: put a step-4 checkpoint of the same run back as last.pt.
    code, _, err = run_cli([*args, "trainer.stop_at_step=4", f"hydra.run.dir={tmp_path / 'again'}"], tmp_path)
    assert code == 0, err[-2000:]
    (run_dir / "last.pt").write_bytes((tmp_path / "again" / "last.pt").read_bytes())
    code, _, err = run_cli([f"resume={run_dir}"], tmp_path)
    assert code == 0, err[-2000:]
    points, _ = tensorboard_points(run_dir)
    assert [s for s, _ in points["train/loss"]] == list(range(1, 9))
    check_against_metrics(points, run_dir, "tensorboard after a kill")


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` sees without the package
    with pytest.raises(UserError, match=re.escape("pip install ssl-cli[tensorboard]")):
        tensorboard_logger.TensorBoardLogger(tensorboard_logger.TensorBoardOptions())

    code, _, err = run_cli([*SMOKE, "logger=[tensorboard]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(code, err, "pip install ssl-cli[tensorboard]")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees without the package
    with pytest.raises(UserError, match=re.escape("pip install ssl-cli[mlflow]")):
        mlflow_logger._mlflow()
    code, _, err = run_cli([*SMOKE, "logger=[mlflow]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(code, err, "pip install ssl-cli[mlflow]")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_logger_options_are_checked(tmp_path):
    code, _, err = run_cli([*SMOKE, "logger=[tensorboard]", "logger.tensorboard.flush_secs=0"], tmp_path)
    assert_one_line_error(code, err, "logger.tensorboard.flush_secs")
    code, _, err = run_cli([*SMOKE, "logger=[wandb]"], tmp_path)
    assert_one_line_error(code, err, "wandb")


def test_every_run_writes_its_pictures_and_a_plain_log_line_per_evaluation(tmp_path):
    """`ssl-train ... > log.txt 2>&1`: one unwrapped line per evaluation; curves.png and confusion_matrix.png."""
    run_dir = tmp_path / "run"
    long_name = "a_rather_long_run_directory_name_that_would_wrap_" * 2
    result = ssl_train([*SMOKE, f"hydra.run.dir={run_dir / long_name}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    evaluations = [line for line in log.splitlines() if re.search(r"\bstep \d+/8\b", line)]
    assert len(evaluations) == 4, log  # steps 2, 4, 6, 8
    for line in evaluations:
        assert re.search(r"step \d+/8 \| loss [\d.]+ .*\| val_acc [\d.]+ \| test_acc [\d.]+ \| test_knn [\d.]+ \| "
                         r"[\d.]+s \| (fp32|bf16)$", line), line  # the whole record on its one line
        assert len(line) > 80
    assert "│" not in "".join(evaluations)
    for picture in ("curves.png", "confusion_matrix.png"):
        data = (run_dir / long_name / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, picture


def test_pictures_from_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "lr": 0.03, "train/loss": 1.0 / s, "train/mask_rate": 0.1 * s,
                                           "test/accuracy": 0.1 * s}) + "\n" for s in range(1, 6)))
    assert plot_training_curves(metrics, tmp_path / "curves.png").stat().st_size > 5000
    assert plot_training_curves(tmp_path / "absent.jsonl", tmp_path / "none.png") is None
    path = plot_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"], tmp_path / "cm.png", title="test")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_sweep_nests_its_jobs_under_one_mlflow_parent_run_and_reports_accuracy_curves(tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    code, out, err = run_cli(["-m", *SMOKE, "logger=[mlflow]", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert code == 0, err[-2000:]
    parent = json.loads((sweep / "mlflow_parent.json").read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    runs = client.search_runs([client.get_run(parent["run_id"]).info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent["run_id"]]
    assert len(runs) == 3 and len(children) == 2
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"
    assert (sweep / "accuracy_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_version_is_ssl_clis(tmp_path):
    result = ssl_train(["--version"], tmp_path)
    assert result.returncode == 0 and re.fullmatch(r"ssl-train \(ssl-cli\) \d+\.\d+\.\d+\S*\n", result.stdout), result

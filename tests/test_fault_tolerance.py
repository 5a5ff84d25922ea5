"""Crashes, pre-emption, divergence and damaged checkpoints never cost a run."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import compose, ssl_train
from ssl_cli.checkpoint import load_checkpoint, save_checkpoint
from ssl_cli.errors import UserError
from ssl_cli.train import LAST, Trainer

# Long enough (a few seconds) that a signal can land at a random step.
LONG = ["debug=smoke", "method=fixmatch", "trainer.deterministic=true", "trainer.max_steps=60",
        "trainer.eval_every=10", "trainer.checkpoint_every=5", "trainer.log_every=5"]


def final_metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return summary["final"]


def metric_rows(run_dir: Path) -> list:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    result = ssl_train(LONG + ["hydra.run.dir=run"], root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def start_run(cwd: Path, run_dir: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("ssl-train")
    env = {**os.environ, "SSL_CLI_CACHE": str(cwd / ".cache")}
    return subprocess.Popen([str(exe), *LONG, f"hydra.run.dir={run_dir}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "run never wrote its first checkpoint"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_killed_run_resumes_to_identical_metrics(sig, uninterrupted, tmp_path):
    proc = start_run(tmp_path, "run")
    wait_for(tmp_path / "run" / LAST, proc)
    time.sleep(random.uniform(0.0, 1.0))  # a random step after the first checkpoint
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    run_dir = tmp_path / "run"
    if sig == signal.SIGTERM and proc.returncode == 0 and (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
        # Unless the signal came after the last step, the run saved and reported itself interrupted.
        assert summary["status"] in ("interrupted", "completed")
        if summary["status"] == "interrupted":
            assert load_checkpoint(run_dir / LAST)["step"] == summary["step"]
    resumed = ssl_train([f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert final_metrics(run_dir) == final_metrics(uninterrupted)
    assert metric_rows(run_dir) == metric_rows(uninterrupted)


def test_sigterm_marks_the_run_interrupted(tmp_path):
    proc = start_run(tmp_path, "run")
    wait_for(tmp_path / "run" / LAST, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert proc.returncode == 0 and summary["status"] == "interrupted" and summary["step"] < 60


def small_trainer(tmp_path: Path, *extra) -> Trainer:
    cfg = compose(["debug=smoke", "trainer.max_steps=9", "trainer.checkpoint_every=3", "trainer.eval_every=3", *extra])
    return Trainer(cfg, tmp_path)


def test_crash_in_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = small_trainer(tmp_path, "trainer.stop_at_step=3")
    trainer.fit()
    good = (tmp_path / LAST).read_bytes()

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial checkpoint")  # a few bytes, then the process 'dies'
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(LAST)
    monkeypatch.undo()
    assert (tmp_path / LAST).read_bytes() == good
    assert load_checkpoint(tmp_path / LAST)["step"] == 3
    result = ssl_train([f"resume={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 9


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint({"step": 1}, path)

    def no_space(obj, f, *args, **kwargs):
        f.write(b"some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(UserError, match="No space left on device; the previous checkpoint is kept"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind


def test_truncated_checkpoint_gives_one_line(tmp_path):
    trainer = small_trainer(tmp_path, "trainer.stop_at_step=3")
    trainer.fit()
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 2])
    result = ssl_train([f"resume={tmp_path}"], tmp_path)
    assert result.returncode == 2 and "cannot load checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"step": 1, "payload": Sneaky()}, tmp_path / LAST)
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / LAST)
    assert not (tmp_path / "pwned").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = small_trainer(tmp_path)
    real_step = trainer.method.training_step

    def poisoned(model, batch, step):
        out = real_step(model, batch, step)
        if step >= 4:  # the 5th step's loss is NaN
            out.loss = out.loss * float("nan")
        return out

    trainer.method.training_step = poisoned
    with pytest.raises(UserError, match="non-finite at step 5"):
        trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 5
    state = load_checkpoint(tmp_path / LAST)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_loss_can_be_skipped(tmp_path):
    trainer = small_trainer(tmp_path, "trainer.nonfinite=skip")
    real_step = trainer.method.training_step

    def poisoned(model, batch, step):
        out = real_step(model, batch, step)
        if step in (2, 5):
            out.loss = out.loss * float("inf")
        return out

    trainer.method.training_step = poisoned
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["skipped_nonfinite_steps"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

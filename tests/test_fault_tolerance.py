"""Crashes, pre-emption, divergence and damaged checkpoints never cost a run."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (assert_one_line_error, compose, run_cli, snapshot, ssl_train,
                      write_image_folder)
from ssl_cli.core.errors import UserError
from ssl_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from ssl_cli.engine.config import check_config
from ssl_cli.engine.outputs import LAST
from ssl_cli.engine.trainer import Trainer
from ssl_cli.models import BACKBONES, build_backbone

# In-process runs (conftest.run_cli): 12 deterministic steps, evaluated and saved every 4.
STEPS = ["debug=smoke", "method=fixmatch", "trainer.deterministic=true", "trainer.num_threads=1",
         "trainer.progress_bar=false", "trainer.max_steps=12", "trainer.eval_every=4", "trainer.checkpoint_every=4",
         "trainer.log_every=2"]
# A child process (the installed ssl-train) long enough to be signalled after its first checkpoint.
LONG = ["debug=smoke", "method=fixmatch", "trainer.deterministic=true", "trainer.num_threads=1",
        "trainer.max_steps=60", "trainer.eval_every=10", "trainer.checkpoint_every=5", "trainer.log_every=5"]


def final_metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return summary["final"]


def metric_rows(run_dir: Path) -> list:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def completed_in_process(root: Path, args) -> Path:
    code, _, err = run_cli(args + ["hydra.run.dir=run"], root)
    assert code == 0, err
    return root / "run"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """STEPS run to the end without a signal: what every interrupted and resumed run must match."""
    return completed_in_process(tmp_path_factory.mktemp("full"), STEPS)


def signal_at(monkeypatch, sig: int, at_step: int, times: int = 1) -> list:
    """While Trainer.train_step runs step `at_step` (0-based), send `sig` to this process `times` times.

    The trainer's own handler receives it, as from `kill` or Ctrl-C; the step itself still runs.
    Returns the steps at which the signal was sent.
    """
    real = Trainer.train_step
    sent = []

    def train_step(self, step):
        if step == at_step:
            for _ in range(times):
                os.kill(os.getpid(), sig)
            sent.append(step)
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return sent


def resume_in_process(run_dir: Path, monkeypatch) -> None:
    monkeypatch.undo()  # the resumed run gets no signal
    code, _, err = run_cli([f"resume={run_dir}"], run_dir.parent)
    assert code == 0, err


@pytest.mark.parametrize("sig,at_step", [
    pytest.param(signal.SIGTERM, 6, id="sigterm-between-checkpoints"),
    pytest.param(signal.SIGTERM, 3, id="sigterm-at-a-checkpoint-step", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, 6, id="sigint-between-checkpoints", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, 3, id="sigint-at-a-checkpoint-step", marks=pytest.mark.slow),
])
def test_signal_at_a_fixed_step_saves_there_and_resumes_to_identical_metrics(sig, at_step, uninterrupted, tmp_path,
                                                                             monkeypatch):
    sent = signal_at(monkeypatch, sig, at_step)
    code, _, err = run_cli(STEPS + ["hydra.run.dir=run"], tmp_path)
    assert code == 128 + sig, err  # saved but not finished: exit 128 + N, as for a signal (docs/distributed.md)
    assert sent == [at_step]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    # The step in progress finishes; the run stops after it, saved and marked interrupted.
    assert summary["status"] == "interrupted" and summary["step"] == at_step + 1, summary
    assert torch.load(run_dir / LAST, weights_only=True)["step"] == at_step + 1
    assert f"received {signal.Signals(sig).name}" in (run_dir / "train.log").read_text()
    assert metric_rows(run_dir) == [r for r in metric_rows(uninterrupted) if r["step"] <= at_step + 1]
    resume_in_process(run_dir, monkeypatch)
    assert final_metrics(run_dir) == final_metrics(uninterrupted)
    assert metric_rows(run_dir) == metric_rows(uninterrupted)


@pytest.mark.slow
def test_signal_in_the_last_step_completes_the_run(uninterrupted, tmp_path, monkeypatch):
    signal_at(monkeypatch, signal.SIGTERM, 11)
    run_dir = completed_in_process(tmp_path, STEPS)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 12
    assert summary["final"] == final_metrics(uninterrupted)


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes(uninterrupted, tmp_path, monkeypatch):
    """Two SIGINTs in step 7 (0-based 6): no saving, KeyboardInterrupt; last.pt from step 4 resumes exactly."""
    signal_at(monkeypatch, signal.SIGINT, 6, times=2)
    with pytest.raises(KeyboardInterrupt):
        run_cli(STEPS + ["hydra.run.dir=run"], tmp_path)
    run_dir = tmp_path / "run"
    assert torch.load(run_dir / LAST, weights_only=True)["step"] == 4
    resume_in_process(run_dir, monkeypatch)
    assert final_metrics(run_dir) == final_metrics(uninterrupted)
    assert metric_rows(run_dir) == metric_rows(uninterrupted)


def start_run(cwd: Path, run_dir: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("ssl-train")
    env = {**os.environ, "SSL_CLI_CACHE": str(cwd / ".cache")}
    return subprocess.Popen([str(exe), *LONG, f"hydra.run.dir={run_dir}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout=120.0) -> None:
    """Polls until `path` exists (the run's first checkpoint): no guessing how long a step takes."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "run never wrote its first checkpoint"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_to_the_installed_command_marks_the_run_interrupted(tmp_path):
    """The real command in a child process: SIGTERM once its first checkpoint (step 5 of 60) exists."""
    proc = start_run(tmp_path, "run")
    wait_for(tmp_path / "run" / LAST, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # interrupted: not finished, so not 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 5 <= summary["step"] < 60, summary
    assert torch.load(tmp_path / "run" / LAST, weights_only=True)["step"] == summary["step"]
    assert "received SIGTERM" in (tmp_path / "run" / "train.log").read_text() and "Traceback" not in err


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_resumes_to_identical_metrics(tmp_path_factory, tmp_path):
    """kill -9 (no handler runs) once the first checkpoint exists; the resumed run matches an uninterrupted one."""
    proc = start_run(tmp_path, "run")
    wait_for(tmp_path / "run" / LAST, proc)
    proc.kill()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    full = completed_in_process(tmp_path_factory.mktemp("long"), LONG + ["trainer.progress_bar=false"])
    resumed = ssl_train([f"resume={tmp_path / 'run'}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert final_metrics(tmp_path / "run") == final_metrics(full)
    assert metric_rows(tmp_path / "run") == metric_rows(full)


def small_trainer(tmp_path: Path, *extra) -> Trainer:
    cfg = compose(["debug=smoke", "trainer.max_steps=9", "trainer.checkpoint_every=3", "trainer.eval_every=3", *extra])
    return Trainer(check_config(cfg), tmp_path)


@pytest.mark.slow
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
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind


@pytest.mark.slow
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


# --------------------------------------------------------------------------- hostile input
# Each bad input stops with one line on stderr and exit code 2, and leaves every earlier run as it was.
# These run ssl-train in-process (conftest.run_cli): the same code path as the command, in a fraction of
# the time; the command itself is exercised above and in test_cli.py / test_fuzz.py.

FAST = ["debug=smoke", "trainer.num_threads=1", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A completed run next to which every bad command below runs; none may change it."""
    root = tmp_path_factory.mktemp("earlier")
    code, _, err = run_cli(FAST + ["method=supervised", "hydra.run.dir=run"], root)
    assert code == 0, err
    return root / "run"


def refused(args, cwd: Path, earlier: Path, *fragments) -> str:
    """Runs `ssl-train <args>`; asserts one line naming `fragments`, exit 2, and `earlier` untouched."""
    before = snapshot(earlier)
    code, _, err = run_cli(args, cwd)
    line = assert_one_line_error(code, err, *fragments)
    assert snapshot(earlier) == before
    return line


def folder_args(root: Path, run_dir: str = "run") -> list:
    return FAST + ["dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=3", "dataset.num_validation=0",
                   "method=supervised", "trainer.batch_size=4", f"hydra.run.dir={run_dir}"]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CLI_CACHE", str(tmp_path / "cache"))  # decoded afresh: nothing cached
    return write_image_folder(tmp_path / "images", per_class=4, size=12)


@pytest.mark.parametrize("content", ["nothing", "hidden files", "an empty sub-folder"])
def test_image_folder_with_an_empty_class_folder(content, folder, tmp_path, earlier_run):
    empty = folder / "train" / "bird"
    empty.mkdir()
    if content == "hidden files":
        (empty / ".DS_Store").write_bytes(b"\0")
    elif content == "an empty sub-folder":
        (empty / "more").mkdir()
    refused(folder_args(folder), tmp_path, earlier_run, f"class folder {empty} holds no images",
            "every class needs training images")


def test_class_only_in_the_test_folder(folder, tmp_path, earlier_run):
    only_test = folder / "test" / "bird"
    only_test.mkdir()
    (folder / "test" / "cat" / "000.png").rename(only_test / "000.png")
    refused(folder_args(folder), tmp_path, earlier_run, "'bird' is in", f"{folder / 'test'} but not in",
            str(folder / "train"), "classes in train/: cat, dog, frog")


def _deny(monkeypatch, denied: Path) -> None:
    """Reading `denied` (a folder or a file) fails with EACCES, as without read permission."""
    import builtins

    denied = str(denied)

    def guard(fn):
        def wrapper(path=".", *args, **kwargs):
            if str(os.fspath(path)) == denied:
                raise PermissionError(errno.EACCES, "Permission denied", denied)
            return fn(path, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))


@pytest.mark.parametrize("what", ["train folder", "test folder", "class folder", "nested folder", "image file"])
def test_unreadable_folder_or_image(what, folder, tmp_path, earlier_run, monkeypatch):
    (folder / "train" / "dog" / "more").mkdir()
    denied = {"train folder": folder / "train", "test folder": folder / "test", "class folder": folder / "train" / "dog",
              "nested folder": folder / "train" / "dog" / "more",
              "image file": folder / "train" / "cat" / "001.png"}[what]
    _deny(monkeypatch, denied)
    refused(folder_args(folder), tmp_path, earlier_run, f"cannot read {denied}: permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading (simulated above instead)")
@pytest.mark.parametrize("what", ["class folder", "image file"])
def test_unreadable_folder_or_image_for_real(what, folder, tmp_path, earlier_run):
    denied = folder / "train" / "dog" if what == "class folder" else folder / "train" / "cat" / "001.png"
    denied.chmod(0)
    try:
        refused(folder_args(folder), tmp_path, earlier_run, f"cannot read {denied}: permission denied")
    finally:
        denied.chmod(0o755)


# -- resuming with a checkpoint that does not fit


@pytest.fixture(scope="module")
def stopped_synthetic(tmp_path_factory):
    """A synthetic-data run stopped at step 3 of 6, with a resumable last.pt."""
    root = tmp_path_factory.mktemp("stopped")
    code, _, err = run_cli(FAST + ["method=supervised", "trainer.stop_at_step=3", "hydra.run.dir=run"], root)
    assert code == 0, err
    return root / "run"


@pytest.fixture
def stopped(stopped_synthetic, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_synthetic, run_dir)
    return run_dir


def refused_resume(args, run_dir: Path, *fragments) -> str:
    """A resume that must be refused before anything in the run directory changes (.hydra-resume included)."""
    return refused([f"resume={run_dir}", *args], run_dir.parent, run_dir, *fragments)


@pytest.mark.parametrize("override,what", [
    ("backbone=wrn28_2", "backbone=wrn28_2 (the checkpoint has backbone=cnn)"),
    ("dataset.num_classes=5", "dataset.num_classes=5 (the checkpoint has dataset.num_classes=4)"),
    ("dataset.image_size=32", "dataset.image_size=32 (the checkpoint has dataset.image_size=16)"),
    ("dataset.channels=1", "dataset.channels=1 (the checkpoint has dataset.channels=3)"),
    ("method=fixmatch", "method=fixmatch (the checkpoint has method=supervised)"),
    ("optim.lr=0.5", "optim.lr=0.5 (the checkpoint has optim.lr=0.03)"),
], ids=["backbone", "class count", "image size", "channels", "method", "learning rate"])
def test_resume_refuses_overrides_that_contradict_the_checkpoint(override, what, stopped):
    line = refused_resume(FAST + [override], stopped, what)
    assert "Only trainer.device and trainer.stop_at_step may change on resume" in line


def test_resume_accepts_the_original_command_line_again(stopped):
    """Repeating the overrides the run started with (plus resume=) is not a contradiction."""
    code, _, err = run_cli(FAST + ["method=supervised", "trainer.stop_at_step=4", f"resume={stopped}"], stopped.parent)
    assert code == 0, err
    assert json.loads((stopped / "summary.json").read_text())["step"] == 4


def _tamper(run_dir: Path, change) -> None:
    state = load_checkpoint(run_dir / LAST)
    change(state)
    save_checkpoint(state, run_dir / LAST)


def test_resume_refuses_a_checkpoint_holding_another_backbone(stopped):
    other = build_backbone("wrn28_2", BACKBONES.options("wrn28_2")(), 3, 4, (16, 16)).state_dict()
    _tamper(stopped, lambda s: s.update(model=other))
    refused_resume([], stopped, "weights are not those of the cnn for 4 classes of 3x16x16 images",
                   "weight(s) of the model missing")


def test_resume_refuses_a_checkpoint_for_another_class_count(stopped):
    def five_classes(state):
        w = state["model"]["classifier.weight"]
        state["model"]["classifier.weight"] = torch.zeros(5, w.shape[1])
        state["model"]["classifier.bias"] = torch.zeros(5)

    _tamper(stopped, five_classes)
    refused_resume([], stopped, f"classifier.weight is [5, {load_checkpoint(stopped / LAST)['model']['classifier.weight'].shape[1]}]"
                   " in the checkpoint, [4, ")


def test_resume_refuses_a_checkpoint_for_another_input_shape(stopped):
    def grey(state):
        first = next(k for k, v in state["model"].items() if v.ndim == 4)  # the first convolution
        w = state["model"][first]
        state["model"][first] = torch.zeros(w.shape[0], 1, *w.shape[2:])

    _tamper(stopped, grey)
    refused_resume([], stopped, "in the checkpoint", "in the model")


@pytest.mark.parametrize("content", ["a plain tensor", "a dict of numbers", "not a checkpoint at all"])
def test_resume_refuses_a_file_that_is_not_a_run_checkpoint(content, stopped):
    path = stopped / LAST
    if content == "a plain tensor":
        torch.save(torch.zeros(3), path)
    elif content == "a dict of numbers":
        torch.save({"step": 1}, path)
    else:
        path.write_text("hello")
    refused_resume([], stopped, f"resume={stopped}")


@pytest.fixture
def stopped_folder_run(folder, tmp_path):
    """An image-folder run (3 classes of 3x12x12 images) stopped at step 2 of 6."""
    code, _, err = run_cli(folder_args(folder, str(tmp_path / "run")) + ["trainer.stop_at_step=2"], tmp_path)
    assert code == 0, err
    return folder, tmp_path / "run"


def test_resume_refuses_data_with_another_class_count(stopped_folder_run):
    folder, run_dir = stopped_folder_run
    write_image_folder(folder, classes=("cat", "dog", "frog", "bird"), per_class=4, size=12)
    refused_resume([], run_dir, "num_classes 3 in the checkpoint, 4 now", f"the data in {folder}")


@pytest.mark.parametrize("change,what", [
    ({"size": 16}, "image_size [12, 12] in the checkpoint, [16, 16] now"),
    ({"grey": True}, "channels 3 in the checkpoint, 1 now"),
], ids=["image size", "channels"])
def test_resume_refuses_data_with_another_input_shape(change, what, stopped_folder_run):
    folder, run_dir = stopped_folder_run
    shutil.rmtree(folder)
    write_image_folder(folder, per_class=4, size=change.get("size", 12))
    if change.get("grey"):
        from PIL import Image

        for p in folder.rglob("*.png"):
            Image.open(p).convert("L").save(p)
    refused_resume([], run_dir, what)

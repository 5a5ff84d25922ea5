"""ssl-train end to end, as a user runs it: smoke runs, outputs, resume, and one-line errors."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli, snapshot, ssl_train, write_image_folder

SMOKE = ["debug=smoke"]


def run_ok(args, cwd, **kw):
    result = ssl_train(args, cwd, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("summary.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "pseudolabel", "fixmatch"])
def test_smoke_run_writes_every_output(method, tmp_path):
    run_ok(SMOKE + [f"method={method}", "hydra.run.dir=run"], tmp_path)
    run_dir = tmp_path / "run"
    for name in ("summary.json", "metrics.jsonl", "last.pt", "best.pt", "labeled_indices.json",
                 "confusion_matrix.json", "train.log", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 6 and summary["method"] == method
    assert summary["best"]["selected_by"] == "val/accuracy"
    assert summary["choices"]["method"] == method
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    if method != "supervised":
        # pseudo-label accuracy counts the confident images: none yet this early means no figure, not 0 or NaN
        assert "train/mask_rate" in rows[0]
        assert ("train/pseudo_label_acc" in rows[0]) == (rows[0]["train/mask_rate"] > 0)
    log = (run_dir / "train.log").read_text()
    assert "step 3/6" in log and "test_acc" in log


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "pseudolabel", "fixmatch"])
def test_smoke_on_digits(method, tmp_path):
    run_ok([f"method={method}", "trainer.max_steps=20", "trainer.eval_every=10", "trainer.device=cpu",
            "hydra.run.dir=run"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["num_labels"] == 40
    # The reported accuracy is that of the test predictions: the confusion matrix's diagonal share, over
    # the 359 test digits (a fifth of 1,797, the fixed split).
    matrix = json.loads((tmp_path / "run" / "confusion_matrix.json").read_text())["matrix"]
    total = sum(map(sum, matrix))
    assert total == 359 and len(matrix) == 10
    assert summary["final"]["test/accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(10)) / total)
    assert summary["final"]["test/accuracy"] > 0.5  # 20 steps with 40 labels: about 0.78 here; chance is 0.1


METHODS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "method").glob("*.yaml"))
# Short stages for methods trained in several (selfsup: pretraining, then fine-tuning).
STAGED = {"selfsup": ["method.pretrain_steps=4", "method.pretrain_batch_size=8"]}


@pytest.mark.parametrize("method", [m if m == "supervised" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(method, tmp_path):
    """Stopped at step 5 of 8 and resumed, every method ends with exactly the metrics of an uninterrupted run.

    In-process (conftest.run_cli) for speed; test_fault_tolerance.py kills real processes.
    """
    common = SMOKE + [f"method={method}", "trainer.deterministic=true", "trainer.max_steps=8", "trainer.eval_every=2",
                      "trainer.checkpoint_every=2", "trainer.num_threads=1", "trainer.progress_bar=false",
                      *STAGED.get(method, [])]
    code, _, err = run_cli(common + ["hydra.run.dir=full"], tmp_path)
    assert code == 0, err
    code, _, err = run_cli(common + ["trainer.stop_at_step=5", "hydra.run.dir=part"], tmp_path)
    assert code == 0, err
    part = tmp_path / "part"
    assert json.loads((part / "summary.json").read_text())["status"] == "interrupted"
    code, _, err = run_cli([f"resume={part}"], tmp_path)
    assert code == 0, err
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["step"] == 8
    assert resumed["final"] == full["final"]
    assert metric_rows(part) == metric_rows(tmp_path / "full")
    assert (part / ".hydra" / "config.yaml").exists() and (part / ".hydra-resume" / "config.yaml").exists()


def metric_rows(run_dir: Path) -> dict:
    """Every metrics.jsonl of a run (one per stage for methods trained in stages), without timings."""
    rows = {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        rows[str(path.relative_to(run_dir))] = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in lines]
    assert rows, f"no metrics.jsonl under {run_dir}"
    return rows


@pytest.mark.slow
def test_labeled_indices_can_be_reused(tmp_path):
    run_ok(SMOKE + ["seed=1", "hydra.run.dir=a"], tmp_path)
    run_ok(SMOKE + ["seed=2", f"dataset.labeled_indices={tmp_path / 'a'}", "hydra.run.dir=b"], tmp_path)
    a = json.loads((tmp_path / "a" / "labeled_indices.json").read_text())
    b = json.loads((tmp_path / "b" / "labeled_indices.json").read_text())
    assert a["labeled"] == b["labeled"] and a["validation"] == b["validation"]


@pytest.mark.slow
def test_image_folder_run(tmp_path):
    root = write_image_folder(tmp_path / "folder", per_class=8, size=12)
    run_ok(["dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6", "trainer.max_steps=4",
            "trainer.batch_size=4", "trainer.eval_every=2", "trainer.device=cpu", "hydra.run.dir=run"], tmp_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_labels"] == 6


BAD = [
    (["dataset.num_labels=3"], "below the number of classes"),
    (["dataset.num_labels=100000"], "exceeds"),
    (["dataset.num_labels=null", "dataset.label_fraction=1.5"], "label_fraction must be in (0, 1]"),
    (["dataset.num_labels=null", "dataset.label_fraction=0"], "label_fraction must be in (0, 1]"),
    (["dataset.label_fraction=0.5"], "exactly one"),
    (["method=fixmatch", "method.confidence_threshold=1.5"], "confidence_threshold must be in [0, 1]"),
    (["method=pseudolabel", "method.confidence_threshold=-0.1"], "confidence_threshold must be in [0, 1]"),
    (["trainer.batch_size=0"], "trainer.batch_size must be >= 1, got 0"),
    (["trainer.max_steps=-5"], "trainer.max_steps must be >= 1, got -5"),
    (["method.unlabeled_ratio=0"], "method.unlabeled_ratio must be in [1, 1024], got 0"),
    (["trainer.device=cuda"], "CUDA is not available"),
    (["method=nonexistent"], "nonexistent"),
    (["dataset=cifar10", "dataset.root=/no/such/folder"], "/no/such/folder does not exist"),
    (["trainer.max_steps=abc"], "trainer.max_steps"),
    (["not_a_key=1"], "not_a_key"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gives_one_line_and_exit_2(args, message, tmp_path):
    result = ssl_train(SMOKE + args + ["hydra.run.dir=run"], tmp_path)
    assert_one_line_error(result.returncode, result.stderr, message)


@pytest.mark.slow
def test_bad_image_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    r = ssl_train(SMOKE + ["dataset=imagefolder", f"dataset.root={empty}", "hydra.run.dir=r1"], tmp_path)
    assert r.returncode == 2 and "holds no images" in r.stderr and "Traceback" not in r.stderr
    root = write_image_folder(tmp_path / "broken", per_class=4, size=8)
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    folder = SMOKE + ["dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=3",
                      "dataset.num_validation=0"]
    # By default an unreadable file is skipped and listed with the run ...
    run_ok(folder + ["hydra.run.dir=r2"], tmp_path)
    assert (tmp_path / "r2" / "bad_images.txt").read_text().strip().endswith("bad.jpg")
    # ... and with bad_images=error it stops the run with a one-line message naming it.
    r = ssl_train(folder + ["dataset.bad_images=error", "hydra.run.dir=r3"], tmp_path)
    assert r.returncode == 2 and "1 unreadable image file(s)" in r.stderr and "bad.jpg" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_input_leaves_earlier_runs_untouched(tmp_path):
    run_ok(SMOKE + ["hydra.run.dir=run"], tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    # The same directory again, without resume=: refused, nothing overwritten.
    r = ssl_train(SMOKE + ["hydra.run.dir=run"], tmp_path)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    r = ssl_train(SMOKE + ["dataset.num_labels=1", "hydra.run.dir=run2"], tmp_path)
    assert r.returncode == 2
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


FAST = SMOKE + ["method=supervised", "trainer.num_threads=1", "trainer.progress_bar=false"]


@pytest.mark.parametrize("how", ["interrupted", "killed"])
def test_a_stopped_run_is_never_overwritten(how, tmp_path):
    code, _, err = run_cli(FAST + ["trainer.stop_at_step=3", "hydra.run.dir=run"], tmp_path)
    assert code == 0, err
    if how == "killed":  # kill -9 leaves a checkpoint and metrics, but no summary
        (tmp_path / "run" / "summary.json").unlink()
    before = snapshot(tmp_path / "run")
    code, _, err = run_cli(FAST + ["hydra.run.dir=run"], tmp_path)
    assert_one_line_error(code, err, "already holds a run (last.pt); continue it with resume=")
    assert snapshot(tmp_path / "run") == before


def test_a_failed_attempt_can_be_retried_in_its_directory(tmp_path):
    """A run that failed before training (bad data) left nothing to lose: the same command may run again."""
    root = tmp_path / "images"
    args = FAST + ["dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=3", "dataset.num_validation=0",
                   "hydra.run.dir=run"]
    code, _, err = run_cli(args, tmp_path)
    assert_one_line_error(code, err, f"dataset folder {root} does not exist")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    (root / "train").mkdir(parents=True)
    code, _, err = run_cli(args, tmp_path)  # still bad data: the newer failure is the one recorded
    assert_one_line_error(code, err, f"no class folders in {root / 'train'}")
    assert "no class folders" in json.loads((tmp_path / "run" / "summary.json").read_text())["error"]
    write_image_folder(root, per_class=4, size=8)
    code, _, err = run_cli(args, tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_sweep_never_overwrites_an_earlier_sweep(tmp_path):
    args = ["-m", "seed=0", "hydra.sweep.dir=sweep", *FAST, "trainer.max_steps=2"]
    code, _, err = run_cli(args, tmp_path)
    assert code == 0, err
    before = snapshot(tmp_path / "sweep")
    assert any(name.endswith("summary.json") for name in map(str, before))
    code, _, err = run_cli(args, tmp_path)
    assert_one_line_error(code, err, "sweep already holds an earlier sweep")
    assert snapshot(tmp_path / "sweep") == before


@pytest.mark.parametrize("run_dir,message", [("afile", "is a file, not a directory"),
                                             ("afile/sub", "cannot create it"), ("''", "hydra.run.dir is empty")])
def test_a_run_directory_that_cannot_be_made_gives_one_line(run_dir, message, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    code, _, err = run_cli(FAST + [f"hydra.run.dir={run_dir}"], tmp_path)
    assert_one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow
def test_installed_command_runs_from_another_directory(tmp_path):
    """Configs ship inside the package: the command works where there is no configs/ folder."""
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    run_ok(SMOKE + ["hydra.run.dir=run"], elsewhere)
    assert (elsewhere / "run" / "summary.json").exists()

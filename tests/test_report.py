"""The sweep report: numbers match the job summaries, failures and gaps are reported, not fatal."""

import csv
import json
import math
import statistics

import pytest

from conftest import ssl_train
from ssl_cli.apps.report import labels_needed, main as report_main, make_report, missing_from_sweep, \
    plot_accuracy_curves


def test_labels_needed_interpolates_on_log_axis():
    curve = [(10, 0.5), (100, 0.9)]
    labels, note = labels_needed(curve, 0.7)
    assert note == "" and labels == pytest.approx(math.sqrt(10 * 100))  # halfway in log space
    assert labels_needed(curve, 0.4) == (10.0, "<=")
    assert labels_needed(curve, 0.95) == (None, "not reached")


def write_summary(root, method, labels, seed, acc, status="completed", wall_time_s=None):
    d = root / f"{method}_{labels}_{seed}"
    (d / ".hydra").mkdir(parents=True)
    summary = {"status": status, "method": method, "num_labels": labels, "seed": seed, "run_dir": str(d)}
    if wall_time_s is not None:
        summary["wall_time_s"] = wall_time_s
    if status == "completed":
        summary["final"] = {"test/accuracy": acc}
        summary["train"] = {"mask_rate": 0.5, "pseudo_label_acc": 0.9} if method != "supervised" else {}
    (d / "summary.json").write_text(json.dumps(summary))


def test_report_from_summaries(tmp_path):
    for seed, (s20, s200, f20, f200) in enumerate([(0.5, 0.8, 0.7, 0.9), (0.6, 0.8, 0.75, 0.92)]):
        write_summary(tmp_path, "supervised", 20, seed, s20)
        write_summary(tmp_path, "supervised", 200, seed, s200)
        write_summary(tmp_path, "fixmatch", 20, seed, f20)
        write_summary(tmp_path, "fixmatch", 200, seed, f200)
    report = make_report(tmp_path)
    cell = report.cells[("fixmatch", 20)]
    assert cell.mean == pytest.approx(0.725) and cell.std == pytest.approx(statistics.stdev([0.7, 0.75]))
    needed = report.labels_needed()["fixmatch"]
    # supervised reaches 0.8 at 200 labels; fixmatch goes 0.725 -> 0.91 between 20 and 200 labels
    expected = math.exp(math.log(20) + (0.8 - 0.725) / (0.91 - 0.725) * math.log(10))
    assert needed["labels_needed"] == pytest.approx(expected)
    assert needed["labeling_saved"] == pytest.approx(1 - expected / 200)
    assert report.missing == [] and report.failed == []


def test_partial_sweep_names_what_is_missing(tmp_path):
    write_summary(tmp_path, "supervised", 20, 0, 0.5)
    write_summary(tmp_path, "fixmatch", 20, 0, 0.7)
    write_summary(tmp_path, "fixmatch", 20, 1, None, status="failed")
    (tmp_path / "still_running" / ".hydra").mkdir(parents=True)
    report = make_report(tmp_path)
    assert [s["seed"] for s in report.failed] == [1]
    assert [p.name for p in report.pending] == ["still_running"]
    assert "fixmatch / 20 labels / seed 1" in report.missing and "supervised / 20 labels / seed 1" in report.missing


def test_a_boolean_override_spelt_as_hydra_saves_it_counts_as_done():
    # The command line says trainer.progress_bar=false; a sweep job's saved overrides can say False.
    expected = [["method=fixmatch", "seed=0", "trainer.progress_bar=false"],
                ["method=fixmatch", "seed=1", "trainer.progress_bar=false"]]
    done = [{"status": "completed", "_overrides": ["method=fixmatch", "seed=0", "trainer.progress_bar=False"]}]
    assert missing_from_sweep(expected, done) == ["seed=1"]


@pytest.mark.slow
def test_real_multirun_with_a_failing_job(tmp_path):
    # num_labels=2 is below synthetic's 4 classes: those jobs fail, the others must still run and report.
    result = ssl_train(["-m", "debug=smoke", "method=supervised,fixmatch", "dataset.num_labels=8,2,16",
                        "seed=0,1", "hydra.sweep.dir=sweep"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert len(summaries) == 12
    failed = [s for s in summaries if s["status"] == "failed"]
    assert len(failed) == 4 and all("below the number of classes" in s["error"] for s in failed)
    # The report's numbers are the summaries' numbers.
    with open(sweep / "report.csv") as f:
        rows = {(r["method"], int(r["num_labels"])): r for r in csv.DictReader(f)}
    assert set(rows) == {(m, n) for m in ("supervised", "fixmatch") for n in (8, 16)}
    for (method, n), row in rows.items():
        accs = [s["final"]["test/accuracy"] for s in summaries
                if s["status"] == "completed" and s["method"] == method and s["num_labels"] == n]
        assert len(accs) == 2 and int(row["runs"]) == 2
        assert float(row["accuracy_mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(row["accuracy_std"]) == pytest.approx(statistics.stdev(accs))
    assert (sweep / "label_efficiency.png").stat().st_size > 1000
    md = (sweep / "report.md").read_text()
    assert "final test accuracy" in md
    assert "missing" in result.stdout and "failed" in result.stdout
    # The report names each failed job with its error, and the sweep's jobs without a completed run.
    failed_lines = [line for line in md.splitlines() if line.startswith("- failed: ")]
    assert len(failed_lines) == 4 and all("below the number of classes" in line for line in failed_lines)
    assert sorted(line for line in md.splitlines() if line.startswith("- missing: ")) == sorted(
        f"- missing: method={m} dataset.num_labels=2 seed={seed}" for m in ("supervised", "fixmatch") for seed in (0, 1))


def test_ssl_report_command(tmp_path, capsys):
    write_summary(tmp_path, "supervised", 20, 0, 0.5)
    report_main([str(tmp_path), "--no-files"])
    assert "supervised" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "nope")])
    assert e.value.code == 2


def test_runs_with_other_settings_are_variants_not_seeds(tmp_path):
    # Same method, labels and seed, different learning rate (as in a search): two rows, not one mean.
    for lr, acc in (("0.01", 0.6), ("0.1", 0.8)):
        for seed in (0, 1):
            write_summary(tmp_path, f"fixmatch_lr{lr}", 20, seed, acc + seed / 100)
            d = tmp_path / f"fixmatch_lr{lr}_20_{seed}"
            summary = json.loads((d / "summary.json").read_text())
            (d / "summary.json").write_text(json.dumps({**summary, "method": "fixmatch"}))
            (d / ".hydra" / "overrides.yaml").write_text(f"- method=fixmatch\n- optim.lr={lr}\n- seed={seed}\n")
    report = make_report(tmp_path)
    assert sorted(report.cells) == [("fixmatch [optim.lr=0.01]", 20), ("fixmatch [optim.lr=0.1]", 20)]
    assert report.cells[("fixmatch [optim.lr=0.1]", 20)].mean == pytest.approx(0.805)
    assert report.missing == []
    assert {(r["method"], r["variant"]) for r in report.rows()} == {("fixmatch", "optim.lr=0.01"),
                                                                   ("fixmatch", "optim.lr=0.1")}


def test_stage_summaries_of_a_multi_stage_run_are_not_separate_jobs(tmp_path):
    write_summary(tmp_path, "selfsup", 20, 0, 0.7)
    stage = tmp_path / "selfsup_20_0" / "pretrain"
    stage.mkdir()
    (stage / "summary.json").write_text(json.dumps({"status": "completed", "method": "simclr", "num_labels": 20,
                                                    "seed": 0, "final": {"test/accuracy": 0.1}}))
    report = make_report(tmp_path)
    assert list(report.cells) == [("selfsup", 20)] and report.pending == []


def test_labels_needed_lines_say_what_the_numbers_mean(tmp_path):
    for method, n, acc in (("supervised", 20, 0.5), ("supervised", 200, 0.8), ("fixmatch", 20, 0.85),
                           ("fixmatch", 200, 0.9), ("pseudolabel", 200, 0.82)):
        write_summary(tmp_path, method, n, 0, acc)
    from ssl_cli.apps.report import labels_needed_lines

    lines = labels_needed_lines(make_report(tmp_path))
    # fixmatch beats supervised@200 already at 20 labels: an upper bound; pseudolabel has no run below 200.
    assert lines == ["labels needed: fixmatch reaches supervised's 80.0 % at 200 labels with at most 20 labels "
                     "(the fewest in this sweep; at least 90 % less labeling)"]


def test_methods_are_ranked_within_each_label_count(tmp_path):
    # Any list of methods: ranks by mean test accuracy per label count, 1 = best, ties share a rank.
    for seed in (0, 1):
        for method, acc20, acc40 in (("supervised", 0.5, 0.7), ("fixmatch", 0.8, 0.9), ("flexmatch", 0.85, 0.9),
                                     ("uda", 0.6, 0.95)):
            write_summary(tmp_path, method, 20, seed, acc20, wall_time_s=10.0 + seed)
            write_summary(tmp_path, method, 40, seed, acc40, wall_time_s=700.0 + 20 * seed)
    report = make_report(tmp_path)
    ranks = {(r["method"], r["num_labels"]): r["rank"] for r in report.rows()}
    assert [ranks[(m, 20)] for m in ("flexmatch", "fixmatch", "uda", "supervised")] == [1, 2, 3, 4]
    assert [ranks[(m, 40)] for m in ("uda", "fixmatch", "flexmatch", "supervised")] == [1, 2, 2, 4]
    report_main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "| labels | rank | method |" in md
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["method"]: row["rank"] for row in rows if row["num_labels"] == "20"}["uda"] == "3"
    # the mean wall time per run of each cell: 10 and 11 s at 20 labels, 700 and 720 s at 40
    assert {float(row["wall_time_s"]) for row in rows} == {10.5, 710.0}
    assert "| wall time per run |" in md and "| 10 s |" in md and "| 11.8 min |" in md
def test_accuracy_curves_show_mean_and_spread_over_seeds(tmp_path):
    """accuracy_curves.png: one line per method and label count from each job's metrics.jsonl."""
    for job, (method, seed) in enumerate([("supervised", 0), ("supervised", 1), ("fixmatch", 0)]):
        d = tmp_path / f"{job}_{method}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": "completed", "method": method, "num_labels": 40,
                                                    "seed": seed, "final": {"test/accuracy": 0.5 + 0.1 * seed}}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "test/accuracy": 0.1 * s + 0.05 * seed})
                                                 + "\n" for s in (1, 2, 3)))
    report = make_report(tmp_path)
    assert report.cells[("supervised", 40)].curves[1] == [(1, pytest.approx(0.15)), (2, pytest.approx(0.25)),
                                                         (3, pytest.approx(0.35))]
    assert plot_accuracy_curves(report, tmp_path / "accuracy_curves.png").read_bytes()[:4] == b"\x89PNG"

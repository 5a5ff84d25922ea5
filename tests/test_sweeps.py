"""Sweeps end to end: the label-budget preset, Hydra's launchers and the Optuna search, on tiny runs.

The report's numbers against the job summaries with a failing job are in test_report.py; here the
sweep preset, shared labeled images, partial sweeps, and the optional plugins (skipped when the
`sweeps` extra is not installed).
"""

import csv
import importlib.util
import json
import shutil
import statistics
from collections import defaultdict

import pytest
import yaml

from conftest import ssl_train
from ssl_cli.apps.train import objective
from ssl_cli.engine.config import compose as engine_compose
from ssl_cli.apps.report import make_report

# A few steps per job: these tests check the plumbing, not the accuracy.
TINY = ["debug=smoke", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=4"]


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


needs_joblib = pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"),
                                  reason='hydra-joblib-launcher is not installed (pip install "ssl-cli[sweeps]")')
needs_submitit = pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"),
                                    reason='hydra-submitit-launcher is not installed (pip install "ssl-cli[sweeps]")')
needs_optuna = pytest.mark.skipif(not has_plugin("hydra_optuna_sweeper"),
                                  reason='hydra-optuna-sweeper is not installed (pip install "ssl-cli[sweeps]")')


def run_sweep(args, cwd, **kw):
    result = ssl_train(["-m", *TINY, *args, "hydra.sweep.dir=sweep"], cwd, timeout=600, **kw)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def summaries(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def check_report_matches(sweep, jobs):
    """report.csv holds, per method x label count, the mean and sample std of the jobs' final test accuracy."""
    accs = defaultdict(list)
    for s in jobs.values():
        if s["status"] == "completed":
            accs[(s["method"], s["num_labels"])].append(s["final"]["test/accuracy"])
    with open(sweep / "report.csv") as f:
        rows = {(r["method"], int(r["num_labels"])): r for r in csv.DictReader(f)}
    assert set(rows) == set(accs)
    for key, values in accs.items():
        row = rows[key]
        assert int(row["runs"]) == len(values) and row["accuracy_kind"] == "final"
        assert float(row["accuracy_mean"]) == pytest.approx(statistics.fmean(values))
        expected_std = statistics.stdev(values) if len(values) > 1 else 0.0
        assert float(row["accuracy_std"]) == pytest.approx(expected_std)


@pytest.mark.slow
def test_label_budget_sweep_shares_labeled_images_and_reports_partial_sweeps(tmp_path):
    run_sweep(["sweep=label_budget", "method=supervised,fixmatch", "dataset.num_labels=8,16", "seed=0,1"], tmp_path)
    sweep = tmp_path / "sweep"
    jobs = summaries(sweep)
    assert len(jobs) == 8 and all(s["status"] == "completed" for s in jobs.values())
    check_report_matches(sweep, jobs)
    assert "final test accuracy" in (sweep / "report.md").read_text()
    assert (sweep / "label_efficiency.png").stat().st_size > 1000

    # Jobs with the same label count and seed train on the same labeled (and validation) images.
    splits = defaultdict(dict)
    for name, s in jobs.items():
        split = json.loads((sweep / name / "labeled_indices.json").read_text())
        splits[(s["num_labels"], s["seed"])][s["method"]] = (split["labeled"], split["validation"])
    for (n, seed), by_method in splits.items():
        assert by_method["supervised"] == by_method["fixmatch"], (n, seed)
        assert len(by_method["supervised"][0]) == n
    assert splits[(16, 0)]["supervised"] != splits[(16, 1)]["supervised"]

    # A partial sweep: one job never started, one still running (no summary yet). The report is
    # still made from the rest and names exactly those two, from the sweep's own job list.
    def job(method, n, seed):
        return next(name for name, s in jobs.items() if (s["method"], s["num_labels"], s["seed"]) == (method, n, seed))

    gone, running = job("fixmatch", 16, 1), job("supervised", 8, 0)
    shutil.rmtree(sweep / gone)
    (sweep / running / "summary.json").unlink()
    report = make_report(sweep)
    assert sorted(report.missing) == ["method=fixmatch dataset.num_labels=16 seed=1",
                                      "method=supervised dataset.num_labels=8 seed=0"]
    assert [p.name for p in report.pending] == [running]
    assert report.cells[("fixmatch", 16)].seeds == [0] and len(report.cells[("supervised", 8)].accuracies) == 1


def test_objective_is_the_validation_accuracy_never_the_test_accuracy():
    assert objective({"final": {"val/accuracy": 0.5, "test/accuracy": 0.9}}) == 0.5
    assert objective({"final": {"val/accuracy": None, "test/accuracy": 0.9}}) is None
    assert objective({"status": "failed", "final": None}) is None


@pytest.mark.slow
@needs_joblib
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    run_sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.num_threads=1",
               "method=supervised,fixmatch"], tmp_path)
    sweep = tmp_path / "sweep"
    jobs = summaries(sweep)
    assert sorted(s["method"] for s in jobs.values()) == ["fixmatch", "supervised"]
    assert all(s["status"] == "completed" for s in jobs.values())
    check_report_matches(sweep, jobs)


@pytest.mark.slow
@needs_submitit
def test_submitit_local_launcher_runs_a_sweep_end_to_end(tmp_path):
    run_sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "trainer.num_threads=1",
               "method=supervised,fixmatch"], tmp_path)
    sweep = tmp_path / "sweep"
    jobs = summaries(sweep)
    assert sorted(s["method"] for s in jobs.values()) == ["fixmatch", "supervised"]
    assert all(s["status"] == "completed" for s in jobs.values())
    assert any((sweep / ".submitit").rglob("*_log.out"))  # the jobs ran through submitit
    check_report_matches(sweep, jobs)


@needs_submitit
def test_slurm_preset_composes(tmp_path):
    cfg = engine_compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    from hydra.plugins.launcher import Launcher
    from hydra.utils import get_class

    launcher = cfg.hydra.launcher
    # The preset names a launcher that exists, and the user's override reaches it.
    assert issubclass(get_class(launcher._target_), Launcher)
    assert launcher.partition == "gpu"
    # The preset extends the plugin's schema: its keys are the plugin's, so a misspelt one is refused.
    with pytest.raises(Exception, match="gpus_per_nod"):
        engine_compose(["hydra/launcher=slurm", "hydra.launcher.gpus_per_nod=2"], return_hydra_config=True)


@pytest.mark.slow
@needs_optuna
def test_optuna_search_tunes_on_validation_accuracy(tmp_path):
    run_sweep(["hparams_search=fixmatch_optuna", "hydra.sweeper.n_trials=2"], tmp_path)
    sweep = tmp_path / "sweep"
    jobs = list(summaries(sweep).values())
    assert len(jobs) == 2 and all(s["status"] == "completed" and s["method"] == "fixmatch" for s in jobs)
    assert all(s["num_validation"] > 0 for s in jobs)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = results["best_value"]
    # The objective is each trial's validation accuracy: the best value is the highest of them, and
    # it is the validation accuracy of the trial that ran with the best parameters.
    assert best == pytest.approx(max(s["final"]["val/accuracy"] for s in jobs))
    best_params = {f"{k}={v}" for k, v in results["best_params"].items()}
    (best_job,) = [s for s in jobs
                   if best_params <= set(yaml.safe_load(open(s["run_dir"] + "/.hydra/overrides.yaml")))]
    assert best_job["final"]["val/accuracy"] == pytest.approx(best)
    # Trials with different parameters are separate rows of the report, never averaged as seeds.
    report = make_report(sweep)
    assert len(report.cells) == 2 and all(c.variant for c in report.cells.values())


@pytest.mark.slow
@needs_optuna
def test_optuna_search_without_validation_split_stops_before_training(tmp_path):
    result = ssl_train(["-m", *TINY, "hparams_search=fixmatch_optuna", "dataset.num_validation=0",
                        "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("ssl-train: error: the hyperparameter search tunes on "
                                                             "the validation split")
    assert not list((tmp_path / "sweep").glob("*/summary.json"))

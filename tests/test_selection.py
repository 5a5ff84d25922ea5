"""Label selection: the selectors on hand-checkable points, that they never read labels, the selected
split of a run (labeled_indices.json), `ssl-select`, and the one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, assert_one_line_error, compose, run_cli, write_image_folder
from ssl_cli.apps import select as select_app
from ssl_cli.core.errors import UserError
from ssl_cli.data import load_dataset
from ssl_cli.data.base import SELECTION_STRATEGIES
from ssl_cli.data.split import make_split, selection_pool
from ssl_cli.engine.config import check_config
from ssl_cli.engine.selection import selected_split
from ssl_cli.selection import l2_normalize, select, strategy_names
from ssl_cli.selection.probcover import purity_delta

FEATURE_STRATEGIES = ["uniform", "typiclust", "probcover", "kcenter", "margin", "entropy"]
TINY = ["debug=smoke", "dataset.num_train=64", "dataset.num_test=16", "dataset.image_size=8", "dataset.num_validation=0",
        "dataset.num_labels=8", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
        "trainer.batch_size=8", "trainer.num_threads=1"]


def blobs(seed=0, per_blob=60, spread=0.5):
    """Three well-separated 3-d blobs around (20, 0, 0), (0, 20, 0), (0, 0, 20): apart in distance and in
    direction (ProbCover compares L2-normalised features)."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(3)
    points = np.concatenate([c + spread * rng.normal(size=(per_blob, 3)) for c in centres]).astype(np.float32)
    return points, centres, np.repeat(np.arange(3), per_blob)


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    """A supervised run of two steps on tiny synthetic data: a model to take features and predictions from."""
    root = tmp_path_factory.mktemp("features")
    code, _, err = run_cli([*TINY, "method=supervised", "hydra.run.dir=run"], root)
    assert code == 0, err[-2000:]
    return root / "run"


# --------------------------------------------------------------------------- the selectors, by hand


def test_strategy_choices_are_the_registered_selectors():
    assert sorted(SELECTION_STRATEGIES) == sorted(["random", *strategy_names()])


def test_typiclust_picks_one_central_point_per_blob():
    points, centres, blob = blobs()
    chosen = select("typiclust", points, 3, seed=0)
    assert sorted(blob[chosen.indices]) == [0, 1, 2]  # one per blob
    for i in chosen.indices:  # central: nearer its centre than 80 % of its blob
        own = blob == blob[i]
        distances = np.linalg.norm(points[own] - centres[blob[i]], axis=1)
        assert np.linalg.norm(points[i] - centres[blob[i]]) <= np.quantile(distances, 0.2)
    assert chosen.info["clusters"] == 3


def test_typiclust_goes_to_clusters_without_labels_first():
    points, _, blob = blobs()
    already = np.flatnonzero(blob == 0)[:2]  # blob 0 has labels already
    chosen = select("typiclust", points, 2, already=already, seed=0)
    assert sorted(blob[chosen.indices]) == [1, 2]


def brute_force_coverage(points, chosen, delta):
    x = l2_normalize(points).astype(np.float64)
    covered = [any(np.linalg.norm(x[j] - x[i]) < delta for i in chosen) for j in range(len(x))]
    return sum(covered) / len(x)


@pytest.mark.parametrize("seed", [0, 1])
def test_probcover_coverage_equals_a_brute_force_count(seed):
    points = np.random.default_rng(seed).normal(size=(120, 3)).astype(np.float32)
    chosen = select("probcover", points, 6, seed=seed, num_classes=4)
    delta = chosen.info["delta"]
    assert 0 < delta < 2
    assert chosen.info["coverage"] == pytest.approx(brute_force_coverage(points, chosen.indices, delta), abs=1e-5)
    # the first pick is a point whose ball holds the most points (greedy maximum coverage)
    x = l2_normalize(points)
    ball_sizes = (np.linalg.norm(x[:, None] - x[None], axis=2) < delta).sum(axis=1)
    assert ball_sizes[chosen.indices[0]] == ball_sizes.max()


def test_probcover_delta_is_the_largest_with_95_percent_pure_balls():
    points, _, blob = blobs(spread=3.0)
    pseudo = blob  # any pseudo-labels: the heuristic never sees true labels, only these
    delta = purity_delta(points, pseudo)
    x = l2_normalize(points)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)

    def purity(r):
        return np.mean([(pseudo[d[i] < r] == pseudo[i]).all() for i in range(len(x))])

    assert purity(delta) >= 0.95
    assert purity(delta * 1.01 + 1e-6) < 0.95


def test_probcover_counts_labeled_points_as_covered():
    points, _, blob = blobs()
    already = np.flatnonzero(blob == 0)[:1]
    chosen = select("probcover", points, 2, already=already, seed=0, num_classes=3)
    assert 0 not in blob[chosen.indices]


def test_kcenter_picks_the_farthest_point():
    points = np.array([[0, 0], [1, 0], [10, 0], [4, 0]], dtype=np.float32)
    chosen = select("kcenter", points, 2, already=[0])
    assert chosen.indices.tolist() == [2, 3]  # 10 is farthest from 0; then 4 (3 from 1, 4 from 0 ... 6 from 10)


def test_margin_and_entropy_pick_the_least_certain():
    p = np.array([[0.9, 0.1, 0.0], [0.5, 0.45, 0.05], [0.34, 0.33, 0.33], [0.6, 0.2, 0.2]])
    features = np.zeros((4, 2), dtype=np.float32)
    assert select("margin", features, 2, probabilities=p).indices.tolist() == [2, 1]
    assert select("entropy", features, 2, probabilities=p).indices.tolist() == [2, 3]
    assert select("entropy", features, 1, already=[2], probabilities=p).indices.tolist() == [3]


@pytest.mark.parametrize("strategy", strategy_names())
def test_selectors_never_pick_labeled_points_twice(strategy):
    points, _, _ = blobs(per_blob=20)
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=len(points))
    chosen = select(strategy, points, 10, already=[0, 1, 2], seed=0, probabilities=p, num_classes=3)
    assert len(set(chosen.indices.tolist())) == 10 and not {0, 1, 2} & set(chosen.indices.tolist())


def test_select_refuses_bad_input():
    points, _, _ = blobs(per_blob=4)
    with pytest.raises(UserError, match="unknown selection strategy"):
        select("nope", points, 2)
    with pytest.raises(UserError, match=r"more than the 10 images left to label; allowed: 1..10"):
        select("typiclust", points, 11, already=[0, 1])
    with pytest.raises(UserError, match="needs a trained model's predictions"):
        select("margin", points, 2)


# --------------------------------------------------------------------------- in a run


def tiny_run(strategy, feature_run, *extra):
    return check_config(compose([*TINY, f"dataset.labeled_selection={strategy}",
                                 f"dataset.selection_features={feature_run}", *extra]))


@pytest.mark.parametrize("strategy", FEATURE_STRATEGIES)
def test_permuting_the_labels_leaves_the_selection_unchanged(strategy, feature_run):
    run = tiny_run(strategy, feature_run)
    data = load_dataset(run.names["dataset"], run.dataset)
    # the same images with their labels permuted (and every class kept, so the data set stays valid)
    permuted = replace(data, train_labels=data.train_labels[torch.randperm(len(data.train_labels),
                                                                           generator=torch.Generator().manual_seed(1))])
    assert not torch.equal(permuted.train_labels, data.train_labels)
    first, second = selected_split(run, data), selected_split(run, permuted)
    assert first.labeled.tolist() == second.labeled.tolist()
    assert len(first.labeled) == 8


def test_a_selected_run_records_the_selection_and_reuses_it(feature_run, tmp_path):
    code, _, err = run_cli([*TINY, "dataset.labeled_selection=probcover", f"dataset.selection_features={feature_run}",
                            "hydra.run.dir=sel"], tmp_path)
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "sel" / "labeled_indices.json").read_text())
    record = saved["selection"]
    assert record["strategy"] == "probcover" and record["feature_run"].startswith(str(feature_run))
    assert 0 < record["delta"] < 2 and 0 < record["coverage"] <= 1
    assert sorted(record["picked_in_order"]) == saved["labeled"] and len(saved["labeled"]) == 8
    # every method of a sweep gets the same images: the same split again, and reused through labeled_indices
    code, _, err = run_cli([*TINY, "method=supervised", "dataset.labeled_indices=sel", "hydra.run.dir=again"], tmp_path)
    assert code == 0, err[-2000:]
    assert json.loads((tmp_path / "again" / "labeled_indices.json").read_text())["labeled"] == saved["labeled"]


def test_uniform_selection_needs_no_feature_run_and_ignores_class_balance(tmp_path):
    # The label-free baseline: chance alone, recorded as such; unlike `random` it does not balance classes.
    code, _, err = run_cli([*TINY, "dataset.labeled_selection=uniform", "hydra.run.dir=u"], tmp_path)
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "u" / "labeled_indices.json").read_text())
    assert saved["selection"]["strategy"] == "uniform" and saved["selection"]["feature_run"] is None
    assert len(saved["labeled"]) == 8
    run = check_config(compose([*TINY, "dataset.labeled_selection=uniform"]))
    data = load_dataset(run.names["dataset"], run.dataset)
    per_seed = []
    for seed in range(6):
        split = selected_split(replace(run, seed=seed), data)
        counts = np.bincount(data.train_labels.numpy()[split.labeled], minlength=data.num_classes)
        per_seed.append(counts.tolist())
        assert sum(counts) == 8
    assert any(c != [2] * data.num_classes for c in per_seed), per_seed  # random (balanced) gives 2 each always


def test_a_given_probcover_delta_is_used_and_recorded(feature_run, tmp_path):
    code, _, err = run_cli([*TINY, "dataset.labeled_selection=probcover", f"dataset.selection_features={feature_run}",
                            "dataset.probcover_delta=0.25", "hydra.run.dir=d"], tmp_path)
    assert code == 0, err[-2000:]
    record = json.loads((tmp_path / "d" / "labeled_indices.json").read_text())["selection"]
    assert record["delta"] == 0.25 and record["delta_from"] == "given"
    points, _, _ = blobs()
    heuristic = select("probcover", points, 3, seed=0)
    assert heuristic.info["delta_from"] == "purity heuristic"
    given = select("probcover", points, 3, seed=0, delta=1e-6)  # tiny balls cover only their centres
    assert given.info["delta"] == 1e-6 and given.info["coverage"] == pytest.approx(3 / len(points), abs=1e-6)


def test_a_given_labeled_set_keeps_the_seeds_validation_split():
    labels = np.repeat(np.arange(4), 10)
    plain = make_split(labels, 4, seed=3, num_labels=8, num_validation=8)
    pool = selection_pool(labels, 4, seed=3, num_validation=8)
    assert not set(pool.tolist()) & set(plain.validation.tolist()) and len(pool) == 32
    given = make_split(labels, 4, seed=3, num_validation=8, labeled=pool[:3])
    assert given.validation.tolist() == plain.validation.tolist()
    assert given.labeled.tolist() == sorted(pool[:3].tolist())
    with pytest.raises(UserError, match="outside the validation split"):
        make_split(labels, 4, seed=3, num_validation=8, labeled=plain.validation[:2])


@pytest.mark.parametrize("overrides, fragments", [
    (["dataset.labeled_selection=nope"], ["dataset.labeled_selection", "typiclust"]),
    (["dataset.labeled_selection=typiclust"], ["dataset.selection_features=<run dir>"]),
    (["dataset.labeled_selection=typiclust", "dataset.selection_features=/no/such/run"], ["/no/such/run"]),
    (["dataset.labeled_selection=kcenter", "dataset.selection_features=.", "dataset.labeled_indices=x.json"],
     ["set only one"]),
    (["dataset.probcover_delta=0"], ["dataset.probcover_delta", "0"]),
    (["dataset.probcover_delta=3"], ["dataset.probcover_delta", "2"]),
])
def test_bad_selection_options_are_one_line_errors(overrides, fragments, tmp_path):
    code, _, err = run_cli([*TINY, *overrides, "hydra.run.dir=r"], tmp_path)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()


def test_too_many_labels_for_the_pool_is_a_one_line_error(feature_run, tmp_path):
    code, _, err = run_cli([*TINY, "dataset.labeled_selection=typiclust", f"dataset.selection_features={feature_run}",
                            "dataset.num_labels=65", "hydra.run.dir=r"], tmp_path)
    assert_one_line_error(code, err, "dataset.num_labels=65", "allowed: 4..64")


def test_a_feature_run_of_another_image_size_is_refused(feature_run, tmp_path):
    code, _, err = run_cli([*TINY, "dataset.image_size=10", "dataset.labeled_selection=typiclust",
                            f"dataset.selection_features={feature_run}", "hydra.run.dir=r"], tmp_path)
    assert_one_line_error(code, err, "dataset.selection_features", "takes 3x8x8 images")


# --------------------------------------------------------------------------- ssl-select


def ssl_select(args, capsys):
    try:
        select_app.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_ssl_select_on_the_runs_own_pool(feature_run, tmp_path, capsys):
    code, out = ssl_select([feature_run, "--budget", 5, "--strategy", "typiclust", "--out", tmp_path / "next"], capsys)
    assert code == 0, out.err
    with open(tmp_path / "next" / "to_label.csv") as f:
        rows = list(csv.DictReader(f))
    labeled = json.loads((feature_run / "labeled_indices.json").read_text())["labeled"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert not {int(r["index"]) for r in rows} & set(labeled)  # never one that is labeled already
    assert all(0 <= float(r["confidence"]) <= 1 and r["cluster"] != "" for r in rows)
    assert (tmp_path / "next" / "to_label.png").stat().st_size > 0
    assert json.loads((tmp_path / "next" / "selection.json").read_text())["already_labeled"] == len(labeled)
    code, out = ssl_select([feature_run, "--budget", 5, "--strategy", "probcover", "--delta", 0.3,
                            "--out", tmp_path / "pc"], capsys)
    assert code == 0, out.err
    record = json.loads((tmp_path / "pc" / "selection.json").read_text())
    assert record["delta"] == 0.3 and record["delta_from"] == "given"


def test_ssl_select_on_a_folder_and_a_csv(feature_run, tmp_path, capsys):
    write_image_folder(tmp_path / "pool", per_class=4, size=8, test=False)
    code, out = ssl_select([feature_run, "--budget", 3, "--strategy", "probcover", "--pool", tmp_path / "pool",
                            "--out", tmp_path / "a"], capsys)
    assert code == 0, out.err
    with open(tmp_path / "a" / "to_label.csv") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert len(paths) == 3 and all(Path(p).is_file() for p in paths)
    images = sorted((tmp_path / "pool").rglob("*.png"))
    (tmp_path / "pool.csv").write_text("path\n" + "".join(f"{p.relative_to(tmp_path)}\n" for p in images))
    code, out = ssl_select([feature_run, "--budget", 2, "--strategy", "entropy", "--pool", tmp_path / "pool.csv",
                            "--out", tmp_path / "b"], capsys)
    assert code == 0, out.err


@pytest.mark.parametrize("args, fragment", [
    (["--budget", 3, "--strategy", "nope"], "--strategy nope: unknown"),
    (["--budget", 10 ** 6], "more than the"),
    (["--budget", 0], "at least 1"),
    (["--budget", 3, "--pool", "/no/such/pool"], "/no/such/pool"),
    (["--budget", "x"], "invalid int value"),
    (["--budget", 3, "--strategy", "probcover", "--delta", 2.5], "allowed: 0 < delta <= 2"),
])
def test_ssl_select_errors_are_one_line(args, fragment, feature_run, capsys):
    code, out = ssl_select([feature_run, *args], capsys)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ssl-select: error: ") and fragment in lines[0], out.err


def test_ssl_select_on_a_missing_run(capsys, tmp_path):
    code, out = ssl_select([tmp_path / "nothing", "--budget", 3], capsys)
    assert code == 2 and "nothing" in out.err and len(out.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_cifar10_selection_script_on_tiny_data(tmp_path):
    """scripts/selection_cifar10.sh end to end on tiny synthetic data: pretraining, the sweep, the table."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SSL_CLI_CACHE": str(tmp_path / ".cache"), "PRETRAIN_STEPS": "2", "STEPS": "2", "LABELS": "4",
           "SEEDS": "0", "JOBS": "1",
           "DATA": "debug=smoke dataset.num_train=64 dataset.num_test=16 dataset.image_size=8 dataset.num_validation=0"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "selection_cifar10.sh"), "unused", "out"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| 4 |")]
    assert [line.split("|")[2].strip() for line in table] == ["random", "uniform", "typiclust", "probcover"]
    assert (tmp_path / "out" / "sweep" / "report.md").is_file()


def test_a_resumed_selected_run_keeps_its_labeled_images(feature_run, tmp_path):
    args = [*TINY, "dataset.labeled_selection=typiclust", f"dataset.selection_features={feature_run}"]
    code, _, err = run_cli([*args, "trainer.stop_at_step=1", "hydra.run.dir=r"], tmp_path)
    assert code == 0, err[-2000:]
    split_file = tmp_path / "r" / "labeled_indices.json"
    before = json.loads(split_file.read_text())
    code, _, err = run_cli(["resume=r"], tmp_path)
    assert code == 0, err[-2000:]
    assert json.loads(split_file.read_text()) == before
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "completed"


def test_ssl_select_writes_beside_the_checkpoint_by_default(feature_run, capsys):
    code, out = ssl_select([feature_run / "last.pt", "--budget", 2, "--strategy", "kcenter"], capsys)
    assert code == 0, out.err
    assert (feature_run / "selection_kcenter_2" / "to_label.csv").is_file()

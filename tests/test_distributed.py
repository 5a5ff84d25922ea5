"""Multi-process training under torchrun on the CPU (gloo): same batches, same model, one set of outputs.

The multi-process tests start `python -m torch.distributed.run` with 2 workers; they are slow (two
Python processes each), so they are marked slow and run a few steps on digits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import compose, trainer_for
from ssl_cli.core import distributed as cd
from ssl_cli.core.errors import UserError
from ssl_cli.engine.checkpoint import load_checkpoint
from ssl_cli.engine.distributed import uses_sync_batchnorm
from ssl_cli.losses.pseudo_labels import (ClassWiseThreshold, DistributionAlignment, SelfAdaptiveThreshold,
                                         TruncatedGaussianWeight)
from ssl_cli.losses.selfsup import nt_xent

# digits, the cnn, a fixed batch: 1 process with batch 64 and 2 ranks with global batch 64 see the same images.
BASE = ["dataset=digits", "trainer.device=cpu", "trainer.num_threads=1", "trainer.progress_bar=false",
        "trainer.deterministic=true", "trainer.batch_size=64", "trainer.log_every=5",
        # float32: bf16 autocast (auto on CPUs with native bf16) rounds a 32-image half batch's sums
        # differently from the 64-image batch's, about 1e-3; these tests compare the parallelism
        "trainer.precision=fp32"]
# Without BatchNorm and without random augmentation the two runs compute the same thing.
NO_BN = BASE + ["backbone.batch_norm=false", "method=supervised", "augmentation=none", "trainer.max_steps=20",
                "trainer.eval_every=10", "trainer.checkpoint_every=10"]


def torchrun(args, cwd: Path, nproc: int = 2, extra=(), timeout: float = 600, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
           "-m", "ssl_cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ssl_train(args, cwd: Path, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "ssl_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def ok(result) -> None:
    assert result.returncode == 0, (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]


# --------------------------------------------------------------------------- one process: fast checks


def test_helpers_are_the_identity_in_one_process():
    x = torch.randn(4, 3)
    assert cd.world_size() == 1 and cd.rank() == 0 and cd.is_main() and not cd.is_distributed()
    assert cd.all_gather(x) is x and cd.all_gather_with_grad(x) is x and cd.all_reduce_sum(x) is x


def test_ranks_take_slices_of_the_global_batch(tmp_path):
    """Rank r of N takes slice r of the step's indices: together exactly the one-process batch."""
    trainer = trainer_for(["debug=smoke", "method=fixmatch", "method.unlabeled_ratio=2", "trainer.batch_size=8"],
                          tmp_path)
    whole = trainer.batches
    cls = type(whole)
    shards = [cls(trainer.data, whole.labeled_views, whole.unlabeled_views, 8, 16, whole.augment, whole.normalize,
                  whole.seed, whole.channels_last, shard=(r, 2)) for r in range(2)]
    for step in (0, 3, 11):
        one = whole(step)
        parts = [s(step) for s in shards]
        assert torch.equal(torch.cat([p.labeled_index for p in parts]), one.labeled_index)
        assert torch.equal(torch.cat([p.unlabeled_index for p in parts]), one.unlabeled_index)
        assert len(parts[0].labeled_index) == 4 and len(parts[1].unlabeled_index) == 8
        # Rank 0 augments with the one-process seed (seed, step); other ranks with (seed, step, rank).
        assert shards[0].augment_seed(step) == whole.augment_seed(step) != shards[1].augment_seed(step)


def test_a_global_batch_must_split_evenly(tmp_path):
    trainer = trainer_for(["debug=smoke", "method=supervised", "trainer.batch_size=8"], tmp_path)
    b = trainer.batches
    with pytest.raises(UserError, match=r"trainer.batch_size \(9\) must be divisible by the number of ranks \(2\)"):
        type(b)(trainer.data, b.labeled_views, b.unlabeled_views, 9, 0, b.augment, b.normalize, 0, False,
                shard=(0, 2))


def test_sync_batchnorm_is_off_on_the_cpu_and_true_is_refused_there():
    assert uses_sync_batchnorm("auto", torch.device("cpu")) is False
    assert uses_sync_batchnorm(False, torch.device("cpu")) is False
    with pytest.raises(UserError, match="sync_batchnorm=true needs CUDA"):
        uses_sync_batchnorm(True, torch.device("cpu"))


def test_new_trainer_options_are_declared():
    t = compose([]).trainer
    assert t.devices == 1 and t.sync_batchnorm == "auto" and t.dist_timeout == 600.0


# --------------------------------------------------------------------------- whole-batch statistics (2 processes)


def adaptive_states(probs, indices) -> dict:
    """FlexMatch's, FreeMatch's and SoftMatch's state after one update with these images' predictions."""
    flex = ClassWiseThreshold(num_unlabeled=8, num_classes=3, threshold=0.4)
    flex.update(probs, indices)
    free = SelfAdaptiveThreshold(3, momentum=0.5)
    free.update(probs)
    soft = TruncatedGaussianWeight(3, momentum=0.5)
    soft.update(probs)
    return {"selected_label": flex.selected_label, "learning_effect": flex.learning_effect,
            "global_threshold": free.global_threshold, "class_probs": free.class_probs,
            "gauss_mean": soft.mean, "gauss_variance": soft.variance}


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)  # the global batch: 8 image pairs, 4 on each rank
    probs = torch.softmax(torch.randn(8, 3), dim=1)
    mine = slice(4 * rank, 4 * rank + 4)
    a, b = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
    loss = nt_xent(a, b, 0.5)
    (loss / world).backward()  # DDP's averaging of the ranks' gradients
    grads = torch.cat([a.grad, b.grad])
    torch.distributed.all_reduce(loss)
    align = DistributionAlignment([1 / 3] * 3, momentum=0.5)
    align.update(probs[mine])
    torch.save({"loss": loss / world, "grads": grads, "model_probs": align.model_probs,
                **adaptive_states(probs[mine], torch.arange(8)[mine])}, f"{out_dir}/{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_simclr_negatives_and_distribution_alignment_use_the_whole_global_batch(tmp_path):
    """2 ranks of 4 pairs each: the same NT-Xent loss and gradients as one process with all 8 pairs (the
    negatives come from every rank), and distribution alignment's running mean over all 8 predictions; the
    adaptive thresholds' state (FlexMatch, FreeMatch, SoftMatch) equal on both ranks and to one process's."""
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    probs = torch.softmax(torch.randn(8, 3), dim=1)
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    align = DistributionAlignment([1 / 3] * 3, momentum=0.5)
    align.update(probs)
    whole = adaptive_states(probs, torch.arange(8))
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for r, got in enumerate(ranks):
        assert torch.allclose(got["loss"], loss, atol=1e-6)
        mine = slice(4 * r, 4 * r + 4)
        assert torch.allclose(got["grads"], torch.cat([z1.grad[mine], z2.grad[mine]]), atol=1e-6)
        assert torch.allclose(got["model_probs"], align.model_probs, atol=1e-6)
        for key, value in whole.items():
            assert torch.allclose(got[key].float(), value.float(), atol=1e-6), key
    # the images are confident enough that some get claimed: FlexMatch's state moved
    assert (whole["selected_label"] >= 0).sum() >= 2 and (whole["selected_label"][:4] >= 0).any()


# --------------------------------------------------------------------------- torchrun, 2 ranks (must-show 1-4)


@pytest.fixture(scope="module")
def no_bn_runs(tmp_path_factory):
    """The cnn without BatchNorm: 1 process with batch 64, and 2 ranks with global batch 64."""
    root = tmp_path_factory.mktemp("no_bn")
    ok(ssl_train(NO_BN + [f"hydra.run.dir={root / 'one'}"], root))
    ok(torchrun(NO_BN + [f"hydra.run.dir={root / 'two'}"], root))
    return root / "one", root / "two"


@pytest.mark.slow
def test_two_ranks_reach_the_parameters_of_one_process(no_bn_runs):
    one, two = no_bn_runs
    diff = max_difference(weights(one), weights(two))
    print(f"largest parameter difference, 2 ranks vs 1 process: {diff:.3g}")
    assert diff < 1e-4, diff
    assert summary(one)["final"]["test/accuracy"] == summary(two)["final"]["test/accuracy"]
    assert summary(two)["status"] == "completed" and summary(two)["step"] == 20
    # The logged training loss is the mean over the whole global batch, as in one process.
    rows = [[json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["step"] for r in rows[1]] == [10, 20]
    for a, b in zip(*rows):
        assert abs(a["train/loss"] - b["train/loss"]) < 1e-4


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank(no_bn_runs, tmp_path):
    one, _ = no_bn_runs
    run_dir = tmp_path / "run"
    ok(torchrun(NO_BN + ["trainer.stop_at_step=10", f"hydra.run.dir={run_dir}"], tmp_path))
    assert summary(run_dir)["status"] == "interrupted" and summary(run_dir)["step"] == 10
    ok(ssl_train([f"resume={run_dir}", "trainer.num_threads=1"], tmp_path))
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["step"] == 20
    assert max_difference(weights(run_dir), weights(one)) < 1e-4


@pytest.mark.slow
def test_with_batchnorm_two_ranks_match_one_within_seed_noise_and_write_one_run(tmp_path):
    """BatchNorm sees each rank's half batch, so the runs differ slightly; `trainer.devices=2` launches torchrun
    itself, and the two ranks agree on one run directory named by Hydra's ${now:...}."""
    args = BASE + ["method=supervised", "trainer.max_steps=60", "trainer.eval_every=60", "trainer.checkpoint_every=60"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    ok(ssl_train(args, tmp_path / "one"))
    ok(ssl_train(args + ["trainer.devices=2"], tmp_path / "two"))
    runs = {name: [p.parent for p in (tmp_path / name / "outputs").glob("*/*/summary.json")] for name in ("one", "two")}
    assert len(runs["two"]) == 1 and len(list((tmp_path / "two" / "outputs").glob("*/*"))) == 1, runs
    accuracy = {name: summary(dirs[0])["final"]["test/accuracy"] for name, dirs in runs.items()}
    print("test accuracy with BatchNorm:", accuracy)
    assert abs(accuracy["one"] - accuracy["two"]) < 0.08, accuracy  # 40 labels: seeds differ by several points
    run = runs["two"][0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "train.log" in os.listdir(run) and len((run / "train.log").read_text().splitlines()) >= 1


def _workers(agent_pid: int):
    """The worker processes torchrun's agent started, by rank."""
    out = {}
    for pid in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0])] = int(pid)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes_to_the_same_result(tmp_path):
    args = [a for a in NO_BN if not a.startswith("backbone.batch_norm=")] + ["trainer.max_steps=200", "trainer.eval_every=50",
                    "trainer.checkpoint_every=10"]
    ok(torchrun(args + [f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path))
    run_dir = tmp_path / "killed"
    agent = torchrun(args + [f"hydra.run.dir={run_dir}"], tmp_path, extra=["--max-restarts=1"], wait=False)
    deadline = time.time() + 500
    while not (run_dir / "last.pt").exists() and time.time() < deadline and agent.poll() is None:
        time.sleep(0.05)
    step_killed = load_checkpoint(run_dir / "last.pt")["step"]
    os.kill(_workers(agent.pid)[1], signal.SIGKILL)
    output, _ = agent.communicate(timeout=600)
    assert agent.returncode == 0, output[-3000:]
    assert "resuming from" in output or "torchrun restart" in output, output[-3000:]
    assert step_killed < 200
    assert summary(run_dir)["final"] == summary(tmp_path / "whole")["final"]
    assert max_difference(weights(run_dir), weights(tmp_path / "whole")) == 0

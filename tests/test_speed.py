"""Speed work that must not change results: the sync-free RandAugment path, torch.compile, ssl-bench."""

import json

import pytest
import torch

from conftest import compose, write_image_folder
from ssl_cli.apps import bench
from ssl_cli.core.errors import UserError
from ssl_cli.data.sampling import StepSampler
from ssl_cli.engine.config import TrainerOptions, check_config
from ssl_cli.engine.trainer import Trainer
from ssl_cli.transforms.ops import rand_augment


def trainer_for(overrides, run_dir):
    """A Trainer built as `ssl-train <overrides>` would build it (in `run_dir`, not trained yet)."""
    return Trainer(check_config(compose(overrides)), run_dir)


@pytest.mark.parametrize("shape", [pytest.param((64, 3, 32, 32), marks=pytest.mark.slow), (33, 1, 8, 8), (16, 3, 12, 20),
                                   (0, 3, 8, 8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_augment_sync_free_path_gives_the_grouped_result(shape, seed):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    for num_ops, prob in ((2, 0.5), (3, 1.0)):
        grouped = rand_augment(images, torch.Generator().manual_seed(seed), num_ops, prob, sync_free=False)
        sync_free = rand_augment(images, torch.Generator().manual_seed(seed), num_ops, prob, sync_free=True)
        assert torch.equal(grouped, sync_free)


def test_step_sampler_is_a_pure_function_of_the_step():
    a = StepSampler(10, 4, seed=3, stream=1, device=torch.device("cpu"))
    b = StepSampler(10, 4, seed=3, stream=1, device=torch.device("cpu"))
    forward = [a(k) for k in range(8)]
    assert all(torch.equal(b(k), forward[k]) for k in reversed(range(8)))
    epoch = torch.cat(forward[:3])[:10]  # steps 0, 1 and half of step 2 make the first epoch
    assert sorted(epoch.tolist()) == list(range(10))


@pytest.mark.slow
def test_trainer_compile_compiles_the_model_in_place(tmp_path):
    trainer = trainer_for(["debug=smoke", "trainer.compile=true", "trainer.compile_mode=default"], tmp_path)  # compiling itself happens at the first call, not tested here (slow on a CPU)
    assert trainer.model._compiled_call_impl is not None
    assert trainer.ema.model._compiled_call_impl is None  # the EMA copy stays eager
    assert not any(k.startswith("_orig_mod") for k in trainer.model.state_dict())  # checkpoints unchanged
    (tmp_path / "eager").mkdir()
    eager = trainer_for(["debug=smoke"], tmp_path / "eager")
    assert eager.model._compiled_call_impl is None


def test_trainer_compile_mode_is_checked(tmp_path):
    with pytest.raises(UserError, match="compile_mode"):
        trainer_for(["debug=smoke", "trainer.compile=true", "trainer.compile_mode=fastest"], tmp_path)


def test_reuse_cpu_memory_applies_on_linux(tmp_path):
    import sys

    from ssl_cli.engine.accel import reuse_cpu_memory

    assert reuse_cpu_memory() == sys.platform.startswith("linux")
    # The setting's type is declared on TrainerOptions: constructing the options checks it.
    with pytest.raises(UserError, match="trainer.reuse_cpu_memory must be true or false"):
        TrainerOptions(reuse_cpu_memory="yes")


TINY = ["--backbone", "cnn", "--device", "cpu", "--batch-size", "4", "--unlabeled-ratio", "2", "--repeats", "2",
        "--warmup", "1", "--eval-images", "16", "--eval-batch-size", "8", "--peak-tflops", "1"]


@pytest.mark.slow
def test_benchmark_synthetic_writes_every_phase(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--train-images", "64", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images_per_step"] == 4 + 2 * 8
    assert set(r["phases"]) == {"compute", "step", "augment", "batch", "load", "eval"}
    for phase in r["phases"].values():
        assert phase["repeats"] == 2 and phase["median_s"] > 0 and phase["images_per_s"] > 0
    assert r["flops_per_step"] > 0 and r["phases"]["compute"]["tflops"] > 0
    assert r["peak_source"].startswith("given") and r["peak_tflops"] == 1
    assert r["ratios"]["step_over_compute"] > 0 and "step_over_compute" in r["checks"]
    assert not r["streaming"] and r["machine"]["cpu"]
    assert "(b) full training step" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_streams_an_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "folder", per_class=12, size=12)
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--dataset", "imagefolder", "--root", str(root), "--num-workers", "1",
                              "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["streaming"] and r["phases"]["load"]["images"] == 4 + 8
    assert "dataset.streaming=true" in r["overrides"]


def test_benchmark_errors_are_one_line(capsys):
    assert bench.main(["--dataset", "imagefolder", "--device", "cpu"]) == 2
    assert "--root" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["fixmatch", "fixmatch+da", "flexmatch", "freematch", "softmatch", "adamatch", "uda",
                                    "simmatch", "comatch", "dash", "pimodel", "meanteacher", "vat", "mixmatch",
                                    "remixmatch", "crmatch"])
def test_cuda_training_step_never_waits_for_the_device(method, tmp_path):
    extra = ["method=fixmatch", "method.distribution_alignment=true"] if method == "fixmatch+da" else [f"method={method}"]
    if method in ("simmatch", "comatch"):  # use the bank / queue within the 40 steps
        extra.append("method.warmup_steps=5")
    if method == "dash":  # past the warm-up and across threshold updates within the 40 steps
        extra += ["method.warmup_steps=5", "method.threshold_update_steps=10"]
    trainer = trainer_for(["dataset=synthetic", "dataset.image_size=32", "dataset.num_train=512",
                           "trainer.device=cuda", *extra, "backbone=wrn28_2", "trainer.batch_size=16",
                           "trainer.progress_bar=false"], tmp_path)
    trainer.train_step(0)  # first calls may copy constants to the device once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 40):  # crosses epoch ends of both samplers
            trainer.running.add(trainer.train_step(step))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()

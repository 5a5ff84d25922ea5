"""trainer.precision: auto picks bf16 where the CPU (or CUDA) runs it natively; numerics that must stay float32 do."""

import json
import logging

import pytest
import torch

from conftest import trainer_for
from ssl_cli.apps import bench
from ssl_cli.core.errors import UserError
from ssl_cli.engine import precision
from ssl_cli.engine.checkpoint import load_checkpoint
from ssl_cli.engine.model_io import load_model
from ssl_cli.losses.pseudo_labels import confident_pseudo_labels
from ssl_cli.losses.selfsup import contrastive_accuracy, nt_xent
from ssl_cli.models import ModelOutput

CPU = torch.device("cpu")
SMOKE = ["debug=smoke", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
         "trainer.num_threads=1", "trainer.progress_bar=false"]
BF16_AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Sets what PyTorch's CPU probes report: cpu_bf16(amx=..., avx512_bf16=...)."""
    def set_probes(amx: bool, avx512_bf16: bool):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(precision, "_warned", False)
    return set_probes


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (True, True, "bf16"), (False, False, "fp32")])
def test_auto_follows_the_cpu_probe(cpu_bf16, amx, avx512_bf16, expected):
    cpu_bf16(amx, avx512_bf16)
    assert precision.resolve_precision("auto", CPU) == expected
    assert precision.resolve_precision("fp32", CPU) == "fp32"  # forcing either wins over the probe
    assert precision.resolve_precision("bf16", CPU) == "bf16"


def test_cuda_keeps_bf16_for_auto():
    cuda = torch.device("cuda")  # only the device type matters: no GPU needed
    assert precision.resolve_precision("auto", cuda) == "bf16"
    assert precision.resolve_precision("fp32", cuda) == "fp32"


def test_forced_bf16_without_native_support_warns_once(cpu_bf16, caplog):
    cpu_bf16(False, False)
    with caplog.at_level(logging.WARNING, logger="ssl_cli"):
        precision.resolve_precision("bf16", CPU)
        precision.resolve_precision("bf16", CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "slower" in warnings[0]
    caplog.clear()
    cpu_bf16(True, False)
    with caplog.at_level(logging.WARNING, logger="ssl_cli"):
        precision.resolve_precision("bf16", CPU)
    assert not caplog.records  # native: nothing to warn about


def test_trainer_resolves_auto_with_the_probe(cpu_bf16, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cpu_bf16(False, False)
    assert trainer_for(SMOKE, tmp_path / "a").precision == "fp32"
    cpu_bf16(False, True)
    trainer = trainer_for(SMOKE, tmp_path / "b")
    assert trainer.precision == "bf16"


# The largest bf16 number below 0.95 is 0.94921875 and the next one 0.953125: a probability of 0.9504
# passes a 0.95 threshold in float32 and fails it once rounded to bf16.
LOGIT = 2.953125  # exact in bf16; sigmoid(LOGIT) = 0.95044
assert torch.sigmoid(torch.tensor(LOGIT)) > 0.95 > torch.tensor(0.95044).bfloat16().float()


def near_threshold_logits(rows: int, classes: int = 2) -> torch.Tensor:
    """bf16 logits, as a bf16 forward pass returns them, whose top probability is 0.95044 in float32
    (classes beyond the first two get a logit of -30: probability below 1e-13)."""
    logits = torch.full((rows, classes), -30.0, dtype=torch.bfloat16)
    logits[:, 0], logits[:, 1] = LOGIT, 0.0
    return logits


def test_confidence_mask_is_decided_in_float32_under_autocast():
    logits = near_threshold_logits(4)
    assert torch.softmax(logits, dim=1).max().float() < 0.95  # what a bf16 softmax would decide
    with torch.autocast(**BF16_AUTOCAST):
        labels, mask = confident_pseudo_labels(logits, 0.95)
    assert mask.dtype == torch.float32 and mask.tolist() == [1.0] * 4 and labels.tolist() == [0] * 4


def test_fixmatch_keeps_images_a_bf16_softmax_would_drop(tmp_path):
    trainer = trainer_for(SMOKE + ["method=fixmatch", "method.confidence_threshold=0.95", "trainer.precision=bf16"],
                          tmp_path)
    batch = trainer.batches(0)

    def model(x):  # every image's weak view at probability 0.95044
        return ModelOutput(logits=near_threshold_logits(x.shape[0], trainer.data_cpu.num_classes), features=None)

    with trainer.autocast():
        out = trainer.method.training_step(model, batch, 0)
    assert out.metrics["mask_rate"].item() == 1.0


def test_simclr_similarities_stay_float32_under_autocast():
    z1, z2 = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    expected, accuracy = nt_xent(z1, z2, 0.1), contrastive_accuracy(z1, z2)
    with torch.autocast(**BF16_AUTOCAST):
        loss = nt_xent(z1, z2, 0.1)
        assert contrastive_accuracy(z1, z2) == accuracy
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-6)  # a bf16 matmul is off by about 1e-2


def test_bf16_run_trains_in_bf16_keeps_float32_state_and_records_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ssl_cli")
    trainer = trainer_for(SMOKE + ["trainer.precision=bf16"], tmp_path)
    conv_dtypes = []
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, args, out: conv_dtypes.append(out.dtype))
    summary = trainer.fit()
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}  # autocast ran, in training and evaluation
    # Master weights, BatchNorm statistics, the EMA and the optimiser's state stay float32.
    tensors = [*trainer.model.state_dict().values(), *trainer.ema.model.state_dict().values()]
    tensors += [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
    assert summary["precision"] == "bf16" and summary["status"] == "completed"
    assert json.loads((tmp_path / "summary.json").read_text())["precision"] == "bf16"
    log = caplog.text  # what train.log receives
    assert "precision bf16 (trainer.precision=bf16, cpu)" in log and "test_acc" in log and "| bf16" in log
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["precision"] == "bf16" and state["model_card"]["trained_precision"] == "bf16"


def test_load_model_follows_the_precision_choice(tmp_path, cpu_bf16):
    trainer = trainer_for(SMOKE + ["trainer.precision=fp32"], tmp_path)
    trainer.fit()
    images = trainer.data.test_images[:16]
    fp32 = load_model(tmp_path, precision="fp32")
    bf16 = load_model(tmp_path, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    p32, p16 = fp32.probabilities(images), bf16.probabilities(images)
    assert p16.dtype == torch.float32 and not torch.equal(p16, p32)  # bf16 computed differently...
    assert torch.allclose(p16, p32, atol=0.05)  # ...and close
    assert {p.dtype for p in bf16.network.parameters()} == {torch.float32}  # weights (and exports) stay fp32
    cpu_bf16(False, False)
    assert load_model(tmp_path).precision == "fp32"  # auto: the same rule as training
    cpu_bf16(True, False)
    assert load_model(tmp_path).precision == "bf16"
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16"):
        load_model(tmp_path, precision="fp16")


@pytest.mark.slow
def test_compiled_bf16_training_on_the_cpu(tmp_path):
    """trainer.compile=true on the CPU: inductor's C++ backend (needs a C++ compiler) under bf16 autocast."""
    summary = trainer_for(SMOKE + ["trainer.compile=true", "trainer.precision=bf16"], tmp_path).fit()
    assert summary["status"] == "completed" and summary["precision"] == "bf16"


@pytest.mark.slow
def test_bench_times_fp32_and_bf16_alternated_in_one_run(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--backbone", "cnn", "--device", "cpu", "--batch-size", "4", "--unlabeled-ratio", "2",
                       "--repeats", "2", "--warmup", "1", "--eval-images", "16", "--eval-batch-size", "8",
                       "--peak-tflops", "1", "--train-images", "64", "--threads", "1",
                       "--precision", "fp32,bf16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["precisions"] == ["fp32", "bf16"] and r["precision"] == "fp32"
    for name in ("fp32", "bf16"):
        run = r["by_precision"][name]
        assert run["precision"] == name and f"trainer.precision={name}" in run["overrides"]
        assert run["phases"]["step"]["repeats"] == 2 and run["phases"]["eval"]["median_s"] > 0
    assert set(r["speedup_over_fp32"]["bf16"]) == {"compute", "step", "eval"}
    cap = r["machine"]["cpu_capability"]
    assert cap["capability"] == torch.backends.cpu.get_cpu_capability() and "avx512_bf16" in cap
    assert r["machine"]["cpu_native_bf16"] == precision.cpu_supports_bf16()


def test_bench_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--precision", "fp32,fp16"])
    assert exit_info.value.code == 2 and "each precision must be one of auto, fp32, bf16" in capsys.readouterr().err
    assert bench.parse_args(["--precision", "fp32,bf16"]).precision == ["fp32", "bf16"]

"""Self-describing checkpoints: `load_model` without the training data, and checkpoints of older formats.

tests/fixtures/run_234092d is a run stopped at step 3 of 6 by ssl-cli 0.1.0 (commit 234092d, checkpoint
format 1), made with its overrides in .hydra/overrides.yaml. Its uninterrupted run ended at test accuracy
0.4375 with training loss 1.0564579963684082 (recorded from that commit).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ssl_train, trainer_for
from ssl_cli import load_model
from ssl_cli.core.errors import UserError
from ssl_cli.engine.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "run_234092d"
V1_UNINTERRUPTED = {"test/accuracy": 0.4375, "train/loss": 1.0564579963684082}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    result = ssl_train(["method=fixmatch", "method.unlabeled_ratio=2", "trainer.max_steps=40", "trainer.eval_every=40",
                        "trainer.device=cpu", "trainer.progress_bar=false", "hydra.run.dir=run"], root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


@pytest.mark.slow
def test_load_model_in_a_fresh_process_without_the_data_set(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    script = textwrap.dedent(f"""
        import numpy as np, torch
        import ssl_cli.data.base as data
        data.DATASETS._entries.clear()  # no data set can be loaded by anything below
        from ssl_cli import load_model
        model = load_model({str(digits_run)!r})
        # The test split, read here from scikit-learn as the digits loader splits it (a fixed 20 %).
        from sklearn.datasets import load_digits
        bunch = load_digits()
        _, test = data.held_out_split(bunch.target, 0.2, 0)
        x = torch.as_tensor(np.round(bunch.images[test] * (255 / 16)).astype(np.uint8))[:, None]
        y = torch.as_tensor(bunch.target[test])
        print((model.probabilities(x).argmax(1) == y).double().mean().item(), model.class_names)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy, names = out.stdout.split(" ", 1)
    assert float(accuracy) == summary["final"]["test/accuracy"]
    assert names.strip() == str([str(d) for d in range(10)])


@pytest.mark.slow
def test_loaded_model_predicts_class_names_from_images_and_paths(digits_run, tmp_path):
    from PIL import Image

    model = load_model(digits_run)
    img = Image.fromarray((torch.rand(8, 8) * 255).byte().numpy())
    img.save(tmp_path / "a.png")
    names, probs = model([img, tmp_path / "a.png", Image.new("RGB", (20, 30))])
    assert names[0] == names[1] and all(n in model.class_names for n in names)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))


@pytest.mark.slow
def test_checkpoints_carry_their_format_and_model_card(digits_run):
    state = load_checkpoint(digits_run / "last.pt")
    card = state["model_card"]
    assert state["format_version"] == FORMAT_VERSION
    assert card["class_names"] == [str(d) for d in range(10)] and card["image_size"] == [8, 8]
    assert card["channels"] == 1 and len(card["mean"]) == len(card["std"]) == 1
    assert card["backbone"] == "cnn" and card["backbone_options"] == {"batch_norm": True, "dropout": 0.0}


@pytest.mark.slow
def test_a_format_1_checkpoint_resumes_to_the_result_of_its_own_version(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    assert "format_version" not in torch.load(run / "last.pt", weights_only=True)
    result = ssl_train([f"resume={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 6
    assert summary["final"]["test/accuracy"] == V1_UNINTERRUPTED["test/accuracy"]
    assert summary["train"]["loss"] == V1_UNINTERRUPTED["train/loss"]
    assert load_model(run).class_names == ["class_0", "class_1", "class_2", "class_3"]  # rewritten as format 2


def test_load_model_names_the_version_of_a_format_1_checkpoint(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    with pytest.raises(UserError, match=r"written by ssl-cli 0\.1\.0 \(checkpoint format 1\).*resume it once") as e:
        load_model(run)
    assert "\n" not in str(e.value)


def test_a_format_1_run_still_starts_another(tmp_path):
    trainer = trainer_for(["debug=smoke", "dataset.image_size=8", "method=supervised",
                           f"backbone.init_from={FIXTURE}"], tmp_path)
    saved = torch.load(FIXTURE / "last.pt", weights_only=True)["ema"]
    assert torch.equal(trainer.model.state_dict()["conv.0.weight"], saved["conv.0.weight"])


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    save_checkpoint({"step": 1, "config": {}}, tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(UserError, match=f"has format {FORMAT_VERSION + 1}, newer than this ssl-cli reads"):
        load_checkpoint(tmp_path / "last.pt")

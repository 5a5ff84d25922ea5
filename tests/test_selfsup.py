"""Self-supervised pretraining: losses, the kNN monitor, the linear probe, contrastive views,
pretrained backbones and the two-stage `selfsup` recipe."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import compose, ssl_train, trainer_for
from ssl_cli.core.errors import UserError
from ssl_cli.engine.config import check_config
from ssl_cli.engine.evaluation import fit_linear_probe, knn_predict
from ssl_cli.engine.trainer import Trainer
from ssl_cli.losses.selfsup import byol_loss, contrastive_accuracy, nt_xent
from ssl_cli.methods.byol import target_decay_at
from ssl_cli.transforms.ops import contrastive_augment
from ssl_cli.transforms.views import Augmenter, AugmentOptions

SMOKE = ["debug=smoke", "trainer.deterministic=true"]


# --------------------------------------------------------------------------- losses


def test_nt_xent_hand_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # same directions: lengths must not matter
    # Anchor (1,0): positive similarity 1, two negatives of similarity 0, temperature 1:
    # -log(e / (e + 1 + 1)); every anchor is alike.
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # Temperature 0.5 doubles the logits: -log(e^2 / (e^2 + 2)).
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(math.log(1 + 2 / math.e ** 2), rel=1e-6)


def test_nt_xent_negative_pairs_count():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # All four embeddings equal: each anchor has 3 candidates of similarity 1, one of them positive.
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(math.log(3), rel=1e-6)
    assert contrastive_accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                                torch.tensor([[1.0, 0.1], [0.1, 1.0]])).item() == 1.0


def test_byol_loss_hand_value_and_no_target_gradient():
    p = torch.tensor([[1.0, 0.0], [3.0, 0.0]], requires_grad=True)
    z = torch.tensor([[0.0, 5.0], [2.0, 0.0]], requires_grad=True)
    loss = byol_loss(p, z)  # rows: 2 - 2*cos = 2 (orthogonal) and 0 (parallel)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_byol_target_decay_schedule():
    assert target_decay_at(0, 100, 0.99) == pytest.approx(0.99)
    assert target_decay_at(50, 100, 0.99) == pytest.approx(0.995)
    assert target_decay_at(100, 100, 0.99) == pytest.approx(1.0)


# --------------------------------------------------------------------------- kNN and linear probe


def test_knn_votes_are_weighted_by_temperature_and_k():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])  # cosine similarities 1.0, 0.8, 0.6
    assert knn_predict(bank, labels, query, 2, k=1).tolist() == [1]
    # k=3, T=1: class 1 gets e^1 = 2.72, class 0 gets e^0.8 + e^0.6 = 4.05.
    assert knn_predict(bank, labels, query, 2, k=3, temperature=1.0).tolist() == [0]
    # T=0.1: e^10 = 22026 against e^8 + e^6 = 3384.
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.1).tolist() == [1]
    # k larger than the bank is capped.
    assert knn_predict(bank, labels, query, 2, k=200, temperature=0.1).tolist() == [1]


def test_linear_probe_ignores_features_constant_on_the_bank():
    labels = torch.arange(40) % 2
    features = torch.stack([labels.float() * 4.0 + torch.linspace(0, 1, 40), torch.zeros(40)], dim=1)
    features[0, 1] = 1e-9  # a unit that (almost) never fires on the bank
    classifier = nn.Linear(2, 2)
    fit_linear_probe(classifier, features, labels)
    assert classifier.weight[:, 1].abs().max().item() == 0.0  # no huge weight on the dead unit
    assert (classifier(features).argmax(1) == labels).all()


def test_linear_probe_fits_separable_features():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    features = centres[labels] + 100.0 + torch.randn(60, 3, generator=gen)  # offset: standardisation matters
    classifier = nn.Linear(3, 3)
    fit_linear_probe(classifier, features, labels)
    assert (classifier(features).argmax(1) == labels).all()


# --------------------------------------------------------------------------- contrastive view


def test_contrastive_views_differ_per_image_and_between_views():
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).repeat(8, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    a, b = contrastive_augment(images, gen), contrastive_augment(images, gen)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert len({bytes(x.numpy()) for x in a}) == 8  # the same image, 8 different views
    assert all(not torch.equal(x, y) for x, y in zip(a, b))  # the two views of each image differ


def test_contrastive_view_without_flip_or_colour_keeps_colours_and_orientation():
    # Red rises from left to right; green and blue are flat. Area 1 with a random aspect ratio still
    # crops (zooms) one side, so pixels move, but without flip, jitter or grayscale the red ramp still
    # rises left to right and the flat channels keep their value.
    ramp = torch.linspace(0, 250, 16).round().to(torch.uint8)
    images = torch.empty(32, 3, 16, 16, dtype=torch.uint8)
    images[:, 0] = ramp
    images[:, 1], images[:, 2] = 90, 170
    out = contrastive_augment(images, torch.Generator().manual_seed(0), crop_scale=(1.0, 1.0), flip=False,
                              jitter=0.0, grayscale_prob=0.0).int()
    assert (out[:, 0, :, 1:] >= out[:, 0, :, :-1]).all()  # never mirrored
    assert (out[:, 0, :, -1] - out[:, 0, :, 0] > 150).all()
    assert (out[:, 1] - 90).abs().max() <= 1 and (out[:, 2] - 170).abs().max() <= 1
    flipped = contrastive_augment(images, torch.Generator().manual_seed(0), crop_scale=(1.0, 1.0), flip=True,
                                  jitter=0.0, grayscale_prob=0.0).int()
    assert (flipped[:, 0, :, 0] > flipped[:, 0, :, -1]).any()  # with flip=True some are mirrored


def test_augmenter_has_a_contrastive_view_for_every_config():
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    out = Augmenter(AugmentOptions())("contrastive", images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and not torch.equal(out, images)


# --------------------------------------------------------------------------- pretraining runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretraining_runs_and_reports_knn_and_probe(method, tmp_path):
    result = ssl_train(SMOKE + [f"method={method}", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == method
    assert "linear probe" in summary["reported_accuracy"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("test/knn_accuracy" in r and "val/knn_accuracy" in r for r in rows)
    # The summary reports the last evaluation, and its kNN monitor beats chance (0.25, 4 classes): ~0.99 here.
    assert summary["final"]["test/knn_accuracy"] == rows[-1]["test/knn_accuracy"] > 0.5
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert any(k.startswith("projector.") for k in state["method"])


def test_pretraining_uses_no_labels(tmp_path):
    cfg = compose(SMOKE + ["method=simclr"])
    trainer = Trainer(check_config(cfg), tmp_path)
    batch = trainer.batches(0)
    assert batch.labeled == () and batch.labels is None
    assert len(batch.unlabeled) == 2 and not torch.equal(batch.unlabeled[0], batch.unlabeled[1])
    # Changing every training label changes nothing the loss sees.
    trainer.data.labels.fill_(0)
    assert torch.equal(trainer.batches(0).unlabeled[0], batch.unlabeled[0])


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    cfg = compose(SMOKE + ["method=supervised", "trainer.grad_accumulation=2", "optim.weight_decay=0",
                            "trainer.precision=fp32"])
    trainer = Trainer(check_config(cfg), tmp_path)
    loss = trainer.train_step(0)["loss"]
    # The step's loss is the mean over micro-batches 0 and 1, as a fresh model sees them.
    (tmp_path / "b").mkdir()
    fresh = Trainer(check_config(cfg), tmp_path / "b")
    with torch.no_grad():
        expected = sum(fresh.method.training_step(fresh.model, fresh.batches(i), 0).loss for i in (0, 1)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_byol_target_follows_online_network(tmp_path):
    cfg = compose(SMOKE + ["method=byol"])
    trainer = Trainer(check_config(cfg), tmp_path)
    before = [p.clone() for p in trainer.method.target.parameters()]
    trainer.train_step(0)
    after = list(trainer.method.target.parameters())
    online = list(trainer.model.parameters()) + list(trainer.method.projector.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert any(changed) and all(not p.requires_grad for p in after)
    decay = target_decay_at(0, cfg.trainer.max_steps, 0.99)
    for b, a, o in zip(before, after, online):
        assert torch.allclose(a, decay * b + (1 - decay) * o, atol=1e-6)


# --------------------------------------------------------------------------- pretrained backbones


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    result = ssl_train(SMOKE + ["method=simclr", "hydra.run.dir=run"], root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


@pytest.mark.slow
def test_pretrained_backbone_changes_the_starting_weights(pretrained_run, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    scratch = trainer_for(SMOKE + ["method=supervised"], tmp_path / "a")
    loaded = trainer_for(SMOKE + ["method=supervised", f"backbone.init_from={pretrained_run}"], tmp_path / "b")
    saved = torch.load(pretrained_run / "last.pt", weights_only=True)["ema"]
    fresh = scratch.model.state_dict()
    for name, value in loaded.model.state_dict().items():
        # Features from the pretrained run's EMA weights; the classifier starts fresh (same seed, same init).
        assert torch.equal(value, fresh[name] if name.startswith("classifier.") else saved[name]), name
    assert not torch.equal(scratch.model.state_dict()["conv.0.weight"], loaded.model.state_dict()["conv.0.weight"])


@pytest.mark.parametrize("override,difference", [
    ("backbone=wrn28_2", "backbone cnn vs wrn28_2"),
    ("dataset.image_size=20", "image_size [16, 16] vs [20, 20]"),
    ("dataset.channels=1", "channels 3 vs 1"),
])
@pytest.mark.slow
def test_mismatched_pretrained_backbone_is_refused(pretrained_run, tmp_path, override, difference):
    cfg = compose(SMOKE + ["method=supervised", override, f"backbone.init_from={pretrained_run}"])
    with pytest.raises(UserError, match="does not fit") as info:
        Trainer(check_config(cfg), tmp_path)
    assert difference in str(info.value)


@pytest.mark.slow
def test_pretrained_from_another_class_count_keeps_a_fresh_classifier(pretrained_run, tmp_path):
    cfg = compose(SMOKE + ["method=supervised", "dataset.num_classes=2", "dataset.num_labels=8",
                           f"backbone.init_from={pretrained_run}"])
    trainer = Trainer(check_config(cfg), tmp_path)
    assert trainer.model.classifier.out_features == 2


@pytest.mark.slow
def test_missing_pretrained_gives_one_line(tmp_path):
    result = ssl_train(SMOKE + ["method=supervised", f"backbone.init_from={tmp_path / 'nope'}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no such file or directory; give a run directory or a checkpoint file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_frozen_features_train_the_classifier_only(pretrained_run, tmp_path):
    cfg = compose(SMOKE + ["method=fixmatch", f"backbone.init_from={pretrained_run}", "backbone.freeze_features=true"])
    trainer = Trainer(check_config(cfg), tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.train()
    for step in range(2):
        trainer.train_step(step)
    after = trainer.model.state_dict()
    for name, value in after.items():
        same = torch.equal(value, before[name])
        assert same != name.startswith("classifier."), name  # BatchNorm statistics included


# --------------------------------------------------------------------------- the selfsup recipe


SELFSUP = SMOKE + ["method=selfsup", "method.pretrain_steps=4", "method.pretrain_batch_size=16",
                   "trainer.checkpoint_every=2", "trainer.eval_every=2"]


@pytest.mark.slow
@pytest.mark.parametrize("pretrain,finetune,freeze", [("simclr", "fixmatch", "false"), ("byol", "supervised", "true")])
def test_selfsup_runs_both_stages_in_one_directory(pretrain, finetune, freeze, tmp_path):
    result = ssl_train(SELFSUP + [f"method.pretrain={pretrain}", f"method.finetune={finetune}",
                                  f"method.freeze_backbone={freeze}", "method.pretrain_optim={lr:0.05}",
                                  "method.pretrain_scheduler={name:warmup_cosine,warmup_steps:2}",
                                  "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == "selfsup"
    assert summary["stage_methods"] == {"pretrain": pretrain, "finetune": finetune}
    assert summary["stages"]["pretrain"]["step"] == 4 and summary["stages"]["finetune"]["step"] == 6
    assert summary["final"] == summary["stages"]["finetune"]["final"]
    for stage in ("pretrain", "finetune"):
        assert (run_dir / stage / "last.pt").exists() and (run_dir / stage / "metrics.jsonl").exists()
    pretrain_cfg = torch.load(run_dir / "pretrain" / "last.pt", weights_only=True)["config"]
    assert pretrain_cfg["optim"]["lr"] == 0.05 and pretrain_cfg["scheduler"]["name"] == "warmup_cosine"
    assert pretrain_cfg["trainer"]["batch_size"] == 16 and pretrain_cfg["method"]["name"] == pretrain
    finetune_cfg = torch.load(run_dir / "finetune" / "last.pt", weights_only=True)["config"]
    assert finetune_cfg["optim"]["lr"] == 0.03 and finetune_cfg["trainer"]["batch_size"] == 8
    assert finetune_cfg["backbone"]["init_from"] == str(run_dir / "pretrain")
    assert finetune_cfg["backbone"]["freeze_features"] == (freeze == "true")


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [2, 5], ids=["in-pretraining", "in-fine-tuning"])
def test_selfsup_resumes_to_the_uninterrupted_result(stop_at, tmp_path):
    full = ssl_train(SELFSUP + ["hydra.run.dir=full"], tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    # stop_at_step applies to each stage: 2 stops the pretraining (4 steps), 5 the fine-tuning (6 steps).
    part = ssl_train(SELFSUP + [f"trainer.stop_at_step={stop_at}", "hydra.run.dir=part"], tmp_path)
    assert part.returncode == 0, part.stderr[-2000:]
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "interrupted"
    resumed = ssl_train([f"resume={tmp_path / 'part'}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert b["status"] == "completed"
    assert a["final"] == b["final"]
    assert a["stages"]["pretrain"]["final"] == b["stages"]["pretrain"]["final"]


@pytest.mark.slow
def test_selfsup_bad_stage_names(tmp_path):
    for override, message in (("method.pretrain=fixmatch", "method.pretrain must be one of simclr, byol"),
                              ("method.finetune=simclr", "method.finetune must be one of")):
        result = ssl_train(SELFSUP + [override], tmp_path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr

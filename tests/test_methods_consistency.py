"""Dash, Π-model, Mean Teacher and VAT: their losses on hand-computed tiny examples, which view is trained
towards which, the state they keep, and (Mean Teacher) that the consistency loss really is non-zero."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import trainer_for
from ssl_cli.core.errors import UserError
from ssl_cli.data.batches import Batch
from ssl_cli.losses.consistency import adversarial_perturbation, entropy, kl_divergence, probability_mse
from ssl_cli.methods import METHODS
from ssl_cli.methods.base import StepOutput
from ssl_cli.models import ModelOutput
from ssl_cli.models.batchnorm import batchnorm_statistics_frozen
from ssl_cli.models.ema import EMA
from test_methods import LABELS, TABLE, StubModel, build, ce, fixmatch_batch, images, info

LN3 = math.log(3.0)

# --------------------------------------------------------------------------- the shared losses


def test_probability_mse_by_hand():
    # softmax([0, 0]) = (.5, .5) against (1, 0): (.25 + .25) / 2; softmax([ln 3, 0]) = (.75, .25) against
    # (.5, .5): (.0625 + .0625) / 2; the mean of the two rows is .15625.
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    loss = probability_mse(logits, targets)
    assert loss.item() == pytest.approx(0.15625, rel=1e-6)
    loss.backward()
    assert targets.grad is None and logits.grad.abs().sum() > 0  # the target carries no gradient


def test_kl_divergence_and_entropy_by_hand():
    # KL((.5, .5) || (.75, .25)) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3); H(.5, .5) = ln 2.
    target = torch.tensor([[0.0, 0.0]], requires_grad=True)
    logits = torch.tensor([[LN3, 0.0]], requires_grad=True)
    kl = kl_divergence(target, logits)
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    kl.backward()
    assert target.grad is None
    assert kl_divergence(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    assert entropy(torch.tensor([[0.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(math.log(2), rel=1e-6)


# --------------------------------------------------------------------------- Π-model


def consistency_batch():
    """Labeled codes 0, 1; the first weak views codes 2, 3, the second weak views codes 4, 5."""
    return Batch(labeled=(images(0, 1),), labels=LABELS, unlabeled=(images(2, 3), images(4, 5)),
                 unlabeled_index=torch.tensor([0, 1]))


def test_pimodel_trains_the_first_view_towards_the_second_with_the_ramped_weight():
    method = build("pimodel", unlabeled_weight=10.0, warmup_fraction=0.4, max_steps=100)
    model = StubModel()
    out = method.training_step(model, consistency_batch(), 20)  # half of the 40 ramp-up steps: weight 5
    out.loss.backward()
    bias = torch.zeros(3, requires_grad=True)
    student = torch.softmax(TABLE[[2, 3]] + bias, dim=1)
    target = torch.softmax(TABLE[[4, 5]], dim=1)  # fixed: no gradient through the second view
    expected = F.cross_entropy(TABLE[[0, 1]] + bias, LABELS) + 5.0 * (student - target).pow(2).mean()
    expected.backward()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.metrics["unsup_weight"].item() == 5.0
    assert torch.allclose(model.bias.grad, bias.grad, atol=1e-7)
    # The other way round (the first view as the target) has the same loss value but another gradient.
    swapped = torch.zeros(3, requires_grad=True)
    swapped_mse = (torch.softmax(TABLE[[4, 5]] + swapped, 1) - torch.softmax(TABLE[[2, 3]], 1)).pow(2).mean()
    (F.cross_entropy(TABLE[[0, 1]] + swapped, LABELS) + 5.0 * swapped_mse).backward()
    assert not torch.allclose(model.bias.grad, swapped.grad, atol=1e-4)  # exact for any ξ: ξ = 0.1 keeps float32 precise


# --------------------------------------------------------------------------- Mean Teacher


class ModeRecordingStub(StubModel):
    """The stub model, remembering whether each call ran in training mode."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return super().forward(x)


def mean_teacher(model, teacher_bias, **options):
    method = METHODS.get("meanteacher")(METHODS.options("meanteacher")(**options), info(), 100)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        ema.model.bias.copy_(teacher_bias)  # a teacher that differs from the student
    method.setup(model, ema)
    return method, ema


def test_meanteacher_mse_between_the_student_and_the_ema_teacher_by_hand():
    student = ModeRecordingStub()
    teacher_bias = torch.tensor([1.0, 0.0, -1.0])
    method, ema = mean_teacher(student, teacher_bias, unlabeled_weight=50.0, warmup_fraction=0.0)
    ema.model.train()  # left in training mode by someone: the method evaluates the teacher anyway
    ema.model.modes.clear()
    out = method.training_step(student, consistency_batch(), 0)
    out.loss.backward()
    # Student: codes 2, 3 (bias 0); teacher: codes 4, 5 with its own bias; squared error per class.
    p = torch.softmax(TABLE[[2, 3]], dim=1)
    q = torch.softmax(TABLE[[4, 5]] + teacher_bias, dim=1)
    unsup = ((p - q) ** 2).sum() / 6  # mean over 2 images x 3 classes
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + 50.0 * unsup).item(), rel=1e-6)
    assert ema.model.modes == [False]  # the teacher ran once, in eval mode
    assert student.modes == [True]
    assert all(p.grad is None for p in ema.model.parameters())  # no gradient reaches the teacher
    assert student.bias.grad is not None


def test_meanteacher_refuses_a_run_without_an_ema(tmp_path):
    method = METHODS.get("meanteacher")(METHODS.options("meanteacher")(), info(), 100)
    with pytest.raises(UserError, match="trainer.ema_decay"):
        method.setup(StubModel(), None)
    with pytest.raises(UserError, match="trainer.ema_decay > 0"):
        trainer_for(["debug=smoke", "method=meanteacher", "trainer.ema_decay=0"], tmp_path)


def test_meanteacher_consistency_loss_is_nonzero_in_real_training(tmp_path):
    # USB's version computes exactly 0 here (the teacher's logits stand in for the student's).
    trainer = trainer_for(["debug=smoke", "method=meanteacher", "trainer.batch_size=8", "trainer.num_threads=1",
                           "method.warmup_fraction=0", "trainer.precision=fp32"], tmp_path)
    teacher_before = [p.clone() for p in trainer.ema.model.parameters()]
    losses = [trainer.train_step(step)["unsup_loss"].item() for step in range(3)]
    assert all(loss > 1e-7 for loss in losses), losses
    # The teacher moved, only by the EMA update, and is not the student.
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, trainer.ema.model.parameters()))
    assert all(not p.requires_grad for p in trainer.ema.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), trainer.ema.model.parameters()))


# --------------------------------------------------------------------------- VAT


class TinyNet(nn.Module):
    """A differentiable model: BatchNorm over the flattened pixels, then a linear map to 3 logits."""

    feature_dim = 4

    def __init__(self, batchnorm=True):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(4) if batchnorm else nn.Identity()
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        features = self.norm(x.flatten(1))
        return ModelOutput(self.classifier(features), features)


def tiny_images():
    return torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -0.5, 0.3], [-2.0, 0.1, 0.4, 1.5]]).view(3, 1, 2, 2)


def test_vat_perturbation_has_norm_eps_per_image_and_follows_the_power_iteration():
    model = TinyNet(batchnorm=False)
    x = tiny_images()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # gradients accumulated so far must stay as they are
    torch.manual_seed(1)
    r = adversarial_perturbation(lambda v: model(v).logits, x, xi=0.1, eps=6.0)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((3,), 6.0), rtol=1e-5)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    # By hand for a linear model z = W x + b: ∇_r mean KL(q || softmax(W (x + r) + b)) = W^T (p_r - q) / B,
    # at r = ξ u/|u| with u the same Gaussian draw.
    torch.manual_seed(1)
    u = torch.randn_like(x).flatten(1)
    W, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    flat = x.flatten(1)
    q = torch.softmax(flat @ W.T + b, dim=1)
    p_r = torch.softmax((flat + 0.1 * u / u.norm(dim=1, keepdim=True)) @ W.T + b, dim=1)
    g = (p_r - q) @ W
    expected = 6.0 * g / g.norm(dim=1, keepdim=True)
    assert torch.allclose(r.flatten(1), expected, atol=1e-4)  # exact for any ξ: ξ = 0.1 keeps float32 precise


def test_batchnorm_statistics_frozen_leaves_the_running_statistics_alone():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with batchnorm_statistics_frozen(model):
        model(tiny_images()).logits.sum().backward()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.norm.track_running_stats
    model(tiny_images())  # outside the block they move again
    assert not torch.equal(before["norm.running_mean"], model.norm.running_mean)


def test_vat_loss_by_hand_and_only_the_labeled_images_move_batchnorm():
    method = build("vat", unlabeled_weight=0.3, warmup_fraction=0.0, entropy_weight=0.06, perturbation_norm=6.0)
    model = TinyNet()
    labeled, unlabeled = tiny_images()[:2], tiny_images() * 0.5
    reference = TinyNet()
    reference(labeled)  # the labeled pass alone: the running statistics VAT must end with
    torch.manual_seed(3)
    out = method.training_step(model, Batch(labeled=(labeled,), labels=LABELS, unlabeled=(unlabeled,)), 0)
    assert torch.equal(model.norm.running_mean, reference.norm.running_mean)
    assert torch.equal(model.norm.running_var, reference.norm.running_var)
    # The same with the pieces by hand: the unlabeled passes normalise with their own batch statistics.
    torch.manual_seed(3)
    with batchnorm_statistics_frozen(model):
        clean = model(unlabeled).logits
        r_adv = adversarial_perturbation(lambda v: model(v).logits, unlabeled, 1e-6, 6.0)
        adversarial = model(unlabeled + r_adv).logits
    q, log_q, log_p = torch.softmax(clean, 1), torch.log_softmax(clean, 1), torch.log_softmax(adversarial, 1)
    kl = (q * (log_q - log_p)).sum(1).mean()
    ent = -(q * log_q).sum(1).mean()
    sup = F.cross_entropy(model(labeled).logits, LABELS)
    assert out.metrics["unsup_loss"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.metrics["unsup_loss"].item() > 1e-4  # ε = 6 moves these images' predictions
    assert out.loss.item() == pytest.approx((sup + 0.3 * kl + 0.06 * ent).item(), rel=1e-5)


# --------------------------------------------------------------------------- Dash


def dash(**options):
    return build("dash", warmup_steps=1, temperature=0.5, min_threshold=0.05, **options)


def test_dash_masks_by_the_weak_loss_against_soft_targets_above_the_floor():
    method = dash()
    method.loss_threshold.fill_(0.5)
    out = method.training_step(StubModel(), fixmatch_batch(), 1)
    p = torch.softmax(TABLE[[2, 3]], dim=1)
    targets = p ** 2 / (p ** 2).sum(dim=1, keepdim=True)  # sharpened at T = 0.5
    weak_loss = -(targets * p.log()).sum(dim=1)
    assert weak_loss[0] < 0.5 < weak_loss[1]  # image 2 (confident) passes, image 3 does not
    unsup = -(targets[0] * torch.log_softmax(TABLE[4], dim=0)).sum() / 2  # its strong view, code 4
    assert out.metrics["mask_rate"].item() == 0.5
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + unsup).item(), rel=1e-6)


def test_dash_uses_hard_labels_once_the_threshold_is_at_its_floor():
    method = dash()
    method.loss_threshold.fill_(0.05)
    out = method.training_step(StubModel(), fixmatch_batch(), 1)
    # -log 0.999 passes 0.05; image 3's -log 0.37 does not; hard target: class 2.
    assert out.metrics["mask_rate"].item() == 0.5
    assert out.metrics["unsup_loss"].item() == pytest.approx((ce([4], [2]) / 2).item(), rel=1e-6)


def test_dash_warmup_trains_the_labeled_images_only_and_sets_the_threshold_schedule():
    method = build("dash", warmup_steps=2, threshold_update_steps=3, threshold_decay=1.27,
                   threshold_scale=1.0001, min_threshold=0.05)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    assert out.loss.item() == pytest.approx(ce([0, 1], LABELS).mean().item(), rel=1e-6)
    assert out.metrics["unsup_loss"].item() == 0.0

    def step(t, sup_loss):
        method.after_step(None, t, [StepOutput(torch.tensor(0.0), {}, {"sup_loss": torch.tensor(sup_loss)})])
        return method.loss_threshold.item()

    assert step(0, 2.0) == pytest.approx(1.0001 * 2.0)  # ρ̂ = the first loss
    assert step(1, 1.0) == pytest.approx(1.0001 * 1.5)  # ρ̂ = .5 · 2 + .5 · 1 (momentum 1/2 at step 1)
    assert method.labeled_loss.item() == pytest.approx(1.5)
    assert step(2, 9.0) == pytest.approx(1.0001 * 1.5)  # after the warm-up ρ̂ stays; k = (3 - 2) // 3 = 0
    assert step(4, 9.0) == pytest.approx(1.0001 * 1.5 / 1.27)  # k = (5 - 2) // 3 = 1
    assert step(100, 9.0) == pytest.approx(0.05)  # 1.5 · 1.0001 / 1.27^33 is below the floor
    assert method.hard_labels().item()


# --------------------------------------------------------------------------- resume (weights-only state)


@pytest.mark.parametrize("method", ["pimodel", "meanteacher", "vat"])
def test_weights_and_teacher_survive_a_checkpoint_exactly(method, tmp_path):
    # Their state is the weights and the EMA (teacher) and, for VAT, the random draws of the power iteration.
    overrides = ["debug=smoke", f"method={method}", "trainer.deterministic=true", "trainer.batch_size=8",
                 "trainer.num_threads=1", "method.warmup_fraction=0"]
    for sub in "abc":
        (tmp_path / sub).mkdir()
    straight = trainer_for(overrides, tmp_path / "a")
    for step in range(4):
        straight.train_step(step)
    first = trainer_for(overrides, tmp_path / "b")
    for step in range(2):
        first.train_step(step)
    state = first.state_dict()  # before the next Trainer reseeds the global generator
    resumed = trainer_for(overrides, tmp_path / "c")
    resumed.load_state_dict(state)
    for step in range(2, 4):
        resumed.train_step(step)
    for expected, got in ((straight.model, resumed.model), (straight.ema.model, resumed.ema.model)):
        for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values()):
            assert torch.equal(a, b), name

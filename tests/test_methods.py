"""What each method does with each view: a stub model whose outputs are fixed per input image pins which
view gives the targets and which view is trained, so swapping two views or dropping a mask fails here.

Every image of a view is a constant image whose value is a code; the stub model looks the code up in a
table of logits (plus a bias, so the loss has a gradient). A method that used the weak view's logits
where it should use the strong view's, or forgot the confidence mask, computes another number.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import trainer_for
from ssl_cli.data.batches import Batch, DataInfo
from ssl_cli.losses.selfsup import byol_loss, nt_xent
from ssl_cli.methods import METHODS
from ssl_cli.models import ModelOutput

NUM_CLASSES = 3
# Logits by image code. Codes 0-1: labeled; 2-3: weak views (2 confident in class 2, 3 not confident);
# 4-5: strong views (different numbers again).
TABLE = torch.tensor([
    [2.0, 0.5, -1.0],   # 0
    [0.0, 1.0, 0.3],    # 1
    [-3.0, -2.0, 5.0],  # 2: softmax top 0.999 (class 2)
    [0.2, 0.1, 0.0],    # 3: top 0.37, below any usual threshold
    [0.5, -0.5, 1.5],   # 4
    [1.0, 2.0, -1.0],   # 5
])


class StubModel(nn.Module):
    """model(x) -> ModelOutput: logits TABLE[code] + bias and features = one-hot code, for images whose
    pixels all equal their code."""

    feature_dim = len(TABLE)

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(NUM_CLASSES))
        self.classifier = nn.Linear(self.feature_dim, NUM_CLASSES)

    def forward(self, x):
        code = x.flatten(1)[:, 0].round().long()
        return ModelOutput(TABLE[code] + self.bias, F.one_hot(code, self.feature_dim).float())


def images(*codes) -> torch.Tensor:
    return torch.tensor(codes, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()


def info(num_unlabeled=2) -> DataInfo:
    return DataInfo(num_classes=NUM_CLASSES, class_names=("a", "b", "c"), channels=1, image_size=(2, 2),
                    num_labeled=2, num_unlabeled=num_unlabeled, class_prior=(0.5, 0.5, 0.0))


def build(name, max_steps=100, **options):
    cls = METHODS.get(name)
    method = cls(METHODS.options(name)(**options), info(), max_steps)
    method.setup(StubModel(), None)
    return method


LABELS = torch.tensor([0, 1])
TARGETS = torch.tensor([2, 0])  # hidden true labels of the two unlabeled images


def ce(codes, targets):
    return F.cross_entropy(TABLE[list(codes)], torch.as_tensor(targets), reduction="none")


def test_supervised_trains_the_labeled_view_on_its_labels():
    method = build("supervised")
    out = method.training_step(StubModel(), Batch(labeled=(images(0, 1),), labels=LABELS), 0)
    assert out.loss.item() == pytest.approx(ce([0, 1], LABELS).mean().item())


def fixmatch_batch():
    return Batch(labeled=(images(0, 1),), labels=LABELS, unlabeled=(images(2, 3), images(4, 5)),
                 unlabeled_index=torch.tensor([0, 1]), unlabeled_targets=TARGETS)


def test_fixmatch_targets_come_from_the_weak_view_and_train_the_strong_view():
    method = build("fixmatch", confidence_threshold=0.95, unlabeled_weight=1.0)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    sup = ce([0, 1], LABELS).mean()
    # Weak image 2 is confident in class 2: its strong view (code 4) is trained towards class 2. Weak
    # image 3 is not confident: masked out, but still counted in the mean (FixMatch's normalisation).
    unsup = (ce([4], [2]).sum() * 1 + 0) / 2
    assert out.loss.item() == pytest.approx((sup + unsup).item(), rel=1e-6)
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-6)
    assert out.metrics["mask_rate"].item() == 0.5
    correct, counted = out.metrics["pseudo_label_acc"]
    assert (correct.item(), counted.item()) == (1.0, 1.0)  # image 2's pseudo-label 2 is its true label


def test_fixmatch_unlabeled_weight_scales_only_the_unlabeled_loss():
    base = build("fixmatch", unlabeled_weight=0.0).training_step(StubModel(), fixmatch_batch(), 0)
    assert base.loss.item() == pytest.approx(ce([0, 1], LABELS).mean().item())


def test_pseudolabel_trains_the_weak_view_on_its_own_confident_argmax_after_the_rampup():
    method = build("pseudolabel", confidence_threshold=0.95, warmup_fraction=0.5, max_steps=100)
    batch = Batch(labeled=(images(0, 1),), labels=LABELS, unlabeled=(images(2, 3),), unlabeled_targets=TARGETS)
    sup = ce([0, 1], LABELS).mean()
    unsup = ce([2], [2]).sum() / 2  # only image 2 passes, trained towards its own argmax
    for step, weight in ((0, 0.0), (25, 0.5), (80, 1.0)):  # linear ramp over 50 of 100 steps
        out = method.training_step(StubModel(), batch, step)
        assert out.loss.item() == pytest.approx((sup + weight * unsup).item(), rel=1e-6), step


def test_simclr_pairs_each_image_with_its_own_other_view():
    torch.manual_seed(0)
    method = build("simclr", temperature=0.5)
    model = StubModel()
    v1, v2 = images(0, 1, 2), images(3, 4, 5)
    out = method.training_step(model, Batch(unlabeled=(v1, v2)), 0)
    z = method.projector(model(torch.cat([v1, v2])).features)  # one batch: BatchNorm sees both views
    z1, z2 = z[:3], z[3:]
    assert out.loss.item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-5)
    # Pairing image i with another image's view gives another loss: the test can tell them apart.
    assert out.loss.item() != pytest.approx(nt_xent(z1, z2[[1, 2, 0]], 0.5).item(), rel=1e-3)


def test_byol_prediction_of_each_view_regresses_the_target_of_the_other():
    torch.manual_seed(0)  # the heads' initial weights
    method = build("byol", target_decay=0.99)
    model = StubModel()
    method.setup(model, None)
    with torch.no_grad():  # a target that differs from the online network, so the pairing matters
        for p in method.target.parameters():
            p.add_(3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    v1, v2 = images(0, 1), images(2, 3)
    out = method.training_step(model, Batch(unlabeled=(v1, v2)), 0)
    both = torch.cat([v1, v2])
    pred = method.predictor(method.projector(model(both).features))
    with torch.no_grad():
        target = method.target(both)
    expected = byol_loss(pred[:2], target[2:]) + byol_loss(pred[2:], target[:2])
    same_view = byol_loss(pred[:2], target[:2]) + byol_loss(pred[2:], target[2:])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not math.isclose(out.loss.item(), same_view.item(), rel_tol=1e-4)


# --------------------------------------------------------------------------- FixMatch's family
#
# Each test computes the loss by hand from TABLE: weak codes 2 (confident, class 2) and 3 (top 0.37), strong
# codes 4 and 5. Every number below is what the method must use at its first step, from its initial state.


def softmax(code):
    return torch.softmax(TABLE[code], dim=0)


def test_fixmatch_with_distribution_alignment_aligns_the_weak_view_before_thresholding():
    # Labeled prior (0.5, 0.5, 0): class 2 gets target ~1e-6, so image 2's aligned argmax moves off class 2.
    method = build("fixmatch", confidence_threshold=0.5, distribution_alignment=True)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    target = torch.tensor([0.5 + 1e-6, 0.5 + 1e-6, 1e-6])
    aligned = torch.stack([softmax(2), softmax(3)]) * (target / target.sum() * 3)  # model_probs start uniform
    aligned = aligned / aligned.sum(1, keepdim=True)
    conf, labels = aligned.max(1)
    mask = (conf >= 0.5).float()
    unsup = (ce([4, 5], labels) * mask).mean()
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    plain = build("fixmatch", confidence_threshold=0.5).training_step(StubModel(), fixmatch_batch(), 0)
    assert plain.metrics["unsup_loss"].item() != pytest.approx(unsup.item(), rel=1e-3)
    # after_step moves the model's mean prediction towards this batch's raw weak probabilities.
    method.after_step(StubModel(), 0, [out])
    expected = 0.999 * torch.full((3,), 1 / 3) + 0.001 * torch.stack([softmax(2), softmax(3)]).mean(0)
    assert method.alignment.model_probs.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_flexmatch_starts_with_low_class_thresholds_and_trains_the_strong_view():
    method = build("flexmatch")
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    # Nothing claimed yet: every threshold is 0, both weak images count, targets their weak argmax.
    unsup = ce([4, 5], [2, 0]).mean()
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-6)
    assert out.metrics["mask_rate"].item() == 1.0
    method.after_step(StubModel(), 0, [out])
    # Image 0 (weak code 2, conf 0.999 > 0.95) claims class 2; image 1 stays unclaimed.
    assert method.class_threshold.selected_label.tolist() == [2, -1]


def test_freematch_masks_with_the_self_adaptive_threshold_and_adds_the_fairness_term():
    method = build("freematch", fairness_weight=0.5)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    # Initial thresholds 1/3 for every class: image 2 (0.999) passes, image 3 (top 0.367) passes too.
    conf3 = softmax(3).max().item()
    assert conf3 > 1 / 3
    unsup = ce([4, 5], [2, 0]).mean()
    probs_strong = torch.stack([softmax(4), softmax(5)])
    mean = probs_strong.mean(0)
    hist = torch.tensor([0.5, 0.5, 0.0])  # strong argmax: code 4 -> class 2, code 5 -> class 1
    assert probs_strong.argmax(1).tolist() == [2, 1]
    scaled = mean * torch.tensor([0.0, 2.0, 2.0])  # 1/h, 0 for the empty class
    scaled = scaled / scaled.sum()
    fair = (torch.full((3,), 1 / 3) * torch.log(scaled + 1e-12)).sum()  # p̃ / h̃ uniform at the start
    assert out.metrics["fairness_loss"].item() == pytest.approx(fair.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + unsup + 0.5 * fair).item(), rel=1e-5)


def test_softmatch_weights_below_the_mean_confidence_and_keeps_the_unaligned_pseudo_label():
    method = build("softmatch")
    with torch.no_grad():  # a state where image 3 is below the mean confidence
        method.gaussian.mean.fill_(0.6)
        method.gaussian.variance.fill_(0.04)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    # Uniform alignment with a uniform running mean changes nothing at the first step.
    conf3 = softmax(3).max().item()
    w3 = math.exp(-(conf3 - 0.6) ** 2 / (2 * 0.04 / 4))
    unsup = (ce([4], [2]).sum() + w3 * ce([5], [0]).sum()) / 2
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert out.metrics["mask_rate"].item() == pytest.approx((1 + w3) / 2, rel=1e-5)


def test_adamatch_threshold_is_relative_to_the_labeled_confidence():
    method = build("adamatch", confidence_threshold=0.9)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    threshold = 0.9 * (softmax(0).max() + softmax(1).max()) / 2
    assert out.metrics["threshold"].item() == pytest.approx(threshold.item(), rel=1e-6)
    # The alignment target starts uniform like the running mean: probabilities unchanged; only image 2 passes.
    assert softmax(3).max() < threshold < softmax(2).max()
    assert out.metrics["unsup_loss"].item() == pytest.approx((ce([4], [2]).sum() / 2).item(), rel=1e-5)
    method.after_step(StubModel(), 0, [out])
    labeled_mean = torch.stack([softmax(0), softmax(1)]).mean(0)
    expected = 0.999 * torch.full((3,), 1 / 3) + 0.001 * labeled_mean
    assert method.alignment.target.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_uda_trains_the_strong_view_on_sharpened_soft_targets():
    method = build("uda", confidence_threshold=0.8, temperature=0.4)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    target = torch.softmax(TABLE[2] / 0.4, dim=0)  # sharpening = softmax(logits / T); image 3 is masked
    unsup = -(target * F.log_softmax(TABLE[4], dim=0)).sum() / 2
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)


def test_uda_tsa_drops_labeled_images_predicted_above_the_annealed_threshold():
    method = build("uda", tsa_schedule="linear", max_steps=100)
    batch = fixmatch_batch()
    # At step 0, η = 1/3: label 0 of code 0 has p 0.79 (dropped), label 1 of code 1 has p 0.53 (dropped).
    out = method.training_step(StubModel(), batch, 0)
    assert out.metrics["sup_loss"].item() == 0.0
    out = method.training_step(StubModel(), batch, 100)  # η = 1: every labeled image counts
    assert out.metrics["sup_loss"].item() == pytest.approx(ce([0, 1], LABELS).mean().item(), rel=1e-6)


def test_every_registered_method_has_a_view_test():
    # A new method must come with a test here that pins its views.
    tested = {"supervised", "fixmatch", "pseudolabel", "simclr", "byol", "selfsup",
              "flexmatch", "freematch", "softmatch", "adamatch", "uda",
              "simmatch", "comatch",  # tests/test_methods_contrastive.py
              "dash", "pimodel", "meanteacher", "vat",  # tests/test_methods_consistency.py
              "mixmatch", "remixmatch",  # tests/test_methods_mixing.py
              "crmatch"}  # tests/test_methods_crmatch.py
    assert set(METHODS.names()) <= tested, set(METHODS.names()) - tested


# --------------------------------------------------------------------------- they learn


LEARN = ["debug=smoke", "trainer.max_steps=30", "trainer.eval_every=30", "trainer.checkpoint_every=30",
         "trainer.batch_size=16", "dataset.num_validation=0"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "pseudolabel", "fixmatch", "simclr", "byol", "flexmatch",
                                    "freematch", "softmatch", "adamatch", "uda", "simmatch", "comatch", "dash",
                                    "pimodel", "meanteacher", "vat", "mixmatch", "remixmatch", "crmatch"])
def test_each_method_beats_chance(method, tmp_path):
    # synthetic: 4 classes (chance 25 %), 16 labels; 30 steps give 66-99 % on this machine.
    extra = [] if method in ("supervised", "simclr", "byol") else ["method.unlabeled_ratio=2"]
    if method == "dash":  # its unlabeled loss starts after the supervised warm-up
        extra += ["method.warmup_steps=10", "method.threshold_update_steps=5"]
    if method == "mixmatch":  # λ_u 100 is meant to ramp over ~400k steps: ramped over 12, SGD diverges
        extra.append("method.unlabeled_weight=10")
    summary = trainer_for(LEARN + [f"method={method}", *extra], tmp_path).fit()
    assert summary["status"] == "completed"
    assert summary["final"]["test/accuracy"] > 0.5, summary["final"]


# --------------------------------------------------------------------------- resume exactness

ADAPTIVE = ["fixmatch", "flexmatch", "freematch", "softmatch", "adamatch", "uda", "simmatch", "comatch", "dash",
            "mixmatch", "remixmatch", "crmatch"]
# Π-model, Mean Teacher and VAT keep no state beyond the weights and the EMA: tests/test_methods_consistency.py
# Methods with no running statistics: what must survive the checkpoint is their random draws (MixUp's),
# which only the model's weights show.
STATELESS = {"mixmatch"}


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_state_survives_a_checkpoint_exactly(method, tmp_path):
    # Three steps, a checkpoint, three more from it: model and method state equal six straight steps.
    overrides = ["debug=smoke", f"method={method}", "method.unlabeled_ratio=1", "trainer.deterministic=true",
                 "trainer.batch_size=8", "trainer.num_threads=1"]
    if method in ("fixmatch", "uda"):  # their state: the alignment's running mean
        overrides.append("method.distribution_alignment=true")
    if method == "dash":  # the labeled-loss EMA moves in the warm-up, the threshold at each update after it
        overrides += ["method.warmup_steps=2", "method.threshold_update_steps=2"]
    if method == "flexmatch":  # a random network's images rarely reach 0.95 in six steps: nothing claimed
        overrides.append("method.confidence_threshold=0.3")
    if method in ("simmatch", "comatch"):  # use the bank / queue from step 2 on, across the checkpoint
        overrides.append("method.warmup_steps=2")
    for sub in "abcd":
        (tmp_path / sub).mkdir()
    straight = trainer_for(overrides, tmp_path / "a")
    for step in range(6):
        straight.train_step(step)
    first = trainer_for(overrides, tmp_path / "b")
    for step in range(3):
        first.train_step(step)
    state = first.state_dict()
    resumed = trainer_for(overrides, tmp_path / "c")
    resumed.load_state_dict(state)
    for step in range(3, 6):
        resumed.train_step(step)
    expected, got = straight.method.state_dict(), resumed.method.state_dict()
    assert expected.keys() == got.keys() and (len(expected) > 0) != (method in STATELESS)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # The state moved: a test that never updates it would pass trivially.
    fresh = trainer_for(overrides, tmp_path / "d")
    if method in STATELESS:
        moved = zip(fresh.model.state_dict().values(), resumed.model.state_dict().values())
        assert any(not torch.equal(a, b) for a, b in moved)
    else:
        assert any(not torch.equal(fresh.method.state_dict()[k], got[k]) for k in got)

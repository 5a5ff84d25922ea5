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


def test_every_registered_method_has_a_view_test():
    # A new method must come with a test here that pins its views.
    tested = {"supervised", "fixmatch", "pseudolabel", "simclr", "byol", "selfsup"}
    assert set(METHODS.names()) <= tested, set(METHODS.names()) - tested


# --------------------------------------------------------------------------- they learn


LEARN = ["debug=smoke", "trainer.max_steps=30", "trainer.eval_every=30", "trainer.checkpoint_every=30",
         "trainer.batch_size=16", "dataset.num_validation=0"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "pseudolabel", "fixmatch", "simclr", "byol"])
def test_each_method_beats_chance(method, tmp_path):
    # synthetic: 4 classes (chance 25 %), 16 labels; 30 steps give 66-99 % on this machine.
    extra = ["method.unlabeled_ratio=2"] if method in ("fixmatch", "pseudolabel") else []
    summary = trainer_for(LEARN + [f"method={method}", *extra], tmp_path).fit()
    assert summary["status"] == "completed"
    assert summary["final"]["test/accuracy"] > 0.5, summary["final"]

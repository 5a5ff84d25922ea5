"""CRMatch: its FeatDistLoss and rotation pieces on hand-computed tensors, and which view gets which target.

The stub model of tests/test_methods.py maps an image whose pixels all equal a code to the logits TABLE[code]
and the features one_hot(code); the ds head's weights are set by hand below, so every number is computable.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_cli.core.errors import UserError
from ssl_cli.data.batches import Batch
from ssl_cli.losses.consistency import feature_distance
from ssl_cli.losses.selfsup import rotation_prediction
from ssl_cli.methods import METHODS
from ssl_cli.models.heads import rotation_head
from ssl_cli.transforms.ops import all_quarter_turns, rotate_quarter_turns
from test_methods import LABELS, TABLE, StubModel, build, ce, fixmatch_batch, info

# --------------------------------------------------------------------------- the shared pieces


def test_feature_distance_is_the_masked_hinge_on_the_cosine_as_usb_computes_it():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, -1.0], [1.0, 1.0]])
    mask = torch.tensor([1.0, 1.0, 0.5])
    # cosines 1, -1 (clamped to 0) and 1/√2 (half weight), averaged over all three rows.
    expected = (1.0 + 0.0 + 0.5 / math.sqrt(2)) / 3
    assert feature_distance(a, b, mask).item() == pytest.approx(expected, rel=1e-6)
    usb = (F.cosine_embedding_loss(a, b, -torch.ones(3), reduction="none") * mask).mean()
    assert feature_distance(a, b, mask).item() == pytest.approx(usb.item(), rel=1e-6)


def test_feature_distance_pushes_both_views_apart():
    a = torch.tensor([[1.0, 0.2]], requires_grad=True)
    b = torch.tensor([[1.0, -0.1]], requires_grad=True)
    feature_distance(a, b, torch.ones(1)).backward()
    step = 0.1
    after = F.cosine_similarity(a - step * a.grad, b - step * b.grad)
    assert after.item() < F.cosine_similarity(a, b).item()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # no side is detached


def test_rotation_prediction_is_the_cross_entropy_to_the_turns_and_its_accuracy():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    loss, accuracy = rotation_prediction(logits, torch.tensor([0, 3]))
    expected = ((math.log(math.exp(2) + 3) - 2) + (math.log(3 + math.e) - 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and accuracy.item() == 1.0
    assert rotation_prediction(logits, torch.tensor([1, 3]))[1].item() == 0.5


def test_all_quarter_turns_shows_every_image_at_0_90_180_270_degrees_in_usb_order():
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    images = torch.cat([first, first + 10])
    turned, turns = all_quarter_turns(images)
    assert turns.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # Counter-clockwise: a quarter turn sends the top-right pixel to the top-left.
    assert turned[2, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert turned[4, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]
    assert turned[6, 0].tolist() == [[3.0, 1.0], [4.0, 2.0]]
    assert torch.equal(turned[:2], images) and torch.equal(turned[3], images[1].rot90(1, dims=(1, 2)))
    # The same turns as ReMixMatch's per-image rotation.
    assert torch.equal(turned, rotate_quarter_turns(images.repeat(4, 1, 1, 1), turns))


def test_rotation_head_is_linear_for_remixmatch_and_an_mlp_for_crmatch():
    assert isinstance(rotation_head(6), nn.Linear) and rotation_head(6).out_features == 4
    mlp = rotation_head(6, hidden_dim=6)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear] and mlp[-1].out_features == 4


# --------------------------------------------------------------------------- the views


def crmatch(**options):
    method = build("crmatch", **options)
    if hasattr(method, "ds_head"):
        # ds features by code (columns): weak 2 -> (1, 0), weak 3 -> (0, 1), strong 4 -> (1, 1), strong 5 ->
        # (0, 1), labeled 0 and 1 -> (0, 0, 1): a swap with the labeled rows would give other cosines.
        weight = torch.zeros(6, 6)
        weight[2, 0] = weight[2, 1] = weight[0, 2] = weight[0, 4] = weight[1, 4] = weight[1, 3] = weight[1, 5] = 1.0
        with torch.no_grad():
            method.ds_head.weight.copy_(weight)
            method.ds_head.bias.zero_()
    return method


def test_crmatch_pseudo_labels_from_the_weak_view_push_its_ds_features_from_the_strong_view_and_rotate_weak():
    method = crmatch()
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    sup = ce([0, 1], LABELS).mean()
    unsup = ce([4], [2]).sum() / 2  # image 2 is confident in class 2; image 3 is masked out
    # Image 2: cos((1, 1), (1, 0)) = 1/√2; image 3 (cos((0, 1), (0, 1)) = 1) is masked out; mean over 2.
    distance = (1 / math.sqrt(2)) / 2
    # The rotation head sees the two weak views (codes 2, 3) in all four turns.
    features = F.one_hot(torch.tensor([2, 3] * 4), 6).float()
    rotation = F.cross_entropy(method.rotation_head(features), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-6)
    assert out.metrics["feature_distance_loss"].item() == pytest.approx(distance, rel=1e-6)
    assert out.metrics["rotation_loss"].item() == pytest.approx(rotation.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((sup + unsup + distance + rotation).item(), rel=1e-6)
    assert out.metrics["mask_rate"].item() == 0.5


def test_crmatch_weights_scale_their_terms_and_zero_drops_the_head():
    batch = fixmatch_batch()
    full = crmatch(feature_distance_weight=0.5, rotation_weight=2.0)
    out = full.training_step(StubModel(), batch, 0)
    m = out.metrics
    expected = m["sup_loss"] + m["unsup_loss"] + 0.5 * m["feature_distance_loss"] + 2.0 * m["rotation_loss"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    bare = crmatch(feature_distance_weight=0.0, rotation_weight=0.0)
    out = bare.training_step(StubModel(), batch, 0)
    assert len(bare.state_dict()) == 0 and "rotation_loss" not in out.metrics
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + ce([4], [2]).sum() / 2).item(), rel=1e-6)


def test_crmatch_turns_the_first_labeled_batch_size_weak_views_only():
    method = build("crmatch")
    weak = torch.arange(4 * 4, dtype=torch.float32).view(4, 1, 2, 2)
    batch = Batch(labeled=(weak[:2] + 100,), labels=LABELS, unlabeled=(weak, weak + 50))
    context = {"rows": (2, 4)}
    (turned,) = method.extra_inputs(batch, context)
    assert turned.shape[0] == 8 and context["rotation_targets"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        for i in range(2):
            assert torch.equal(turned[2 * k + i], torch.rot90(weak[i], k, dims=(1, 2)))
    assert build("crmatch", rotation_weight=0.0).extra_inputs(batch, {"rows": (2, 4)}) == ()


def test_crmatch_needs_square_images_for_its_rotation_loss():
    with pytest.raises(UserError, match="square"):
        METHODS.get("crmatch")(METHODS.options("crmatch")(), replace(info(), image_size=(2, 3)), 10)
    METHODS.get("crmatch")(METHODS.options("crmatch")(rotation_weight=0.0), replace(info(), image_size=(2, 3)), 10)


def test_crmatch_defaults_are_usbs():
    o = METHODS.options("crmatch")()
    assert (o.confidence_threshold, o.unlabeled_weight, o.unlabeled_ratio) == (0.95, 1.0, 7)
    assert (o.feature_distance_weight, o.rotation_weight) == (1.0, 1.0)

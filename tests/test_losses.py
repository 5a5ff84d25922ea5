"""Each loss against values worked out by hand."""

import math

import pytest
import torch

from ssl_cli.losses.classification import (cross_entropy, linear_rampup, masked_cross_entropy, one_hot,
                                           pseudo_label_accuracy)
from ssl_cli.losses.pseudo_labels import confident_pseudo_labels


def test_cross_entropy_hand_value():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 1])
    # row 0: -log(1/2); row 1: p(class 1) = 1 / (3 + 1) -> -log(1/4)
    expected = (math.log(2) + math.log(4)) / 2
    assert cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_confident_pseudo_labels_threshold_and_argmax():
    logits = torch.tensor([[math.log(19.0), 0.0], [0.0, 0.0], [0.0, math.log(99.0)]])
    # softmax maxima: 0.95, 0.5, 0.99
    labels, mask = confident_pseudo_labels(logits, 0.95)
    assert labels.tolist() == [0, 0, 1]
    assert mask.tolist() == [1.0, 0.0, 1.0]  # 0.95 counts: the threshold is inclusive
    _, mask_strict = confident_pseudo_labels(logits, 0.96)
    assert mask_strict.tolist() == [0.0, 0.0, 1.0]


def test_pseudo_labels_carry_no_gradient():
    logits = torch.randn(5, 3, requires_grad=True)
    labels, mask = confident_pseudo_labels(logits, 0.0)
    assert not labels.requires_grad and not mask.requires_grad


def test_masked_cross_entropy_averages_over_all_rows():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 1])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # two kept rows of loss log(2) each, divided by all 4 rows (FixMatch's normalisation)
    assert masked_cross_entropy(logits, targets, mask).item() == pytest.approx(2 * math.log(2) / 4, rel=1e-6)


def test_masked_cross_entropy_empty_batch_is_zero():
    assert masked_cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0)).item() == 0.0


def test_fixmatch_unlabeled_loss_by_hand():
    """Weak view confident on class 1 (p = 0.99); strong view logits [0, log 3] -> loss -log(3/4) over 2 rows."""
    weak = torch.tensor([[0.0, math.log(99.0)], [0.0, 0.0]])
    strong = torch.tensor([[0.0, math.log(3.0)], [5.0, -5.0]])
    labels, mask = confident_pseudo_labels(weak, 0.95)
    loss = masked_cross_entropy(strong, labels, mask)
    assert loss.item() == pytest.approx(-math.log(0.75) / 2, rel=1e-6)


@pytest.mark.parametrize("step,steps,expected", [(0, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (50, 10, 1.0), (3, 0, 1.0)])
def test_linear_rampup(step, steps, expected):
    assert linear_rampup(step, steps) == pytest.approx(expected)


def test_pseudo_label_accuracy_counts_only_confident_known():
    pseudo = torch.tensor([0, 1, 2, 1])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    truth = torch.tensor([0, 2, 2, -1])  # last one unknown
    correct, counted = pseudo_label_accuracy(pseudo, mask, truth)
    assert (correct.item(), counted.item()) == (1.0, 2.0)


def test_one_hot_rows_are_float_and_equal_torch_one_hot():
    labels = torch.tensor([2, 0, 1, 2])
    rows = one_hot(labels, 4)
    assert rows.dtype == torch.float32 and torch.equal(rows, torch.nn.functional.one_hot(labels, 4).float())

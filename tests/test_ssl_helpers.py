"""The shared SSL pieces against hand-computed values, and the method contract's state and batch plumbing."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import trainer_for
from ssl_cli.losses.classification import cross_entropy, masked_cross_entropy
from ssl_cli.losses.pseudo_labels import (ClassWiseThreshold, DistributionAlignment, SelfAdaptiveThreshold,
                                          TruncatedGaussianWeight, class_histogram, fairness_loss, mixup,
                                          relative_threshold, sharpen, tsa_threshold)
from ssl_cli.methods.base import Method, StepOutput


def test_soft_target_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax [0.25, 0.75]
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(expected)
    # One-hot soft targets are the hard-target loss; weights are applied per row, mean over all rows.
    assert cross_entropy(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-math.log(0.75))
    weighted = masked_cross_entropy(logits.repeat(2, 1), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1.0, 0.5]))
    assert weighted.item() == pytest.approx((-math.log(0.75) - 0.5 * math.log(0.25)) / 2)


def test_sharpen():
    out = sharpen(torch.tensor([[0.6, 0.4]]), 0.5)
    assert out.tolist()[0] == pytest.approx([0.36 / 0.52, 0.16 / 0.52])


def test_class_wise_threshold_after_two_updates():
    t = ClassWiseThreshold(num_unlabeled=4, num_classes=2, threshold=0.8, warmup=True)
    assert t.thresholds().tolist() == [0.0, 0.0]  # nothing claimed yet: FlexMatch starts with low thresholds
    t.update(torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.85, 0.15]]), torch.tensor([0, 1, 2]))
    assert t.selected_label.tolist() == [0, -1, 0, -1]
    # Class 0 claimed 2, class 1 none, 2 unclaimed: effects 2/2 and 0/2; thresholds 0.8 * x / (2 - x).
    assert t.thresholds().tolist() == pytest.approx([0.8, 0.0])
    t.update(torch.tensor([[0.1, 0.9]]), torch.tensor([3]))
    assert t.selected_label.tolist() == [0, -1, 0, 1]
    assert t.thresholds().tolist() == pytest.approx([0.8, 0.8 * 0.5 / 1.5])
    assert t.mask(torch.tensor([[0.3, 0.7], [0.75, 0.25]])).tolist() == [1.0, 0.0]


def test_self_adaptive_threshold_after_two_updates():
    t = SelfAdaptiveThreshold(num_classes=2, momentum=0.9)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])  # mean confidence 0.75, mean probabilities [0.75, 0.25]
    t.update(probs)
    assert t.global_threshold.item() == pytest.approx(0.525) and t.class_probs.tolist() == pytest.approx([0.525, 0.475])
    t.update(probs)
    assert t.global_threshold.item() == pytest.approx(0.5475)
    assert t.thresholds().tolist() == pytest.approx([0.5475, 0.4525])


def test_distribution_alignment():
    da = DistributionAlignment(target=[1.0, 1.0], momentum=0.0)  # target normalised to uniform
    da.update(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))  # the model predicts [0.8, 0.2] on average
    assert da.model_probs.tolist() == pytest.approx([0.8, 0.2])
    assert da.align(torch.tensor([[0.8, 0.2]])).tolist()[0] == pytest.approx([0.5, 0.5])


def test_mixup_mixes_inputs_and_targets_with_the_same_partner_and_weight():
    torch.manual_seed(0)
    targets = torch.eye(4)
    mixed, mixed_targets, lam = mixup(targets.clone(), targets, alpha=0.75, generator=torch.Generator().manual_seed(1))
    assert 0.5 <= lam.item() <= 1.0  # MixMatch's max(λ, 1 - λ)
    assert torch.allclose(mixed, mixed_targets)
    # Row i is lam * e_i + (1 - lam) * e_partner: its own share is at least lam, the rest on one partner.
    assert bool((mixed.diagonal() >= lam - 1e-6).all())
    assert torch.allclose(mixed.sum(1), torch.ones(4)) and bool(((mixed > 0).sum(1) <= 2).all())


def test_truncated_gaussian_weight_and_its_ema():
    g = TruncatedGaussianWeight(num_classes=2, momentum=0.5, n_sigma=2.0)  # μ = 0.5, σ² = 1 at the start
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])  # confidences 0.9, 0.6, 0.7
    assert g.weight(probs).tolist() == [1.0, 1.0, 1.0]  # all at or above the mean
    g.update(probs)
    assert g.mean.item() == pytest.approx(0.5 * 0.5 + 0.5 * 0.7333333)
    var = torch.tensor([0.9, 0.6, 0.7]).var(unbiased=True).item()
    assert g.variance.item() == pytest.approx(0.5 + 0.5 * var)
    below = torch.tensor([[0.55, 0.45]])  # confidence 0.55 < μ: exp(-(0.55 - μ)² / (2 σ² / 4))
    expected = math.exp(-(0.55 - g.mean.item()) ** 2 / (2 * g.variance.item() / 4))
    assert g.weight(below).item() == pytest.approx(expected)


def test_relative_threshold_and_tsa():
    assert relative_threshold(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), 0.95).item() == pytest.approx(0.95 * 0.7)
    assert tsa_threshold(50, 100, "none", 4) == 1.0
    assert tsa_threshold(50, 100, "linear", 4) == pytest.approx(0.5 * 0.75 + 0.25)
    assert tsa_threshold(100, 100, "exp", 4) == pytest.approx(1.0)
    assert tsa_threshold(0, 100, "log", 4) == pytest.approx(0.25)


def test_fairness_loss_by_hand():
    probs_strong = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    mask = torch.tensor([1.0, 0.0, 1.0])  # the second image is masked out
    class_probs, label_hist = torch.tensor([0.6, 0.4]), torch.tensor([0.5, 0.5])
    # masked mean p̄ [0.45, 0.55]; its argmax histogram h̄ [0.5, 0.5], so p̄/h̄ normalised stays [0.45, 0.55];
    # the target p̃/h̃ normalised is [0.6, 0.4]. L_f = Σ target log(p̄/h̄ normalised).
    expected = 0.6 * math.log(0.45) + 0.4 * math.log(0.55)
    assert fairness_loss(probs_strong, mask, class_probs, label_hist).item() == pytest.approx(expected, rel=1e-5)
    assert fairness_loss(probs_strong, torch.zeros(3), class_probs, label_hist).item() == 0.0  # nothing passes
    assert class_histogram(torch.tensor([0, 1, 1]), 3).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])


class Counting(Method):
    """A method that keeps state: a buffer counting optimiser steps and the micro-batches each one saw."""

    name = "counting"
    unlabeled_views = ("weak",)

    def __init__(self, *args):
        super().__init__(*args)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(self.data.num_unlabeled))

    def training_step(self, model, batch, step):
        logits = model(batch.labeled[0]).logits
        return StepOutput(logits.float().logsumexp(1).mean() * 0, {}, {"index": batch.unlabeled_index})

    def after_step(self, model, step, outputs):
        self.steps += 1
        self.micro_batches += len(outputs)
        for out in outputs:
            self.seen[out.state["index"]] += 1


def counting_trainer(run_dir):
    trainer = trainer_for(["debug=smoke", "method=supervised", "trainer.grad_accumulation=2"], run_dir)
    trainer.method = Counting(trainer.method.options, trainer.data.info(), 6)
    return trainer


def test_method_state_moves_once_per_optimiser_step_and_is_checkpointed(tmp_path):
    trainer = counting_trainer(tmp_path)
    for step in range(3):
        trainer.train_step(step)
    assert trainer.method.steps.item() == 3 and trainer.method.micro_batches.item() == 6
    state = trainer.state_dict()
    (tmp_path / "b").mkdir()
    fresh = counting_trainer(tmp_path / "b")
    fresh.load_state_dict(state)
    assert fresh.method.steps.item() == 3 and torch.equal(fresh.method.seen, trainer.method.seen)


def test_batches_carry_the_pool_positions_of_their_images(tmp_path):
    trainer = trainer_for(["debug=smoke", "method=fixmatch"], tmp_path)
    batch, data = trainer.batches(0), trainer.data
    assert torch.equal(batch.labels, data.labels[data.labeled[batch.labeled_index]])
    assert torch.equal(batch.unlabeled_targets, data.labels[data.unlabeled[batch.unlabeled_index]])
    info = data.info()
    assert info.num_unlabeled == len(data.unlabeled) and sum(info.class_prior) == pytest.approx(1.0)
    counts = torch.bincount(data.labels[data.labeled], minlength=info.num_classes).double()
    assert list(info.class_prior) == pytest.approx((counts / counts.sum()).tolist())

"""SimMatch and CoMatch: their memories (a labeled bank, a FIFO queue) after hand-made updates, their
pseudo-labels on hand examples, and which view gives which target (the stub model of test_methods.py).

Every expected number is written out from the definitions (USB's code), not taken from the helpers
under test, except where a test pins only how a method wires already-tested helpers together.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_methods import LABELS, TABLE, StubModel, build, ce, fixmatch_batch, images
from ssl_cli.core.errors import UserError
from ssl_cli.losses.memory import (FIFOQueue, LabeledBank, QueueAlignment, graph_contrastive_loss, memory_smoothed,
                                   pseudo_label_graph, simmatch_pseudo_labels)
from ssl_cli.methods.simmatch import embed


def close(a, b, tol=1e-6) -> bool:
    """Element-wise |a - b| <= tol, for nested lists and tensors (pytest.approx takes flat ones only)."""
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=tol, rtol=0)


def unit(*v):
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


# --------------------------------------------------------------------------- the shared memories


def test_fifo_queue_wraps_around_and_counts_what_it_holds():
    q = FIFOQueue(3, {"a": 1, "b": 2})
    q.push(a=torch.tensor([[1.0], [2.0]]), b=torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    assert q.a.flatten().tolist() == [1, 2, 0] and (q.ptr.item(), q.filled.item()) == (2, 2)
    assert q.valid().tolist() == [True, True, False]
    q.push(a=torch.tensor([[3.0], [4.0]]), b=torch.tensor([[3.0, 3.0], [4.0, 4.0]]))
    # Row 2 takes 3, then the ring wraps: 4 overwrites the oldest row (0).
    assert q.a.flatten().tolist() == [4, 2, 3] and q.b[:, 0].tolist() == [4, 2, 3]
    assert (q.ptr.item(), q.filled.item()) == (1, 3)
    with pytest.raises(ValueError, match="4 rows into a queue of 3"):
        q.push(a=torch.zeros(4, 1), b=torch.zeros(4, 2))


def test_labeled_bank_moves_each_entry_by_its_momentum_after_two_updates():
    bank = LabeledBank(3, 2, momentum=0.7)
    bank.embeddings.copy_(torch.stack([unit(1, 0), unit(0, 1), unit(1, 1)]))
    # Image 0 drawn twice in one step: its entry moves towards the mean of its two embeddings.
    bank.update(torch.stack([unit(0, 1), unit(1, 1)]), torch.tensor([2, 2]), torch.tensor([0, 0]))
    s = 1 / math.sqrt(2)
    row0 = unit(0.7 * 1 + 0.3 * (0 + s) / 2, 0.3 * (1 + s) / 2)
    assert bank.embeddings[0].tolist() == pytest.approx(row0.tolist(), abs=1e-6)
    assert close(bank.embeddings[1:], [[0, 1], [s, s]])  # untouched
    assert bank.labels.tolist() == [2, 0, 0]
    bank.update(torch.stack([unit(1, 0), unit(-1, 0)]), torch.tensor([1, 0]), torch.tensor([2, 1]))
    assert bank.embeddings[0].tolist() == pytest.approx(row0.tolist(), abs=1e-6)
    assert bank.embeddings[1].tolist() == pytest.approx(unit(-0.3, 0.7).tolist(), abs=1e-6)
    assert bank.embeddings[2].tolist() == pytest.approx(unit(0.7 * s + 0.3, 0.7 * s).tolist(), abs=1e-6)
    assert bank.labels.tolist() == [2, 0, 1]


def test_queue_alignment_divides_by_the_mean_of_the_queued_batch_means():
    align = QueueAlignment(2, length=2)
    p = torch.tensor([[0.8, 0.2]])
    assert close(align.align(p), p)  # empty: uniform target, no change
    align.update(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))  # batch mean (0.7, 0.3)
    align.update(torch.tensor([[0.5, 0.5]]))
    mean = torch.tensor([0.6, 0.4])  # of the two queued means
    expected = torch.tensor([0.8 / 0.6, 0.2 / 0.4])
    assert align.model_probs().tolist() == pytest.approx(mean.tolist(), rel=1e-6)
    assert align.align(p)[0].tolist() == pytest.approx((expected / expected.sum()).tolist(), rel=1e-4)
    align.update(torch.tensor([[1.0, 0.0]]))  # the oldest mean (0.7, 0.3) leaves the queue of 2
    assert align.model_probs().tolist() == pytest.approx([0.75, 0.25], rel=1e-6)


# --------------------------------------------------------------------------- SimMatch


def test_simmatch_unfolds_and_aggregates_a_hand_example():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    similarity = torch.tensor([[0.5, 0.3, 0.2]])  # to three bank entries labeled 0, 1, 1
    instance, label = simmatch_pseudo_labels(probs, similarity, torch.tensor([0, 1, 1]), alpha=0.9)
    # Unfolding: 0.5·0.6, 0.3·0.3, 0.2·0.3 = 0.30, 0.09, 0.06, over their sum 0.45.
    assert instance[0].tolist() == pytest.approx([0.30 / 0.45, 0.09 / 0.45, 0.06 / 0.45], rel=1e-6)
    # Aggregation: per class 0.5, 0.5, 0; mixed 0.9 p + 0.1 agg.
    assert label[0].tolist() == pytest.approx([0.59, 0.32, 0.09], rel=1e-6)


def simmatch_batch():
    batch = fixmatch_batch()
    batch.labeled_index = torch.tensor([1, 0])  # labeled image code 0 is bank entry 1, code 1 entry 0
    return batch


def test_simmatch_targets_come_from_the_weak_view_and_the_bank_and_train_the_strong_view():
    torch.manual_seed(0)  # the projection head
    method = build("simmatch", warmup_steps=0, confidence_threshold=0.8, temperature=0.5)
    model = StubModel()
    with torch.no_grad():  # a bank whose labels make the propagation visible
        method.bank.labels.copy_(torch.tensor([2, 0]))
    out = method.training_step(model, simmatch_batch(), 0)
    bank = method.bank.embeddings
    z = embed(method.projector, F.one_hot(torch.arange(6), 6).float())  # the embedding of each image code
    weak_probs = torch.stack([torch.softmax(TABLE[2], 0), torch.softmax(TABLE[3], 0)])  # alignment: no change yet
    similarity = torch.softmax(z[[2, 3]] @ bank.t() / 0.5, dim=1)
    instance = similarity * weak_probs[:, [2, 0]]  # each entry times the probability of its label
    instance = instance / instance.sum(1, keepdim=True)
    aggregated = torch.stack([similarity[:, 1], torch.zeros(2), similarity[:, 0]], dim=1)
    targets = 0.9 * weak_probs + 0.1 * aggregated
    mask = (targets.max(1).values >= 0.8).float()
    assert mask.tolist() == [1.0, 0.0]
    unsup = (-(targets * F.log_softmax(TABLE[[4, 5]], 1)).sum(1) * mask).mean()
    in_loss = -(instance * F.log_softmax(z[[4, 5]] @ bank.t() / 0.5, dim=1)).sum(1).mean()
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert out.metrics["in_loss"].item() == pytest.approx(in_loss.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + unsup + in_loss).item(), rel=1e-5)
    # The student is the strong view: the weak view's own similarities would give another in-bank loss.
    swapped = -(instance * F.log_softmax(z[[2, 3]] @ bank.t() / 0.5, dim=1)).sum(1).mean()
    assert not math.isclose(in_loss.item(), swapped.item(), rel_tol=1e-3)


def test_simmatch_warmup_uses_the_aligned_prediction_and_no_in_bank_loss():
    method = build("simmatch", warmup_steps=5, confidence_threshold=0.95)
    out = method.training_step(StubModel(), simmatch_batch(), 4)
    assert out.metrics["in_loss"].item() == 0.0
    soft = -(torch.softmax(TABLE[2], 0) * F.log_softmax(TABLE[4], 0)).sum() / 2  # only image 2 passes
    assert out.metrics["unsup_loss"].item() == pytest.approx(soft.item(), rel=1e-5)


def test_simmatch_after_step_writes_the_labeled_embeddings_at_their_bank_index():
    torch.manual_seed(0)
    method = build("simmatch", bank_momentum=0.7)
    start = method.bank.embeddings.clone()
    out = method.training_step(StubModel(), simmatch_batch(), 0)
    method.after_step(StubModel(), 0, [out])
    z = embed(method.projector, F.one_hot(torch.tensor([0, 1]), 6).float()).detach()
    expected = F.normalize(0.7 * start[[1, 0]] + 0.3 * z, dim=1)  # code 0 -> entry 1, code 1 -> entry 0
    assert close(method.bank.embeddings[[1, 0]], expected)
    assert method.bank.labels.tolist() == [1, 0]  # entry 0 holds code 1's label 1
    assert method.alignment.history.filled.item() == 1


# --------------------------------------------------------------------------- CoMatch


def test_comatch_graph_keeps_self_loops_and_edges_above_the_threshold():
    probs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    graph = pseudo_label_graph(probs, 0.8)
    # q qᵀ: 0·1 = 0.9 (kept), 0·2 = 0, 1·2 = 0.1 (cut); diagonal 1; rows normalised.
    assert close(graph, [[1 / 1.9, 0.9 / 1.9, 0], [0.9 / 1.9, 1 / 1.9, 0], [0, 0, 1]])


def test_comatch_contrastive_loss_on_a_hand_example():
    z0, z1 = torch.stack([unit(1, 0), unit(0, 1)]), torch.stack([unit(1, 0), unit(1, 1)])
    graph = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    s = 1 / math.sqrt(2)
    # Row 0 similarities (1, s) / 0.5, row 1 (0, s) / 0.5.
    log_p0 = [2 - math.log(math.exp(2) + math.exp(2 * s)), 2 * s - math.log(math.exp(2) + math.exp(2 * s))]
    log_p1 = 2 * s - math.log(1 + math.exp(2 * s))
    expected = (-(0.5 * log_p0[0] + 0.5 * log_p0[1]) - log_p1) / 2
    assert graph_contrastive_loss(z0, z1, graph, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_memory_smoothing_uses_only_the_filled_rows_of_the_queue():
    queue = FIFOQueue(3, {"feats": 2, "probs": 2})
    probs, z = torch.tensor([[0.5, 0.5]]), torch.stack([unit(1, 0)])
    assert memory_smoothed(probs, z, queue, 0.9, 1.0).tolist() == probs.tolist()  # empty: unchanged
    queue.push(feats=torch.stack([unit(1, 0), unit(0, 1)]), probs=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    w = math.e / (math.e + 1)  # similarities 1 and 0 at T = 1; the empty third row gets no weight
    expected = [0.9 * 0.5 + 0.1 * w, 0.9 * 0.5 + 0.1 * (1 - w)]
    assert memory_smoothed(probs, z, queue, 0.9, 1.0)[0].tolist() == pytest.approx(expected, rel=1e-6)


def comatch_batch():
    batch = fixmatch_batch()
    batch.unlabeled = (images(2, 3), images(4, 5), images(5, 4))  # weak, strong, second strong
    return batch


def test_comatch_targets_come_from_the_weak_view_and_the_graph_pairs_the_two_strong_views():
    torch.manual_seed(0)
    method = build("comatch", temperature=0.2, graph_threshold=0.8)
    out = method.training_step(StubModel(), comatch_batch(), 0)
    # Before warm-up ends: the targets are the weak probabilities; only image 2 (0.999) passes 0.95.
    unsup = -(torch.softmax(TABLE[2], 0) * F.log_softmax(TABLE[4], 0)).sum() / 2
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    # p2 · p3 is about 0.3 < 0.8: the graph is the identity, each strong image's positive is its own
    # second view (codes 4 <-> 5 and 5 <-> 4 here).
    z = embed(method.projector, F.one_hot(torch.arange(6), 6).float())
    logits = z[[4, 5]] @ z[[5, 4]].t() / 0.2
    contrast = -F.log_softmax(logits, 1).diagonal().mean()
    assert out.metrics["contrastive_loss"].item() == pytest.approx(contrast.item(), rel=1e-5)
    same_order = -F.log_softmax(z[[4, 5]] @ z[[4, 5]].t() / 0.2, 1).diagonal().mean()
    assert not math.isclose(contrast.item(), same_order.item(), rel_tol=1e-3)
    assert out.loss.item() == pytest.approx((ce([0, 1], LABELS).mean() + unsup + contrast).item(), rel=1e-5)


def test_comatch_queue_after_two_updates_wraps_around():
    torch.manual_seed(0)
    method = build("comatch", queue_size=5, warmup_steps=1)
    model = StubModel()
    z = embed(method.projector, F.one_hot(torch.arange(6), 6).float()).detach()
    raw = torch.stack([torch.softmax(TABLE[2], 0), torch.softmax(TABLE[3], 0)])
    one_hot = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])  # labels 0, 1
    out = method.training_step(model, comatch_batch(), 0)
    method.after_step(model, 0, [out])
    # Rows: weak images (codes 2, 3) with their probabilities, then labeled (codes 0, 1) with one-hot labels.
    assert (method.queue.ptr.item(), method.queue.filled.item()) == (4, 4)
    assert close(method.queue.feats[:4], z[[2, 3, 0, 1]])
    assert close(method.queue.probs[:4], torch.cat([raw, one_hot]))
    out = method.training_step(model, comatch_batch(), 1)
    method.after_step(model, 1, [out])
    # Four more rows into five: row 4, then rows 0-2; row 3 keeps step 0's code-1 row.
    assert (method.queue.ptr.item(), method.queue.filled.item()) == (3, 5)
    assert close(method.queue.feats, z[[3, 0, 1, 1, 2]])
    aligned = raw * (1 / 3 + 1e-6) / (raw.mean(0) + 1e-6)  # step 1 is aligned with step 0's mean
    aligned = aligned / aligned.sum(1, keepdim=True)
    expected = torch.cat([aligned[1:], one_hot, one_hot[1:], aligned[:1]])
    assert close(method.queue.probs, expected)


def test_comatch_second_view_and_queue_size_are_checked():
    assert build("comatch", contrastive_view="contrastive").unlabeled_views == ("weak", "strong", "contrastive")
    assert build("comatch").unlabeled_views == ("weak", "strong", "strong")
    with pytest.raises(UserError, match=r"method.queue_size \(3\) must hold one step's labeled and unlabeled images \(4\)"):
        build("comatch", queue_size=3).training_step(StubModel(), comatch_batch(), 0)


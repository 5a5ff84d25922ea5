"""MixMatch and ReMixMatch: the MixUp draw and its mixing, the guessed targets, which view gets which target.

The stub model of tests/test_methods.py maps an image whose pixels all equal a code to TABLE[code]; a mixed
image's pixels are λ·code_i + (1 - λ)·code_partner, which the stub rounds to a code again, so with λ and the
partners fixed by hand every number below can be computed from TABLE.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import trainer_for
from ssl_cli.core.errors import UserError
from ssl_cli.data.batches import Batch
from ssl_cli.losses.pseudo_labels import mix_rows, mixup_draw, sharpen
from ssl_cli.methods import METHODS
from ssl_cli.methods import mixmatch as mixmatch_module
from ssl_cli.transforms.ops import rotate_quarter_turns
from test_methods import LABELS, TABLE, TARGETS, StubModel, build, fixmatch_batch, images, info


def softmax(code):
    return torch.softmax(TABLE[code], dim=0)


def fixed_draw(lam, partners):
    """A stand-in for mixup_draw that returns a hand-chosen λ and partners."""
    return lambda n, alpha, generator=None, device=None: (torch.tensor(lam), torch.tensor(partners))


# --------------------------------------------------------------------------- the MixUp helpers


def test_mix_rows_mixes_each_row_with_its_partner_by_lambda():
    inputs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    mixed, mixed_targets = mix_rows(inputs, targets, torch.tensor(0.75), torch.tensor([2, 0, 1]))
    # Row 0 with row 2, row 1 with row 0, row 2 with row 1, each 3/4 its own.
    assert mixed.tolist() == [[1.75, 1.0], [0.25, 1.5], [3.0, 3.5]]
    assert mixed_targets.tolist() == [[0.875, 0.125], [0.25, 0.75], [0.375, 0.625]]


def test_mixup_draw_keeps_lambda_at_least_half_and_comes_from_the_generator_alone():
    draws = [mixup_draw(5, 0.5, torch.Generator().manual_seed(seed)) for seed in range(200)]
    lams = torch.stack([lam for lam, _ in draws])
    assert bool((lams >= 0.5).all()) and bool((lams <= 1.0).all())
    assert all(sorted(p.tolist()) == [0, 1, 2, 3, 4] for _, p in draws)
    torch.manual_seed(123)  # the global stream plays no part
    again = mixup_draw(5, 0.5, torch.Generator().manual_seed(7))
    torch.manual_seed(456)
    assert torch.equal(again[0], draws[7][0]) and torch.equal(again[1], draws[7][1])
    assert len({round(v, 6) for v in lams.tolist()}) > 190  # a fresh λ per seed


def test_mixup_draw_follows_the_folded_beta_distribution():
    # For α = 1, λ is uniform on [0, 1], so max(λ, 1 - λ) is uniform on [0.5, 1]: mean 0.75, variance 1/48.
    # For α = 0.5 (arcsine), E[max(λ, 1 - λ)] = 1/2 + 1/π.
    for alpha, mean in ((1.0, 0.75), (0.5, 0.5 + 1 / torch.pi)):
        gen = torch.Generator().manual_seed(0)
        lams = torch.stack([mixup_draw(2, alpha, gen)[0] for _ in range(3000)])
        assert lams.mean().item() == pytest.approx(mean, abs=0.01), alpha
    assert lams.var().item() > 0.015


# --------------------------------------------------------------------------- MixMatch


def guess_mixmatch(temperature=0.5):
    """The K = 2 weak views are codes (2, 3) and (4, 5): mean of their softmaxes, sharpened."""
    mean = torch.stack([(softmax(2) + softmax(4)) / 2, (softmax(3) + softmax(5)) / 2])
    p = mean ** (1 / temperature)
    return p / p.sum(1, keepdim=True)


def test_mixmatch_guess_is_the_sharpened_mean_of_the_two_weak_views(monkeypatch):
    monkeypatch.setattr(mixmatch_module, "mixup_draw", fixed_draw(1.0, [0, 1, 2, 3, 4, 5]))  # no mixing
    method = build("mixmatch", unlabeled_weight=100.0, warmup_fraction=0.5, max_steps=100)
    guess = guess_mixmatch()
    assert bool((guess.max(1).values > guess_mixmatch(1.0).max(1).values).all())  # T < 1: more confident
    sup = F.cross_entropy(TABLE[[0, 1]], LABELS)
    # Both views of each image are trained towards the image's one guess (eq. 4: mean over rows and classes).
    unsup = (torch.softmax(TABLE[[2, 3, 4, 5]], 1) - torch.cat([guess, guess])).pow(2).mean()
    for step, ramp in ((0, 0.0), (25, 0.5), (60, 1.0)):  # λ_u ramps over 50 of 100 steps
        out = method.training_step(StubModel(), fixmatch_batch(), step)
        assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
        assert out.metrics["unsup_weight"].item() == pytest.approx(100.0 * ramp)
        assert out.loss.item() == pytest.approx((sup + 100.0 * ramp * unsup).item(), rel=1e-5), step
    correct, counted = out.metrics["pseudo_label_acc"]  # guesses' argmax (2, 1) vs true labels (2, 0)
    assert guess.argmax(1).tolist() == [2, 1] and (correct.item(), counted.item()) == (1.0, 2.0)


def test_mixmatch_mixes_labeled_and_unlabeled_rows_with_the_drawn_partners(monkeypatch):
    # Rows: labeled codes 0, 1, then weak views 2, 3 and 4, 5; each mixed with the reversed order, λ = 3/4.
    monkeypatch.setattr(mixmatch_module, "mixup_draw", fixed_draw(0.75, [5, 4, 3, 2, 1, 0]))
    method = build("mixmatch", unlabeled_weight=10.0, warmup_fraction=0.0)
    out = method.training_step(StubModel(), fixmatch_batch(), 0)
    guess = guess_mixmatch()
    targets = torch.cat([F.one_hot(LABELS, 3).float(), guess, guess])
    mixed_targets = 0.75 * targets + 0.25 * targets.flip(0)
    # Mixed pixels 0.75·c + 0.25·(5 - c) = 1.25, 1.75, 2.25, 2.75, 3.25, 3.75: the stub reads codes 1, 2, 2, 3, 3, 4.
    logits = TABLE[[1, 2, 2, 3, 3, 4]]
    sup = -(mixed_targets[:2] * F.log_softmax(logits[:2], 1)).sum(1).mean()
    unsup = (torch.softmax(logits[2:], 1) - mixed_targets[2:]).pow(2).mean()
    assert out.metrics["sup_loss"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((sup + 10.0 * unsup).item(), rel=1e-5)
    assert out.metrics["mixup_lambda"].item() == 0.75


def test_mixmatch_draws_follow_the_batch_seed():
    method = build("mixmatch", warmup_fraction=0.0)

    def loss(seed):
        batch = fixmatch_batch()
        batch.seed = seed
        return method.training_step(StubModel(), batch, 0).metrics["mixup_lambda"].item()

    torch.manual_seed(0)
    first = loss(11)
    torch.manual_seed(1)  # another global state: the same draws
    assert loss(11) == first
    assert len({loss(seed) for seed in range(8)}) == 8


def test_each_micro_batch_gets_its_own_method_seed(tmp_path):
    trainer = trainer_for(["debug=smoke", "method=mixmatch", "trainer.batch_size=4"], tmp_path)
    seeds = [trainer.batches(step).seed for step in (0, 1, 2, 1)]
    assert len(set(seeds[:3])) == 3 and seeds[3] == seeds[1]


# --------------------------------------------------------------------------- ReMixMatch


def test_rotate_quarter_turns_turns_each_image_by_its_own_multiple_of_90_degrees():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    batch = torch.stack([image, image + 10, image, image]).unsqueeze(1)  # [4, 1, 2, 2]
    out = rotate_quarter_turns(batch, torch.tensor([0, 1, 2, 3])).squeeze(1)
    assert out[0].tolist() == [[1, 2], [3, 4]]
    assert out[1].tolist() == [[12, 14], [11, 13]]  # a quarter turn counter-clockwise
    assert out[2].tolist() == [[4, 3], [2, 1]]
    assert out[3].tolist() == [[3, 1], [4, 2]]


def remix_batch():
    # weak (2, 3), strong views (4, 5) and (5, 4)
    return Batch(labeled=(images(0, 1),), labels=LABELS, unlabeled=(images(2, 3), images(4, 5), images(5, 4)),
                 unlabeled_index=torch.tensor([0, 1]), unlabeled_targets=TARGETS, seed=3)


def remix_guess(temperature=0.5):
    # Prior (0.5, 0.5, 0) with USB's 1e-6 floor; the model's running mean starts uniform.
    target = torch.tensor([0.5 + 1e-6, 0.5 + 1e-6, 1e-6])
    aligned = torch.stack([softmax(2), softmax(3)]) * (target / target.sum() * 3)
    aligned = aligned / aligned.sum(1, keepdim=True)
    p = aligned ** (1 / temperature)
    return p / p.sum(1, keepdim=True)


def soft_ce(codes, targets):
    return -(targets * F.log_softmax(TABLE[list(codes)], 1)).sum(1).mean()


def test_remixmatch_weak_guess_is_aligned_then_sharpened_and_anchors_the_strong_views(monkeypatch):
    rows = [0, 1, 4, 5, 5, 4, 2, 3]  # labeled, strong 1, strong 2, weak: USB's order of the mixed batch
    monkeypatch.setattr(mixmatch_module, "mixup_draw", fixed_draw(1.0, list(range(8))))  # no mixing
    method = build("remixmatch", warmup_fraction=0.0)
    out = method.training_step(StubModel(), remix_batch(), 10)
    guess = remix_guess()
    anchored = torch.cat([guess, guess, guess])
    unsup = -(anchored * F.log_softmax(TABLE[rows[2:]], 1)).sum(1).mean()
    premix = soft_ce([4, 5], guess)  # the first strong view, unmixed
    assert out.metrics["unsup_loss"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert out.metrics["premix_loss"].item() == pytest.approx(premix.item(), rel=1e-5)
    # Sharpening first and aligning after gives other targets: the order is pinned.
    flat = torch.tensor([0.5 + 1e-6, 0.5 + 1e-6, 1e-6])
    other = sharpen(torch.stack([softmax(2), softmax(3)]), 0.5) * flat
    other = other / other.sum(1, keepdim=True)
    assert soft_ce([4, 5], other).item() != pytest.approx(premix.item(), rel=1e-3)
    # The rotation head sees the turned first strong view (constant images: the stub's features are codes 4, 5).
    turns = out.state["rotation_targets"]
    rotation = F.cross_entropy(method.rotation_head(F.one_hot(torch.tensor([4, 5]), 6).float()), turns)
    assert out.metrics["rotation_loss"].item() == pytest.approx(rotation.item(), rel=1e-5)
    sup = F.cross_entropy(TABLE[[0, 1]], LABELS)
    total = sup + 1.5 * unsup + 0.5 * premix + 0.5 * rotation
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    # after_step moves the running mean towards the raw (unaligned) weak probabilities.
    method.after_step(StubModel(), 10, [out])
    expected = 0.999 * torch.full((3,), 1 / 3) + 0.001 * torch.stack([softmax(2), softmax(3)]).mean(0)
    assert method.alignment.model_probs.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_remixmatch_ramps_the_mixed_and_premix_losses_but_not_the_rotation(monkeypatch):
    monkeypatch.setattr(mixmatch_module, "mixup_draw", fixed_draw(1.0, list(range(8))))
    method = build("remixmatch", warmup_fraction=0.5, max_steps=100)
    out = method.training_step(StubModel(), remix_batch(), 0)
    m = out.metrics
    expected = m["sup_loss"] + 0.5 * m["rotation_loss"]  # ramp 0 at step 0
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert m["unsup_weight"].item() == 0.0


def test_remixmatch_rotates_the_first_strong_view_by_the_drawn_turns():
    method = build("remixmatch")
    strong = torch.arange(2 * 4, dtype=torch.float32).view(2, 1, 2, 2)
    batch = Batch(unlabeled=(strong + 100, strong, strong + 50), seed=5)
    context = {}
    gen = method.generator(batch, strong.device)
    unmixed, turned = method.extra_inputs(batch, gen, context)
    turns = context["rotation_targets"]
    assert torch.equal(unmixed, strong)
    for i in range(2):
        assert torch.equal(turned[i], torch.rot90(strong[i], int(turns[i]), dims=(1, 2)))
    draws = [method.extra_inputs(batch, method.generator(batch, strong.device), {}) for _ in range(2)]
    assert torch.equal(draws[0][1], draws[1][1])  # the same batch seed, the same turns


def test_remixmatch_needs_square_images_for_its_rotation_loss():
    options = METHODS.options("remixmatch")()
    with pytest.raises(UserError, match="square"):
        METHODS.get("remixmatch")(options, replace(info(), image_size=(2, 3)), 10)
    METHODS.get("remixmatch")(METHODS.options("remixmatch")(rotation_weight=0.0), replace(info(), image_size=(2, 3)), 10)

"""Schedules, optimiser parameter groups and the weight EMA."""

import math

import pytest
import torch
from torch import nn

from ssl_cli.core.errors import UserError
from ssl_cli.engine.optim import OPTIMIZERS, SGDOptions, build_optimizer, lr_factor
from ssl_cli.models.ema import EMA, ema_decay_at


def test_fixmatch_cosine_by_hand():
    assert lr_factor(0, "cosine", 1000) == pytest.approx(1.0)
    assert lr_factor(500, "cosine", 1000) == pytest.approx(math.cos(7 * math.pi / 32))
    assert lr_factor(1000, "cosine", 1000) == pytest.approx(math.cos(7 * math.pi / 16))  # about 0.2


def test_warmup_then_constant_or_cosine():
    assert lr_factor(0, "constant", 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(50, "constant", 100, warmup_steps=10) == 1.0
    assert lr_factor(4, "warmup_cosine", 100, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(10, "warmup_cosine", 100, warmup_steps=10) == pytest.approx(1.0)


def test_unknown_schedule_and_optimizer():
    with pytest.raises(UserError, match="unknown scheduler"):
        lr_factor(0, "step", 10)
    with pytest.raises(UserError, match="unknown optimizer"):
        build_optimizer(nn.Linear(2, 2), "lamb", SGDOptions(lr=0.1))
    # The ranges are declared on the options: constructing them checks the values.
    with pytest.raises(UserError, match=r"lr must be in \(0, 10\]"):
        OPTIMIZERS.options("sgd")(lr=0.0)
    with pytest.raises(UserError, match=r"weight_decay must be in \[0, 1\)"):
        OPTIMIZERS.options("sgd")(lr=0.1, weight_decay=1e308)  # found by the fuzz test
    assert isinstance(build_optimizer(nn.Linear(2, 2), "sgd", OPTIMIZERS.options("sgd")(lr=0.1)),
                      torch.optim.SGD)


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999, True) == 0.999
    assert ema_decay_at(0, 0.999, False) == 0.999


def test_ema_update_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=1000)
    assert ema.model.weight.item() == pytest.approx(0.1)  # 0.9 * 0 + 0.1 * 1
    ema.update(model, step=1001)
    assert ema.model.weight.item() == pytest.approx(0.19)


def test_ema_copies_buffers():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.99)
    model(torch.randn(8, 2) + 5)
    ema.update(model, step=0)
    assert torch.equal(ema.model.running_mean, model.running_mean)

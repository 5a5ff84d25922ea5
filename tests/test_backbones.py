"""Every registered backbone: shapes at several input sizes, gradients, parameter counts, errors."""

import pytest
import torch

from ssl_cli.backbones import BACKBONES, build_backbone
from ssl_cli.errors import UserError
from ssl_cli.optim import param_groups

BIG = {"wrn28_8", "resnet18"}


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_backward(name, channels):
    sizes = [(32, 32)] if name in BIG else [(8, 8), (28, 28), (32, 32)]
    for size in sizes:
        model = build_backbone(name, channels, 7, size)
        x = torch.randn(2, channels, *size)
        logits = model(x)
        assert logits.shape == (2, 7)
        assert model.features(x).shape == (2, model.feature_dim)
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        assert (model.in_channels, model.num_classes, model.image_size) == (channels, 7, size)


@pytest.mark.parametrize("size", [(8, 8), (96, 96), (20, 33)])
def test_cnn_any_input_size(size):
    model = build_backbone("cnn", 3, 10, size)
    assert model(torch.randn(2, 3, *size)).shape == (2, 10)


@pytest.mark.parametrize("name,low,high", [("wrn28_2", 1.45e6, 1.50e6), ("resnet18", 11.1e6, 11.25e6),
                                           ("wrn28_8", 23.0e6, 23.6e6)])
def test_parameter_counts(name, low, high):
    n = sum(p.numel() for p in build_backbone(name, 3, 10, (32, 32)).parameters())
    assert low <= n <= high, n


def test_channels_last_gives_same_output():
    model = build_backbone("wrn28_2", 3, 10, (32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_no_weight_decay_on_batchnorm_and_bias(name):
    model = build_backbone(name, 3, 10, (32, 32))
    decay, no_decay = param_groups(model, 5e-4)
    bn_and_bias = {id(p) for m in model.modules() for p in m.parameters(recurse=False)
                   if isinstance(m, torch.nn.BatchNorm2d)} | {id(p) for n, p in model.named_parameters()
                                                              if n.endswith("bias")}
    assert {id(p) for p in no_decay["params"]} == bn_and_bias
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_unknown_name_and_option():
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 3, 10, (32, 32))
    with pytest.raises(UserError, match="has no option width"):
        build_backbone("cnn", 3, 10, (32, 32), width=3)

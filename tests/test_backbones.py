"""Every registered backbone: output shapes, gradients, parameter counts, optimizer groups, errors."""

from pathlib import Path

import pytest
import torch

from torch import nn

from conftest import compose
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import defaults, from_config, names
from ssl_cli.engine.optim import param_groups
from ssl_cli.models.backbones import BACKBONES, Backbone, BackboneOptions, ModelOutput
from ssl_cli.models.backbones import build_backbone as build_with_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"
LOADING_KEYS = BackboneOptions.LOADING_KEYS


def backbone_options(name, **options):
    """`name`'s options as a config gives them: its declaration's defaults with `options` on top."""
    cls = BACKBONES.options(name)
    return from_config(cls, {**defaults(cls), **options}, f"backbone={name}")


def build_backbone(name, in_channels, num_classes, image_size, **options):
    return build_with_options(name, backbone_options(name, **options), in_channels, num_classes, image_size)

# The large nets are slow on a CPU: one batch of 2 at one size each. Any other name gets all sizes.
SIZES = {"wrn28_8": [(8, 8)], "resnet18": [(32, 32)]}
DEFAULT_SIZES = [(8, 8), (28, 28), (32, 32)]
# Forward and backward passes of these take seconds: out of the fast tier (cnn stays in it).
LARGE = {"wrn28_2", "wrn28_8", "resnet18"}


def by_size(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in names]


def on_meta(name, *args, **options):
    """Builds without allocating or initialising real weights: enough for counting parameters."""
    with torch.device("meta"):
        return build_backbone(name, *args, **options)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", by_size(BACKBONES.names()))
def test_shapes_and_backward(name, channels):
    torch.manual_seed(0)
    for size in SIZES.get(name, DEFAULT_SIZES):
        model = build_backbone(name, channels, 7, size)
        assert isinstance(model, Backbone)
        assert (model.in_channels, model.num_classes, model.image_size) == (channels, 7, size)
        assert isinstance(model.classifier, nn.Linear)
        assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_dim, 7)
        x = torch.randn(2, channels, *size)
        with torch.no_grad():
            assert model.features(x).shape == (2, model.feature_dim)
        out = model(x)
        assert isinstance(out, ModelOutput) and out.features.shape == (2, model.feature_dim)
        logits = out.logits
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()
        logits.logsumexp(1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("size", [(8, 8), (96, 96), (20, 33), (33, 20), (1, 5)])
def test_cnn_any_input_size(size):
    model = build_backbone("cnn", 3, 10, size)
    assert model(torch.randn(2, 3, *size)).logits.shape == (2, 10)
    assert model.image_size == size


def test_cnn_construction_leaves_batchnorm_statistics_alone():
    model = build_backbone("cnn", 1, 10, (28, 28))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))


def test_cnn_without_batch_norm_has_conv_biases():
    model = build_backbone("cnn", 3, 10, (32, 32), batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 10)


@pytest.mark.parametrize("name,low,high", [("wrn28_2", 1.45e6, 1.50e6), ("wrn28_8", 23.2e6, 23.5e6),
                                           ("resnet18", 11.1e6, 11.25e6)])
def test_parameter_counts(name, low, high):
    model = on_meta(name, 3, 10, (32, 32))
    n = sum(p.numel() for p in model.parameters())
    assert low <= n <= high, n


def test_feature_dims():
    dims = {"cnn": 128, "wrn28_2": 128, "wrn28_8": 512, "resnet18": 512}
    for name, dim in dims.items():
        assert on_meta(name, 3, 10, (32, 32)).feature_dim == dim


def test_wide_resnet_options_and_initialisation():
    model = build_backbone("wrn28_2", 3, 10, (32, 32), bn_momentum=0.01, dropout=0.3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 for m in bns)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert torch.all(model.classifier.bias == 0)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    default = build_backbone("wrn28_2", 3, 10, (32, 32))
    assert all(m.momentum == 0.001 for m in default.modules() if isinstance(m, nn.BatchNorm2d))


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = build_backbone("cnn", 3, 10, (16, 16), dropout=0.5)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        assert not torch.equal(model.features(x), model.features(x))


@pytest.mark.parametrize("name", by_size(BACKBONES.names()))
def test_channels_last_gives_same_output(name):
    torch.manual_seed(0)
    size = SIZES.get(name, [(16, 16)])[0]
    model = build_backbone(name, 3, 10, size).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref.logits, out.logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ref.features, out.features, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,options", [(n, {}) for n in BACKBONES.names()] + [("cnn", {"batch_norm": False})])
def test_param_groups_exempt_batchnorm_and_biases(name, options):
    model = on_meta(name, 3, 10, (32, 32), **options)
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
          for p in m.parameters(recurse=False)}
    biases = {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    assert {id(p) for p in no_decay["params"]} == bn | biases
    assert all(p.ndim > 1 for p in decay["params"])
    everything = list(model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(everything)
    assert {id(p) for p in decay["params"] + no_decay["params"]} == {id(p) for p in everything}


def test_param_groups_drive_an_optimizer():
    model = build_backbone("cnn", 1, 3, (8, 8))
    optimizer = torch.optim.SGD(param_groups(model, 1e-3), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).logits.sum().backward()
    optimizer.step()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0]


def test_state_dict_round_trip():
    a = build_backbone("wrn28_2", 1, 4, (16, 16)).eval()
    b = build_backbone("wrn28_2", 1, 4, (16, 16)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_config_defaults_are_valid_options(name):
    path = CONFIGS / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"no config file for {name}")
    # The YAML starts from the declaration's schema; what it composes to must be valid options.
    node = dict(compose([f"backbone={name}"]).backbone)
    assert node.pop("name") == name
    assert set(node) == set(names(BACKBONES.options(name)))
    options = from_config(BACKBONES.options(name), node, f"backbone={name}")
    assert set(options.architecture()) == set(node) - set(BACKBONES.options(name).LOADING_KEYS)
    with torch.device("meta"):
        build_with_options(name, options, 3, 10, (32, 32))


def test_unknown_name():
    with pytest.raises(UserError, match="unknown backbone 'vgg'.*wrn28_2"):
        build_backbone("vgg", 3, 10, (32, 32))


def test_unknown_option_names_the_allowed_ones():
    with pytest.raises(UserError) as info:
        build_backbone("cnn", 3, 10, (32, 32), width=3)
    message = str(info.value)
    assert "\n" not in message
    assert "width" in message and "batch_norm" in message and "dropout" in message
    with pytest.raises(UserError, match="bn_momentum"):
        build_backbone("wrn28_2", 3, 10, (32, 32), batch_norm=False)
    # resnet18 declares no architecture options: only the loading keys every backbone has.
    with pytest.raises(UserError, match=r"has no option dropout; its options: init_from, freeze_features, freeze_stages$"):
        build_backbone("resnet18", 3, 10, (32, 32), dropout=0.1)


@pytest.mark.parametrize("name,options", [("cnn", {"dropout": 1.0}), ("cnn", {"dropout": "high"}),
                                          ("cnn", {"batch_norm": "yes"}), ("wrn28_2", {"bn_momentum": 0.0}),
                                          ("wrn28_8", {"dropout": -0.1})])
def test_bad_option_values(name, options):
    # The ranges and types are declared on the backbone's options: constructing them checks the values.
    with pytest.raises(UserError, match=f"backbone.{next(iter(options))} must be"):
        BACKBONES.options(name)(**options)


@pytest.mark.parametrize("args", [(0, 10, (32, 32)), (3, 0, (32, 32)), (3, 10, (32,)), (3, 10, (0, 32)),
                                  (3, 10, (32.5, 32)), (3, 10, 32)])
def test_bad_data_arguments(args):
    with pytest.raises(UserError):
        build_backbone("cnn", *args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", BACKBONES.names())
def test_cuda_channels_last_training_step(name):
    size = SIZES.get(name, [(32, 32)])[0]
    model = build_backbone(name, 3, 10, size).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, *size, device="cuda").contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.03, momentum=0.9, nesterov=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x).logits
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits.float(), torch.arange(4, device="cuda") % 10).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())

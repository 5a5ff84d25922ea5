"""Library backbones: any timm model (`backbone=timm`) or torchvision classifier (`backbone=torchvision`).

The network is the library's model without its classification head; its pooled pre-logits are the
features and ssl-cli's own linear `classifier` replaces the head, for the data's class count.

Weights come from a local file (`backbone.weights`: a state dict as .pth, .pt, .bin or .safetensors,
which never touches the network) or from the library's hub cache (`backbone.pretrained=true`). A file
of the wrong model gives one line naming the mismatched keys. The run's checkpoint holds all weights,
so resuming and `load_model` rebuild the bare architecture and never need the file again (the file and
`pretrained` are loading keys, not part of the architecture).

Preprocessing follows the model: the normalisation mean/std come from its pretrained config
(`timm.data.resolve_model_data_config`; ImageNet's for torchvision) unless `backbone.mean`/`std` are
set, whether or not weights are loaded, so a resumed run normalises as the first one did.
`backbone.image_size` makes the trainer resize the data to the size the model expects.

Stages (`backbone.freeze_stages`): a timm model's are the block groups of its coarse `group_matcher()`,
the grouping timm's own layer decay uses (ResNet: layer1-4; ConvNeXt: stages.0-3; ViT: each block;
EfficientNet/MobileNet: blocks.0-6/0-5), parameters timm assigns to the previous group (a ViT's final
norm, EfficientNet's conv_head) going with the last one. A torchvision model's are its own stage
modules (ResNet layer1-4, ShuffleNet stage2-4, RegNet's trunk blocks, ViT's encoder layers), or, for the
models built as one `features` sequence (MobileNet, EfficientNet, ConvNeXt, DenseNet, VGG, Swin), the runs
of that sequence at one resolution: a stage begins at each layer that downsamples. Either way the stem
(every parameter before the first stage) is part of the first stage.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import option
from ssl_cli.models.backbones import BACKBONES, Backbone, BackboneOptions

try:  # optional extras: ssl-cli[timm] installs both
    import timm
    import timm.data
    from timm.models import group_parameters
except ImportError:  # pragma: no cover - the test extra installs it
    timm = None
try:
    import safetensors.torch
except ImportError:  # pragma: no cover
    safetensors = None

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainedOptions(BackboneOptions):
    model_name: str = option("resnet18", "the library's model name (timm: resnet50, convnext_tiny, "
                                         "vit_small_patch16_224, ...; torchvision: resnet50, mobilenet_v3_small, ...)")
    weights: Optional[str] = option(None, "a state dict file to start from (.pth, .pt, .bin or .safetensors); "
                                          "never touches the network")
    pretrained: bool = option(False, "start from the library's pretrained weights: the hub cache, downloaded "
                                     "where the network is reachable")
    image_size: Optional[int] = option(None, "train and predict at this square size: the data are resized to "
                                             "it (timm's default_cfg input size is usual); null: the data's size",
                                       low=8, high=1024)
    mean: Optional[List[float]] = option(None, "normalisation mean per channel, in [0, 1] units; null: the "
                                               "model's pretrained config")
    std: Optional[List[float]] = option(None, "normalisation std per channel; null: the model's pretrained config")
    model_args: Optional[dict] = option(None, "extra keyword arguments of the model's constructor, e.g. "
                                  "{drop_path_rate: 0.1} or, for a tiny ViT, {depth: 2, embed_dim: 64}")

    LOADING_KEYS = BackboneOptions.LOADING_KEYS + ("weights", "pretrained")
    WEIGHT_SOURCES = BackboneOptions.WEIGHT_SOURCES + ("weights", "pretrained")

    def check(self) -> None:
        if self.weights is not None and self.pretrained:
            raise UserError("set one of backbone.weights (a file) and backbone.pretrained=true (the hub), not both")
        if self.weights is not None and not str(self.weights).endswith(WEIGHT_SUFFIXES):
            raise UserError(f"backbone.weights must be a state dict file ending in {', '.join(WEIGHT_SUFFIXES)}, "
                            f"got {self.weights!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and (len(values) not in (1, 3) or
                                       not all((0 < v if key == "std" else 0 <= v) and v <= 1 for v in values)):
                raise UserError(f"backbone.{key} must be 1 or 3 numbers in {'(0, 1]' if key == 'std' else '[0, 1]'}"
                                f" (one per channel), got {values}")
        if (self.mean is None) != (self.std is None):
            raise UserError("set backbone.mean and backbone.std together (or neither, for the model's own)")


class LibraryBackbone(Backbone):
    """A timm or torchvision network without its head (`net(x)` -> pooled pre-logits) and our classifier."""

    def __init__(self, net: nn.Module, feature_dim: int, in_channels: int, num_classes: int,
                 image_size: Sequence[int], normalization: Tuple[List[float], List[float]],
                 layer_of: Optional[Dict[str, int]] = None, library: str = "timm", model_name: str = ""):
        super().__init__(in_channels, num_classes, image_size)
        self.library, self.model_name = library, model_name
        self.net = net
        self.feature_dim = int(feature_dim)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)
        self.normalization = normalization
        self._layer_of = layer_of  # parameter name in `net` -> depth index, for layer-wise lr decay

    def features(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layer_ids(self) -> Optional[Dict[str, int]]:
        """Each parameter's depth (0 = the stem; the classifier is deepest), or None where unknown."""
        if self._layer_of is None:
            return None
        deepest = max(self._layer_of.values(), default=0) + 1
        return {**{f"net.{k}": v for k, v in self._layer_of.items()},
                **{f"classifier.{k}": deepest for k, _ in self.classifier.named_parameters()}}

    def stages(self) -> Optional[List[List[str]]]:
        found = (_timm_stages(self.net) if self.library == "timm"
                 else _torchvision_stages(self.net, self.in_channels, self.model_name))
        return [[f"net.{name}" for name in stage] for stage in found]

    def describe_stages(self) -> str:
        return f"{self.library} model {self.model_name}"


def _with_stem(net: nn.Module, stages: List[List[str]]) -> List[List[str]]:
    """The stages with the stem (every parameter registered before the first stage's) joined to the first."""
    first = set(stages[0])
    names = [name for name, _ in net.named_parameters()]
    start = next(i for i, name in enumerate(names) if name in first)
    return [names[:start] + stages[0], *stages[1:]]


def _normalization(o: PretrainedOptions, mean, std, in_channels: int) -> Tuple[List[float], List[float]]:
    """The user's mean/std, else the model's, as one value per input channel (grey: the RGB average)."""
    mean, std = (o.mean, o.std) if o.mean is not None else (list(mean), list(std))

    def fit(values):
        if len(values) == in_channels:
            return [float(v) for v in values]
        if in_channels == 1:
            return [float(sum(values) / len(values))]
        if len(values) == 1:
            return [float(values[0])] * in_channels
        raise UserError(f"backbone.mean/std give {len(values)} values; the data have {in_channels} channels")

    return fit(mean), fit(std)


def _check_weights_file(path: str) -> str:
    path = os.path.expanduser(path)
    if not Path(path).is_file():
        raise UserError(f"backbone.weights={path}: no such file (a state dict: {', '.join(WEIGHT_SUFFIXES)})")
    return path


def _mismatch_line(model_name: str, error: Exception) -> str:
    """torch's many-line load_state_dict error as one line naming the keys that do not fit."""
    text = str(error)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: ([^\n]*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: ([^\n]*)")):
        found = re.search(pattern, text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{label} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    shapes = re.findall(r"size mismatch for ([\w.]+)", text)
    if shapes:
        parts.append(f"wrong shape {len(shapes)} ({', '.join(shapes[:4])}{', ...' if len(shapes) > 4 else ''})")
    detail = "; ".join(parts) or text.strip().splitlines()[0][:200]
    return f"backbone.weights do not fit model {model_name}: {detail}"


def _offline_line(library: str, model_name: str, error: Exception) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return (f"backbone.pretrained=true: no {library} weights for {model_name} in the hub cache and none could be "
            f"downloaded ({type(error).__name__}: {first}); on a machine without network, save the model's "
            f"state dict to a file elsewhere and pass backbone.weights=/path/to/{model_name}.safetensors")


# --------------------------------------------------------------------------- timm


def require_timm() -> None:
    if timm is None:
        raise UserError("backbone=timm needs the timm package: pip install 'ssl-cli[timm]'")


@BACKBONES.register("timm", PretrainedOptions)
def timm_backbone(o: PretrainedOptions, in_channels, num_classes, image_size) -> Backbone:
    """Any timm model by name (head replaced for the class count, input channels adapted by timm)."""
    require_timm()
    if not timm.is_model(o.model_name.split(".")[0]):
        raise UserError(f"backbone.model_name={o.model_name!r} is not a timm model; list them with "
                        f"python -c \"import timm; print(timm.list_models('*vit*'))\"")
    kwargs = dict(o.model_args or {})
    kwargs.update(num_classes=0, in_chans=in_channels)  # num_classes=0: the net ends at the pooled pre-logits
    if o.weights is not None:
        # custom_load=False: some hub weights are .npz with their own loader; a file is a state dict.
        kwargs.update(pretrained=True,
                      pretrained_cfg_overlay=dict(file=_check_weights_file(o.weights), custom_load=False))
    elif o.pretrained:
        kwargs.update(pretrained=True)
    try:
        net = _create_timm(o.model_name, kwargs, image_size)
    except UserError:
        raise
    except RuntimeError as e:
        if o.weights is not None and "state_dict" in str(e):
            raise UserError(_mismatch_line(o.model_name, e)) from None
        if o.pretrained:
            raise UserError(_offline_line("timm", o.model_name, e)) from None
        raise
    except (OSError, ValueError) as e:  # hub errors (no cache, offline) derive from these
        if o.pretrained:
            raise UserError(_offline_line("timm", o.model_name, e)) from None
        raise UserError(f"backbone=timm model {o.model_name}: {e}".splitlines()[0]) from None
    except TypeError as e:
        raise UserError(f"backbone.model_args do not fit timm model {o.model_name}: {e}".splitlines()[0]) from None
    config = timm.data.resolve_model_data_config(net)
    normalization = _normalization(o, config["mean"], config["std"], in_channels)
    try:
        layer_of = group_parameters(net, net.group_matcher(coarse=False), reverse=True)
    except (AttributeError, NotImplementedError):
        layer_of = None
    # Some heads have a hidden layer (MobileNetV3's 1024 units): the features are its output.
    feature_dim = getattr(net, "head_hidden_size", None) or net.num_features
    return LibraryBackbone(net, feature_dim, in_channels, num_classes, image_size, normalization, layer_of,
                           "timm", o.model_name)


def _timm_stages(net: nn.Module) -> List[List[str]]:
    """The block groups of timm's coarse group_matcher, the stem joined to the first (see the module doc)."""
    try:
        matcher = net.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        matcher = None
    if not isinstance(matcher, dict) or "stem" not in matcher:
        raise UserError(f"backbone.freeze_stages: timm model {type(net).__name__} does not name its stages "
                        f"(no group_matcher); use backbone.freeze_features=true or another model")

    def patterns(value):
        return [value] if isinstance(value, str) else [p for p, _ in value]

    stem = patterns(matcher["stem"])
    blocks = [p for key, value in matcher.items() if key != "stem" for p in patterns(value)]
    group_of = group_parameters(net, matcher, reverse=True)
    stages: Dict[int, List[str]] = {}
    for name, _ in net.named_parameters():
        if any(re.match(p, name) for p in stem) or not any(re.match(p, name) for p in blocks):
            continue  # the stem (joined below) or after the stages (a head norm)
        stages.setdefault(group_of[name], []).append(name)
    if not stages:
        raise UserError(f"backbone.freeze_stages: timm model {type(net).__name__} has no stages")
    return _with_stem(net, [stages[k] for k in sorted(stages)])


def _create_timm(name: str, kwargs: dict, image_size) -> nn.Module:
    """timm.create_model at our image size where the model takes one (ViTs: position embeddings are
    resampled on load), else as it comes (convnets take any size)."""
    try:
        return timm.create_model(name, img_size=tuple(image_size), **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(name, **kwargs)


# --------------------------------------------------------------------------- torchvision


@BACKBONES.register("torchvision", PretrainedOptions)
def torchvision_backbone(o: PretrainedOptions, in_channels, num_classes, image_size) -> Backbone:
    """Any torchvision classification model by name (its last linear layer replaced, first conv adapted)."""
    if o.model_name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"backbone.model_name={o.model_name!r} is not a torchvision classification model; e.g. "
                        f"resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny, vit_b_16")
    try:
        net = torchvision.models.get_model(o.model_name, weights=None, **(o.model_args or {}))
    except TypeError as e:
        raise UserError(f"backbone.model_args do not fit torchvision model {o.model_name}: {e}") from None
    state = None
    if o.weights is not None:
        path = _check_weights_file(o.weights)
        if path.endswith(".safetensors"):
            if safetensors is None:
                raise UserError("backbone.weights=*.safetensors needs the safetensors package: "
                                "pip install 'ssl-cli[timm]'")
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    elif o.pretrained:
        try:
            state = torchvision.models.get_model_weights(o.model_name).DEFAULT.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - URL, OS and hash errors all mean "no weights here"
            raise UserError(_offline_line("torchvision", o.model_name, e)) from None
    if state is not None:
        try:
            net.load_state_dict(_without_head(net, state))
        except RuntimeError as e:
            raise UserError(_mismatch_line(o.model_name, e)) from None
    feature_dim = _drop_head(net)
    _adapt_first_conv(net, in_channels)
    return LibraryBackbone(net, feature_dim, in_channels, num_classes, image_size,
                           _normalization(o, IMAGENET_MEAN, IMAGENET_STD, in_channels),
                           library="torchvision", model_name=o.model_name)


def _torchvision_stages(net: nn.Module, in_channels: int, model_name: str) -> List[List[str]]:
    """A torchvision model's stages as parameter names of `net` (see the module doc)."""
    children = dict(net.named_children())
    numbered = [name for name in children if re.fullmatch(r"(layer|stage)\d+", name)]  # ResNet, ShuffleNet
    if numbered:
        modules = [[name] for name in numbered]
    elif "trunk_output" in children:  # RegNet
        modules = [[f"trunk_output.{name}"] for name, _ in net.trunk_output.named_children()]
    elif isinstance(getattr(getattr(net, "encoder", None), "layers", None), nn.Sequential):  # ViT
        modules = [[f"encoder.layers.{name}"] for name, _ in net.encoder.layers.named_children()]
    elif isinstance(children.get("features"), nn.Sequential):
        modules = [[f"features.{name}" for name in run] for run in _resolution_runs(net, in_channels)]
    else:
        raise UserError(f"backbone.freeze_stages: ssl-cli does not know the stages of torchvision model "
                        f"{model_name} (it knows ResNet, ShuffleNet, RegNet, ViT and the models built as one "
                        f"`features` sequence); use backbone=timm or backbone.freeze_features=true")
    stages = [[name for name, _ in net.named_parameters() if any(name.startswith(m + ".") for m in stage)]
              for stage in modules]
    return _with_stem(net, [stage for stage in stages if stage])


def _resolution_runs(net: nn.Module, in_channels: int, size: int = 128) -> List[List[str]]:
    """The names of the layers of `net.features[1:]` grouped into runs at one resolution: a run begins at each layer
    whose output is smaller than its input (features[0], the stem, joins the first run later). One forward
    pass of a zero image at `size` px measures them (dimension 2: the height, or a Swin's width).
    A first run of plain layers (a norm, an activation) belongs to the stem."""
    shrinks: Dict[int, bool] = {}

    def hook(index):
        def record(module, inputs, output):
            if torch.is_tensor(output) and output.ndim == 4 and inputs[0].ndim == 4:
                shrinks[index] = output.shape[2] < inputs[0].shape[2]
        return record

    layers = list(net.features.named_children())
    handles = [layer.register_forward_hook(hook(i)) for i, (_, layer) in enumerate(layers) if i > 0]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net.features(torch.zeros(1, in_channels, size, size))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    runs: List[List[str]] = []
    for i, (name, _) in enumerate(layers[1:], start=1):
        if not runs or shrinks.get(i, False):
            runs.append([])
        runs[-1].append(name)
    modules = dict(layers)
    if len(runs) > 1 and not any(any(True for _ in modules[name].children()) for name in runs[0]):
        plain = runs.pop(0)  # plain norm/activation layers after the stem (DenseNet's) are stem too
        runs[0] = plain + runs[0]
    return runs


def _head_name(net: nn.Module) -> str:
    """The name of the model's last linear layer: its classification head."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"torchvision model {type(net).__name__} has no linear head to replace")
    return names[-1]


def _without_head(net: nn.Module, state: dict) -> dict:
    """The file's weights with its head taken from the fresh model: a file of any class count fits."""
    head = _head_name(net) + "."
    own = net.state_dict()
    return {**{k: v for k, v in state.items() if not k.startswith(head)},
            **{k: v for k, v in own.items() if k.startswith(head)}}


def _drop_head(net: nn.Module) -> int:
    """Replaces the last linear layer by the identity; returns its input size (the feature size)."""
    name = _head_name(net)
    parent_name, _, leaf = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    feature_dim = getattr(parent, leaf).in_features
    setattr(parent, leaf, nn.Identity())
    return feature_dim


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """A first convolution for `in_channels` inputs: its RGB filters summed (grey) or tiled (other counts)."""
    name, conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        if in_channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:  # as timm: repeat the filters over the channels, rescaled to keep the activation size
            repeats = -(-in_channels // w.shape[1])
            new.weight.copy_(w.repeat(1, repeats, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, leaf, new)

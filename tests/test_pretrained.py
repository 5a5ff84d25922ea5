"""Library backbones (backbone=timm, backbone=torchvision) with weights from a local file; no network.

Each test saves a small model's random weights to a file (as a downloaded checkpoint would be) and
starts from it: the loaded weights equal the file's, a wrong file is refused in one line, a FixMatch
run from the file resumes exactly and predicts through load_model after the file is gone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.error
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from PIL import Image

from conftest import REPO, assert_one_line_error, compose, run_cli, trainer_for, write_image_folder
import ssl_cli.apps.export as export_app
from ssl_cli.core.errors import UserError
from ssl_cli.data.resize import resize_images
from ssl_cli.engine.checkpoint import upgrade_config
from ssl_cli.engine.config import check_config
from ssl_cli.engine.model_io import load_model
from ssl_cli.engine.optim import OPTIMIZERS, build_optimizer
from ssl_cli.models import BACKBONES, build_backbone
from ssl_cli.models.pretrained import PretrainedOptions

TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2, "patch_size": 8}
# (backbone, model name, constructor arguments, file suffix)
MODELS = [("timm", "resnet10t", {}, ".safetensors"),
          ("timm", "mobilenetv3_small_050", {}, ".pth"),
          ("timm", "vit_tiny_patch16_224", TINY_VIT, ".bin"),
          ("torchvision", "mobilenet_v3_small", {}, ".pth")]
IDS = [m[1] for m in MODELS]
SIZE = 32  # the tiny ViT is built for 32 px images (16 patches)

# Two-class synthetic data at 16 px, resized to the backbone's 32 px; a few FixMatch steps.
RUN = ["debug=smoke", "method=fixmatch", "method.unlabeled_ratio=1", "trainer.num_threads=1",
       "trainer.deterministic=true", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2",
       "trainer.batch_size=4", "trainer.ema_decay=0.9", "dataset.num_classes=2", "dataset.num_train=32",
       "dataset.num_test=8", "dataset.image_size=16", "dataset.num_labels=8", "dataset.num_validation=0",
       "optim=adamw", "optim.lr=0.001", f"backbone.image_size={SIZE}"]


def save_weights(path: Path, backbone: str, name: str, model_args: dict) -> dict:
    """Random weights of the full model (ImageNet's 1000-class head, 3 channels) saved as a downloaded file."""
    torch.manual_seed(0)
    if backbone == "timm":
        args = {**model_args, "img_size": SIZE} if model_args else {}
        net = timm.create_model(name, pretrained=False, **args)
    else:
        net = torchvision.models.get_model(name, weights=None)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def backbone_args(backbone: str, name: str, model_args: dict, weights: Path) -> list:
    args = [f"backbone={backbone}", f"backbone.model_name={name}", f"backbone.weights={weights}"]
    if model_args:
        args.append("backbone.model_args={" + ", ".join(f"{k}: {v}" for k, v in model_args.items()) + "}")
    return args


@pytest.mark.parametrize("backbone,name,model_args,suffix", MODELS, ids=IDS)
def test_the_loaded_weights_equal_the_file(backbone, name, model_args, suffix, tmp_path):
    path = tmp_path / f"{name}{suffix}"
    saved = save_weights(path, backbone, name, model_args)
    options = PretrainedOptions(model_name=name, weights=str(path), model_args=model_args)
    model = build_backbone(backbone, options, 3, 5, (SIZE, SIZE))
    loaded = {k[len("net."):]: v for k, v in model.state_dict().items() if k.startswith("net.")}
    head = {"timm": ("head.", "fc.", "classifier."), "torchvision": ("classifier.3.",)}[backbone]
    expected = {k: v for k, v in saved.items() if not k.startswith(head)}
    assert set(loaded) >= set(expected) - {"classifier.weight", "classifier.bias"}
    for key, value in expected.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    fresh = build_backbone(backbone, PretrainedOptions(model_name=name, model_args=model_args), 3, 5, (SIZE, SIZE))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.logits.shape == (2, 5) and out.features.shape == (2, model.feature_dim)


def test_grey_images_adapt_the_first_convolution_and_the_normalisation(tmp_path):
    path = tmp_path / "w.pth"
    save_weights(path, "torchvision", "mobilenet_v3_small", {})
    model = build_backbone("torchvision", PretrainedOptions(model_name="mobilenet_v3_small", weights=str(path)),
                           1, 3, (SIZE, SIZE))
    assert model(torch.randn(2, 1, SIZE, SIZE)).logits.shape == (2, 3)
    mean, std = model.normalization
    assert len(mean) == 1 and mean[0] == pytest.approx(sum((0.485, 0.456, 0.406)) / 3)
    timm_model = build_backbone("timm", PretrainedOptions(model_name="resnet10t", mean=[0.5], std=[0.25]),
                                3, 3, (SIZE, SIZE))
    assert timm_model.normalization == ([0.5] * 3, [0.25] * 3)  # the user's values win over the model's


@pytest.mark.slow
def test_fixmatch_from_a_weights_file_resumes_exactly_and_predicts_without_the_file(tmp_path):
    weights = tmp_path / "resnet10t.safetensors"
    save_weights(weights, "timm", "resnet10t", {})
    args = RUN + backbone_args("timm", "resnet10t", {}, weights)
    code, _, err = run_cli(args + ["hydra.run.dir=full"], tmp_path)
    assert code == 0, err
    code, _, err = run_cli(args + ["trainer.stop_at_step=2", "hydra.run.dir=part"], tmp_path)
    assert code == 0, err
    weights.unlink()  # the run's checkpoint is self-contained: resuming and predicting need no weights file
    code, _, err = run_cli(["resume=part"], tmp_path)
    assert code == 0, err

    def rows(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in lines]

    assert rows("full") == rows("part")
    full, part = torch.load(tmp_path / "full" / "last.pt", weights_only=True), \
        torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert all(torch.equal(full["model"][k], part["model"][k]) for k in full["model"])
    card = full["model_card"]
    assert card["image_size"] == [SIZE, SIZE] and card["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert "weights" not in card["backbone_options"]

    model = load_model(tmp_path / "full")
    assert model.image_size == (SIZE, SIZE)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    probs = model.probabilities(resize_images(images, (SIZE, SIZE)))
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))
    # ...and exports: ssl-export's onnxruntime self-check fails (exit 1) above 1e-4 from PyTorch
    assert export_app.main([str(tmp_path / "full"), "--output", str(tmp_path / "model.onnx"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "model.onnx.json").read_text())["self_check"]["max_abs_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("backbone,name,model_args,suffix", MODELS[2:], ids=IDS[2:])
def test_fixmatch_trains_from_a_vit_and_a_torchvision_file(backbone, name, model_args, suffix, tmp_path):
    weights = tmp_path / f"{name}{suffix}"
    save_weights(weights, backbone, name, model_args)
    code, _, err = run_cli(RUN + ["trainer.max_steps=2"] + backbone_args(backbone, name, model_args, weights)
                           + ["hydra.run.dir=run"], tmp_path)
    assert code == 0, err
    assert load_model(tmp_path / "run").card["backbone"] == backbone
    assert export_app.main([str(tmp_path / "run"), "--output", str(tmp_path / "model.onnx"), "--device", "cpu"]) == 0


@pytest.mark.parametrize("backbone,file_of,name", [("timm", "resnet10t", "mobilenetv3_small_050"),
                                                   ("torchvision", "mobilenet_v3_small", "resnet18")])
def test_weights_of_another_model_give_one_line_naming_the_keys(backbone, file_of, name, tmp_path):
    weights = tmp_path / "other.pth"
    save_weights(weights, backbone, file_of, {})
    code, _, err = run_cli(RUN + backbone_args(backbone, name, {}, weights) + ["hydra.run.dir=run"], tmp_path)
    line = assert_one_line_error(code, err, "backbone.weights do not fit model", name)
    assert "missing" in line or "unexpected" in line or "wrong shape" in line


@pytest.mark.parametrize("extra,fragment", [
    (["backbone.weights=nowhere/w.pth"], "no such file"),
    (["backbone.weights=w.txt"], "must be a state dict file ending in"),
    (["backbone.weights=w.pth", "backbone.pretrained=true"], "not both"),
    (["backbone.model_name=no_such_net"], "is not a timm model"),
    (["backbone.mean=[0.5]"], "backbone.mean and backbone.std together"),
])
def test_bad_weight_options_give_one_line(extra, fragment, tmp_path):
    code, _, err = run_cli(RUN + ["backbone=timm", "backbone.model_name=resnet10t", *extra, "hydra.run.dir=run"],
                           tmp_path)
    assert_one_line_error(code, err, fragment)


def test_pretrained_without_network_or_cache_says_how_to_place_a_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="backbone.weights=") as e:
        build_backbone("timm", PretrainedOptions(model_name="resnet10t", pretrained=True), 3, 2, (SIZE, SIZE))
    assert "\n" not in str(e.value)


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_torchvision_pretrained_without_network_or_cache_fails_at_once_in_one_line(tmp_path, monkeypatch):
    """torchvision's hub: an empty TORCH_HOME and an unreachable network (torch.hub's urlopen refuses at
    once, as a machine without DNS does) end the run with one line, not a traceback or a wait."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    started = time.perf_counter()
    code, _, err = run_cli(RUN + ["backbone=torchvision", "backbone.model_name=mobilenet_v3_small",
                                  "backbone.pretrained=true", "hydra.run.dir=run"], tmp_path)
    assert_one_line_error(code, err, "backbone.pretrained=true: no torchvision weights for mobilenet_v3_small",
                          "URLError", "backbone.weights=/path/to/mobilenet_v3_small.safetensors")
    assert time.perf_counter() - started < 60  # building the data and failing; no download time-out
    assert not list((tmp_path / "empty-torch-home").rglob("*.pth"))  # nothing half-downloaded left behind


def test_torchvision_pretrained_uses_the_hub_cache_without_network(tmp_path, monkeypatch):
    """A weights file already in TORCH_HOME's hub cache (as a first download leaves it) loads offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    saved = save_weights(cached, "torchvision", "mobilenet_v3_small", {})
    model = build_backbone("torchvision", PretrainedOptions(model_name="mobilenet_v3_small", pretrained=True),
                           3, 2, (SIZE, SIZE))
    assert torch.equal(model.net.features[0][0].weight, saved["features.0.0.weight"])


def test_resize_images_crops_the_centre_square_and_scales_it():
    images = torch.zeros(2, 3, 20, 40, dtype=torch.uint8)
    images[:, :, :, :10] = images[:, :, :, 30:] = 255  # white outside the centre 20 x 20 square
    images[:, :, :, 14:26] = 200  # a grey band inside it
    out = resize_images(images, (10, 10))
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.uint8
    assert (out[:, :, :, 3:7] == 200).all()  # the band, at half size: columns 14-26 -> 2-8
    assert out[:, :, :, 0].max() == out[:, :, :, 9].max() == 0  # cut first: no white leaks in from outside


@pytest.mark.parametrize("policy", ["crop", "pad"])
def test_backbone_image_size_resizes_in_memory_folders_by_their_resize_policy(policy, tmp_path):
    """Wide 8 x 16 photos resized for a 16 px backbone: pad keeps the whole width on black bands, crop the
    centre, as predict would decode a new file of that size (the model card's resize)."""
    for split, count in (("train", 6), ("test", 2)):
        for label in ("a", "b"):
            folder = tmp_path / "photos" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 8), (200, 100, 50)).save(folder / f"{i}.png")
    run = [a for a in RUN[:-1] if not a.startswith("dataset.")]  # RUN's synthetic data options
    trainer = trainer_for([*run, "dataset=imagefolder", f"dataset.root={tmp_path / 'photos'}",
                           "dataset.num_labels=4", "dataset.num_validation=0", f"dataset.resize={policy}",
                           "dataset.num_workers=0",
                           f"dataset.cache_dir={tmp_path / 'cache'}", "backbone=timm",
                           "backbone.model_name=resnet10t", "backbone.image_size=16"], tmp_path)
    images = trainer.data_cpu.train_images
    assert images.shape[1:] == (3, 16, 16)
    black_rows = (images[0].sum(dim=(0, 2)) == 0).tolist()
    assert black_rows == ([True] * 4 + [False] * 8 + [True] * 4 if policy == "pad" else [False] * 16)
    assert trainer.model_card()["resize"] == policy


def test_layer_ids_order_the_parameters_from_stem_to_classifier():
    model = build_backbone("timm", PretrainedOptions(model_name="resnet10t"), 3, 2, (SIZE, SIZE))
    ids = model.layer_ids()
    names = [n for n, _ in model.named_parameters()]
    assert set(ids) == set(names)
    assert ids[names[0]] == 0 and ids["classifier.weight"] == max(ids.values())


def test_layer_decay_and_backbone_scale_set_each_parameter_group_rate():
    model = build_backbone("timm", PretrainedOptions(model_name="resnet10t"), 3, 2, (SIZE, SIZE))
    options = OPTIMIZERS.options("adamw")(lr=1e-3, layer_decay=0.5, backbone_lr_scale=0.1)
    optimizer = build_optimizer(model, "adamw", options, backbone=model)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    ids = model.layer_ids()
    deepest = max(ids.values())
    for name, p in model.named_parameters():
        expected = 1e-3 if name.startswith("classifier.") else 1e-3 * 0.1 * 0.5 ** (deepest - ids[name])
        assert rate[id(p)] == pytest.approx(expected), name
    plain = build_optimizer(model, "adamw", OPTIMIZERS.options("adamw")(lr=1e-3), backbone=model)
    assert len(plain.param_groups) == 2  # no scales: the two groups of every earlier run
    cnn = build_backbone("cnn", BACKBONES.options("cnn")(), 3, 2, (SIZE, SIZE))
    with pytest.raises(UserError, match="optim.layer_decay=0.5 needs a backbone that knows its layers"):
        build_optimizer(cnn, "adamw", options, backbone=cnn)


def test_a_run_saved_before_the_new_options_still_resumes(tmp_path):
    """A checkpoint whose saved config lacks options added since (here optim.layer_decay) resumes on their
    defaults; and a library backbone's boolean `pretrained` is not mistaken for format 1's init path."""
    args = RUN[:-1] + ["trainer.max_steps=2", "trainer.stop_at_step=1", "trainer.checkpoint_every=1"]
    code, _, err = run_cli(args + ["hydra.run.dir=run"], tmp_path)
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    del state["config"]["optim"]["layer_decay"], state["config"]["optim"]["backbone_lr_scale"]
    torch.save(state, tmp_path / "run" / "last.pt")
    code, _, err = run_cli(["resume=run"], tmp_path)
    assert code == 0, err
    assert upgrade_config({"backbone": {"name": "timm", "init_from": None, "pretrained": False}})["backbone"] == \
        {"name": "timm", "init_from": None, "pretrained": False}


@pytest.mark.parametrize("preset", ["finetune_vit_usb", "finetune_resnet_cpu"])
def test_fine_tuning_presets_are_valid_configs(preset):
    run = check_config(compose([f"experiment={preset}"]))
    assert run.names["backbone"] == "timm" and run.backbone.pretrained and run.names["optim"] == "adamw"
    assert run.optim.layer_decay < 1 or run.optim.backbone_lr_scale < 1


def test_backbone_benchmark_runs_on_a_tiny_setting(tmp_path):
    """The CPU benchmark (scripts/backbone_benchmark.py; the lead runs it at 96 and 224 px) on 8 px images."""
    root = write_image_folder(tmp_path / "images", per_class=4, test=False) / "train"
    spec = importlib.util.spec_from_file_location("backbone_benchmark", REPO / "scripts" / "backbone_benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.main(["--root", str(root), "--sizes", "16", "--models", "resnet10t", "--images", "8",
                         "--steps", "1", "--batch", "2"])
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[2] for r in rows] == ["in memory", "streaming"]
    assert all(0 < float(r.split(" | ")[-1].rstrip(" |")) <= 1 for r in rows)


# --------------------------------------------------------------------------- backbone.freeze_stages

# (backbone, model, constructor arguments, stage count, what each stage after the first starts with)
STAGED = [("timm", "resnet10t", {}, 4, "net.layer{}."),
          ("timm", "convnext_atto", {}, 4, "net.stages.{}."),
          ("timm", "vit_tiny_patch16_224", TINY_VIT, 2, "net.blocks.{}."),
          ("timm", "efficientnet_b0", {}, 7, "net.blocks.{}."),
          ("timm", "mobilenetv3_small_050", {}, 6, "net.blocks.{}."),
          ("torchvision", "resnet18", {}, 4, "net.layer{}."),
          # the torchvision MobileNet is one flat `features` sequence: a stage per resolution (1/4 to 1/32),
          # beginning at its stride-2 blocks 1, 2, 4 and 9
          ("torchvision", "mobilenet_v3_small", {}, 4, None)]


@pytest.mark.parametrize("backbone,name,model_args,count,prefix", STAGED, ids=[s[1] for s in STAGED])
def test_library_models_name_their_stages_from_stem_to_head(backbone, name, model_args, count, prefix):
    model = build_backbone(backbone, PretrainedOptions(model_name=name, model_args=model_args or None), 3, 2,
                           (SIZE, SIZE))
    stages = model.stages()
    assert len(stages) == count
    names = [n for n, _ in model.named_parameters()]
    flat = [n for stage in stages for n in stage]
    assert flat == names[:len(flat)]  # disjoint, in order, the stem (the first parameters) in the first
    assert not any(n.startswith("classifier.") for n in flat)
    first = 1 if prefix and "layer" in prefix else 0  # ResNets count layer1-4, timm's blocks from 0
    if prefix:
        for k, stage in enumerate(stages[1:], start=1):
            # the last stage also holds what timm assigns to it (a ViT's final norm, EfficientNet's conv_head)
            inside = stage if k < len(stages) - 1 else stage[:1]
            assert all(n.startswith(prefix.format(k + first)) for n in inside), (k, stage[0])
    else:
        assert [stage[0].split(".")[2] for stage in stages[1:]] == ["2", "4", "9"]


def test_freezing_stages_leaves_them_out_of_the_optimiser_and_keeps_their_batchnorm_in_eval(tmp_path):
    trainer = trainer_for(RUN + ["backbone=timm", "backbone.model_name=resnet10t", "backbone.freeze_stages=2"],
                          tmp_path)
    model = trainer.model
    frozen = {n for stage in model.stages()[:2] for n in stage}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all((id(p) in optimised) == (n not in frozen) for n, p in model.named_parameters())
    model.train()  # what the trainer calls before each run of steps
    net = model.net
    assert not any(m.training for m in (net.bn1, net.layer1[0].bn1, net.layer2[0].downsample[2]))
    assert net.layer3[0].bn1.training and net.layer4[0].bn2.training and model.training
    model.eval()
    model.train()
    assert not net.layer2[0].bn2.training and net.layer3[0].bn2.training


def test_frozen_stages_keep_weights_and_batchnorm_statistics_through_training_and_resume(tmp_path):
    weights = tmp_path / "resnet10t.safetensors"
    start = save_weights(weights, "timm", "resnet10t", {})
    args = RUN + backbone_args("timm", "resnet10t", {}, weights) + ["backbone.freeze_stages=2"]
    code, _, err = run_cli(args + ["trainer.stop_at_step=2", "hydra.run.dir=run"], tmp_path)
    assert code == 0, err
    code, _, err = run_cli(["resume=run"], tmp_path)  # the resumed run freezes the same stages
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 4
    trained = {k[len("net."):]: v for k, v in state["model"].items() if k.startswith("net.")}
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key, value in trained.items():
        if key.startswith(frozen):  # weights, running_mean/var and num_batches_tracked as in the file
            assert torch.equal(value, start[key]), key
    for layer in ("layer3.", "layer4."):
        changed = [k for k in trained if k.startswith(layer) and not torch.equal(trained[k], start[k])]
        assert any(k.endswith(".conv1.weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
        assert any(k.endswith("num_batches_tracked") for k in changed)


@pytest.mark.parametrize("extra,fragments", [
    (["backbone=timm", "backbone.model_name=resnet10t", "backbone.freeze_stages=5"],
     ["backbone.freeze_stages=5", "timm model resnet10t has 4 stages; allowed 0 to 4"]),
    (["backbone=torchvision", "backbone.model_name=mobilenet_v3_small", "backbone.freeze_stages=9"],
     ["torchvision model mobilenet_v3_small has 4 stages"]),
    (["backbone=cnn", "backbone.freeze_stages=1"],
     ["backbone.freeze_stages=1", "has no stages; use backbone.freeze_features=true", "timm/torchvision"]),
    (["backbone=wrn28_2", "backbone.freeze_stages=2"], ["has no stages"]),
], ids=["too-many-timm", "too-many-torchvision", "cnn", "wrn"])
def test_freezing_more_stages_than_there_are_or_a_backbone_without_stages_gives_one_line(extra, fragments,
                                                                                         tmp_path):
    size = [] if extra[0] in ("backbone=cnn", "backbone=wrn28_2") else [f"backbone.image_size={SIZE}"]
    code, _, err = run_cli(RUN[:-1] + extra + size + ["hydra.run.dir=run"], tmp_path)
    assert_one_line_error(code, err, *fragments)

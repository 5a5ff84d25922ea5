"""Every option of every config group composes, and builds into a runnable trainer."""

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import ssl_cli.configs
from conftest import compose, write_image_folder
from ssl_cli.core.errors import UserError
from ssl_cli.engine.config import NAMED_GROUPS, check_config
from ssl_cli.engine.trainer import Trainer
from ssl_cli.methods import METHODS

CONFIGS = Path(ssl_cli.configs.__file__).parent
GROUPS = ["dataset", "backbone", "augmentation", "method", "optim", "scheduler", "trainer", "experiment", "debug",
          "sweep", "hparams_search"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group,option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_every_option_composes(group, option):
    if group == "hparams_search" and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip('hydra-optuna-sweeper is not installed (pip install "ssl-cli[sweeps]")')
    cfg = compose([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # raises on a dangling interpolation (the imagefolder root ??? is not one)


@pytest.mark.parametrize("group", sorted(NAMED_GROUPS))
def test_registries_match_config_groups(group):
    # Every registered builder has its YAML option and every YAML option a registered builder.
    assert set(NAMED_GROUPS[group].names()) == set(options(group))


# Data sets that can be built here without a download: the rest are checked for their missing-data error.
def _dataset_overrides(option, tmp_path):
    if option in ("imagefolder", "cifar10", "cifar100"):
        root = write_image_folder(tmp_path / option, classes=("a", "b", "c", "d"), per_class=6, size=8)
        return [f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.num_labels=8"]
    if option == "csv":
        root = write_image_folder(tmp_path / option, classes=("a", "b", "c", "d"), per_class=6, size=8)
        rows = [f"{f.relative_to(root)},{f.parent.name}" for f in sorted(root.rglob("*.png"))]
        (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        return [f"dataset.path={root / 'labels.csv'}", "dataset.image_size=8", "dataset.num_labels=8"]
    if option == "synthetic":
        return []
    if option == "digits":
        return []
    return None


BUILD = [(g, o) for g, o in ALL if g not in ("experiment", "sweep", "hparams_search")]
# A build takes one to several seconds: the fast tier builds each group's default option and every data set
# (most of which stop at once, with no data here); the other options are marked slow.
DEFAULTS = {("backbone", "cnn"), ("augmentation", "fixmatch"), ("method", "fixmatch"), ("optim", "sgd"),
            ("scheduler", "cosine"), ("trainer", "default"), ("debug", "smoke")}
SLOW_BUILDS = {(g, o) for g, o in BUILD if g != "dataset" and (g, o) not in DEFAULTS}


@pytest.mark.parametrize("group,option", [
    pytest.param(g, o, marks=pytest.mark.slow) if (g, o) in SLOW_BUILDS else (g, o) for g, o in BUILD],
    ids=[f"{g}={o}" for g, o in BUILD])
def test_every_option_builds(group, option, tmp_path):
    overrides = ["dataset=synthetic", "trainer.device=cpu", "trainer.max_steps=1"]
    if group == "dataset":
        extra = _dataset_overrides(option, tmp_path)
        if extra is None:  # torchvision formats we cannot fake: the missing-data error must be clean
            cfg = compose([f"dataset={option}", f"dataset.root={tmp_path / 'missing'}"])
            with pytest.raises(UserError, match="does not exist"):
                Trainer(check_config(cfg), tmp_path)
            return
        overrides = [f"dataset={option}", *extra, "trainer.device=cpu", "trainer.max_steps=1"]
    else:
        overrides.append(f"{group}={option}")
    if group == "backbone" and option in ("wrn28_8", "resnet18"):
        overrides.append("trainer.batch_size=2")
    cfg = compose(overrides)
    _, first_stage = METHODS.get(cfg.method.name).stages(cfg, tmp_path)[0]  # selfsup: its pretraining stage
    trainer = Trainer(check_config(first_stage), tmp_path)
    metrics = trainer.train_step(0)
    assert metrics["loss"].isfinite()


def test_experiment_presets_are_the_published_recipe():
    for n in (40, 250, 4000):
        cfg = compose([f"experiment=fixmatch_cifar10_{n}"])
        assert cfg.dataset.name == "cifar10" and cfg.dataset.num_labels == n
        assert cfg.backbone.name == "wrn28_2" and cfg.method.name == "fixmatch"
        assert cfg.method.unlabeled_ratio == 7 and cfg.method.confidence_threshold == 0.95
        assert cfg.optim.lr == 0.03 and cfg.optim.weight_decay == 0.0005 and cfg.optim.nesterov
        assert cfg.trainer.batch_size == 64 and cfg.trainer.max_steps == 2**20 and cfg.trainer.ema_decay == 0.999

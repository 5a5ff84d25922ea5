"""The run's configuration: what each group may hold (declared once, where its builder lives), the schema
Hydra composes from those declarations, and the one check that turns a composed config into typed options.

Each config group is backed by a registry (`dataset` -> DATASETS, `method` -> METHODS, ...) whose entries
carry their `Options` class; `augmentation` and `trainer` have one options class each. `register_schemas`
stores every declaration's defaults in Hydra's ConfigStore under `schema/<group>/<name>`, and each YAML
option in configs/ starts from its schema (`defaults: [/schema/method/fixmatch@_here_]`), adding only what
differs. `check_config` reads the same declarations: one rule, one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional, Tuple, Union

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ssl_cli.core import resolvers
from ssl_cli.core.errors import UserError, one_line
from ssl_cli.core.options import Options, defaults, from_config, option, show
from ssl_cli.core.registry import Registry
from ssl_cli.data import DATASETS, DatasetOptions
from ssl_cli.engine.accel import COMPILE_MODES
from ssl_cli.engine.loggers import LOGGERS
from ssl_cli.engine.optim import OPTIMIZERS, SCHEDULERS, OptimOptions, ScheduleOptions
from ssl_cli.engine.precision import PRECISIONS
from ssl_cli.methods import METHODS, MethodOptions
from ssl_cli.models import BACKBONES, BackboneOptions
from ssl_cli.transforms.views import AugmentOptions

CONFIG_MODULE = "ssl_cli.configs"
CONFIG_NAME = "train"
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed


@dataclass
class TrainerOptions(Options):
    """The `trainer` group: how long, how big, where, how often to evaluate and save."""

    group = "trainer"
    device: str = option("auto", "auto (CUDA if available) | cpu | cuda", choices=("auto", "cpu", "cuda"))
    max_steps: int = option(1500, "optimiser steps (FixMatch's recipe: 2^20)", low=1)
    batch_size: int = option(64, "labeled images per step; unlabeled = batch_size * method.unlabeled_ratio", low=1)
    eval_every: int = option(250, "evaluate (and log one line) every this many steps, and at the end", low=1)
    eval_batch_size: int = option(1024, "images per forward pass at evaluation", low=1)
    log_every: int = option(25, "refresh the progress bar's figures every this many steps", low=1)
    checkpoint_every: int = option(250, "write last.pt every this many steps, and at the end", low=1)
    stop_at_step: Optional[int] = option(None, "stop early at this step with a resumable checkpoint (the schedule "
                                               "still spans max_steps)", low=1)
    ema_decay: float = option(0.999, "evaluate an exponential moving average of the weights; 0 turns it off",
                              low=0, below=1)
    ema_warmup: bool = option(True, "decay min(ema_decay, (1+t)/(10+t)): the initial weights fade out fast in "
                                    "short runs")
    precision: str = option("auto", "auto (bf16 autocast on CUDA and on CPUs with AMX-BF16 or AVX-512 BF16, "
                                    "else fp32) | fp32 | bf16 (evaluation and load_model follow it)",
                            choices=PRECISIONS)
    channels_last: bool = option(True, "channels_last memory format (faster on CPU and CUDA)")
    num_threads: Optional[int] = option(None, "CPU threads for PyTorch; null keeps PyTorch's default", low=1, high=1024)
    compile: bool = option(False, "torch.compile the model (compiles at the first steps: minutes on a CPU)")
    compile_mode: str = option("default", "torch.compile mode", choices=COMPILE_MODES)
    reuse_cpu_memory: bool = option(True, "CPU: glibc keeps freed memory for the next step instead of "
                                          "page-faulting it in again (RSS stays at its peak)")
    nonfinite: str = option("stop", "a NaN/inf loss: stop (status diverged, last good checkpoint kept) | skip the "
                                    "step (one sync per step)", choices=("stop", "skip"))
    deterministic: bool = option(False, "torch.use_deterministic_algorithms: exact repeats and resumes")
    progress_bar: Union[str, bool] = option("auto", "auto (only on a terminal) | true | false",
                                            choices=("auto", True, False))
    grad_accumulation: int = option(1, "micro-batches per optimiser step: an effective batch larger than "
                                       "memory allows", low=1)
    devices: int = option(1, "processes to train with on this node (ssl-train starts them with torchrun; "
                             "under torchrun the world size comes from torchrun)", low=1, high=1024)
    sync_batchnorm: Union[str, bool] = option("auto", "BatchNorm statistics over the global batch: auto (on for "
                                                      "CUDA with more than one rank) | true | false",
                                              choices=("auto", True, False))
    dist_timeout: float = option(600.0, "seconds a rank waits in a collective for the others before it "
                                        "stops with an error (a dead rank must not hang the rest)", above=0)
    knn_k: int = option(200, "kNN monitor at every evaluation (labeled images as memory bank): neighbours", low=1)
    knn_temperature: float = option(0.1, "temperature of the kNN monitor's exp(similarity / T) votes", above=0)

    def check(self) -> None:
        cuda = self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())
        if self.sync_batchnorm is True and not cuda:
            raise UserError("trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm); on the CPU use "
                            "trainer.sync_batchnorm=auto or false")


@dataclass
class RunOptions(Options):
    """The top-level keys."""

    seed: int = option(0, "chooses the labeled split, the initial weights and all sampling", low=0, high=MAX_SEED)
    resume: Optional[str] = option(None, "a run directory (or its last.pt) to continue")


# Config groups with a registry of named options, and the groups with one options class.
NAMED_GROUPS: Dict[str, Registry] = {"dataset": DATASETS, "backbone": BACKBONES, "method": METHODS,
                                     "optim": OPTIMIZERS, "scheduler": SCHEDULERS}
SINGLE_GROUPS = {"augmentation": AugmentOptions, "trainer": TrainerOptions}
LOGGER_GROUP = "logger"  # a list group: several options at once, each under its own key
GROUPS: Tuple[str, ...] = ("dataset", "backbone", "augmentation", "method", "optim", "scheduler", "trainer")


def with_new_options(config: dict) -> dict:
    """A saved run config with the options added since it was written, at their defaults (so an older
    run resumes). Keys it has are kept as saved; unknown group names are left to check_config."""
    out = dict(config)
    for group, registry in NAMED_GROUPS.items():
        node = out.get(group)
        if isinstance(node, dict) and isinstance(node.get("name"), str) and node["name"] in registry:
            out[group] = {**defaults(registry.options(node["name"])), **node}
    for group, cls in SINGLE_GROUPS.items():
        if isinstance(out.get(group), dict):
            out[group] = {**defaults(cls), **out[group]}
    return out


@dataclass
class RunConfig:
    """A checked config: every group's typed options, and the plain config they came from."""

    cfg: DictConfig
    seed: int
    resume: Optional[str]
    names: Dict[str, str]  # group -> chosen option (dataset: digits, method: fixmatch, ...)
    dataset: DatasetOptions
    backbone: BackboneOptions
    augmentation: AugmentOptions
    method: MethodOptions
    optim: OptimOptions
    scheduler: ScheduleOptions
    trainer: TrainerOptions
    loggers: List[Tuple[str, Options]] = field(default_factory=list)  # logger=[tensorboard,mlflow]: (name, options)

    def plain(self) -> dict:
        """The resolved config as plain data (what checkpoints and stages.json keep)."""
        return OmegaConf.to_container(self.cfg, resolve=True)


# --------------------------------------------------------------------------- the schema Hydra composes


def register_schemas() -> None:
    """Stores every declaration's defaults where the YAML options find them (idempotent)."""
    resolvers.register()
    cs = ConfigStore.instance()
    for group, registry in NAMED_GROUPS.items():
        for name in registry.names():
            cs.store(group=f"schema/{group}", name=name, node={"name": name, **defaults(registry.options(name))})
    for group, cls in SINGLE_GROUPS.items():
        cs.store(group="schema", name=group, node=defaults(cls))
    for name in LOGGERS.names():
        cs.store(group="schema/logger", name=name, node=defaults(LOGGERS.options(name)))


def compose(overrides: List[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `ssl-train <overrides>` runs with (Hydra's compose API: nothing is written)."""
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)
    except UserError:
        raise
    except Exception as e:  # composition errors come in several Hydra and OmegaConf types
        raise UserError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


@lru_cache(maxsize=None)
def group_options(group: str) -> Tuple[str, ...]:
    """The options of a config group, as shipped in ssl_cli.configs (e.g. dataset: cifar10, digits, ...)."""
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    try:
        return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))
    except (FileNotFoundError, NotADirectoryError):
        return ()


# --------------------------------------------------------------------------- the check


def _plain(cfg: DictConfig) -> dict:
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception:  # a dangling interpolation: reported below
        missing = []
    if missing:  # a mandatory value (???) nobody set, e.g. dataset.root of dataset=imagefolder
        raise UserError(f"{missing[0]} must be set (e.g. {missing[0]}=...); this config has no default for it")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # a dangling ${...}: OmegaConf's message names the key
        raise UserError(f"cannot resolve the config: {one_line(e).split(' object_type=')[0]}") from None


def check_config(cfg: DictConfig) -> RunConfig:
    """The typed options of every group, or a one-line UserError naming the key, the value and what is allowed."""
    plain = _plain(cfg)
    for group in GROUPS:
        value = plain.get(group)
        if not isinstance(value, dict):
            what = "is missing" if value is None else f"must be a config group, got {show(value)}"
            raise UserError(f"{group} {what}; choose one with {group}=<option> ({', '.join(group_options(group))})")
    top = RunOptions.__dataclass_fields__
    unknown = sorted(k for k in plain if k not in top and k not in GROUPS and k != LOGGER_GROUP)
    if unknown:
        raise UserError(f"unknown key {', '.join(unknown)}; top-level keys: "
                        f"{', '.join(sorted([*top, *GROUPS, LOGGER_GROUP]))}")
    run = from_config(RunOptions, {k: v for k, v in plain.items() if k in top}, "the config")
    names, options = {}, {}
    for group, registry in NAMED_GROUPS.items():
        name = plain[group].get("name")
        if not isinstance(name, str) or name not in registry:
            choices = ", ".join(group_options(group) or registry.names())
            raise UserError(f"{group}.name must be one of {choices}, got {show(name)}")
        names[group] = name
        options[group] = from_config(registry.options(name), plain[group], f"{group}={name}")
    for group, cls in SINGLE_GROUPS.items():
        options[group] = from_config(cls, plain[group], group)
    checked = RunConfig(cfg=cfg, seed=run.seed, resume=run.resume, names=names, **options,
                        loggers=check_loggers(plain.get(LOGGER_GROUP)))
    _check_stages(checked)
    return checked


def check_loggers(node) -> List[Tuple[str, Options]]:
    """The `logger` group, a list of options each under its own key (logger.tensorboard, logger.mlflow)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        raise UserError(f"logger must be a list of loggers (logger=[tensorboard,mlflow]), got {show(node)}")
    out = []
    for name, values in node.items():
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS.names())} "
                            f"(logger=[tensorboard,mlflow]) or logger=none")
        out.append((name, from_config(LOGGERS.options(name), values or {}, f"logger={name}")))
    return out


def _check_stages(run: RunConfig) -> None:
    """A method trained in stages (selfsup) runs each stage under its own config: each is checked too."""
    from_stages = METHODS.get(run.names["method"]).stages(run.cfg, ".")
    for name, stage_cfg in from_stages:
        if stage_cfg is run.cfg:
            continue
        try:
            check_config(stage_cfg)
        except UserError as e:
            raise UserError(f"in its {name} stage, method={run.names['method']}: {e}") from None

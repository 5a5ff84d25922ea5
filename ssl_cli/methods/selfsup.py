"""Self-supervised pretraining, then fine-tuning with the labels: two stages in one run directory.

`selfsup` is a recipe rather than a per-step method: `stages` turns its config into two ordinary run
configs, which the engine trains one after the other into `<run dir>/pretrain` and `<run dir>/finetune`.
The pretraining stage runs `method.pretrain` (simclr or byol) with its own steps, batch size, optimiser
and schedule; the fine-tuning stage runs `method.finetune` (supervised, pseudolabel or fixmatch) from the
pretrained weights, with the run's own trainer, optimiser and schedule settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_cli.core.options import defaults, option
from ssl_cli.methods.base import METHODS, Method, MethodOptions

PRETRAIN_METHODS = ("simclr", "byol")
FINETUNE_METHODS = ("supervised", "pseudolabel", "fixmatch")


@dataclass
class SelfSupervisedOptions(MethodOptions):
    pretrain: str = option("simclr", "the pretraining method (its options: method.pretrain_options)",
                           choices=PRETRAIN_METHODS)
    finetune: str = option("fixmatch", "the fine-tuning method (its options: method.finetune_options)",
                           choices=FINETUNE_METHODS)
    freeze_backbone: bool = option(False, "true: fine-tune the classifier only (a linear probe trained by the "
                                          "finetune method)")
    pretrain_steps: int = option(1000, "optimiser steps of the pretraining stage", low=1)
    pretrain_batch_size: int = option(256, "images per pretraining step (two views each)", low=1)
    pretrain_options: Optional[Dict[str, Any]] = option(None, "options of the pretrain method, e.g. {temperature: 0.2}")
    finetune_options: Optional[Dict[str, Any]] = option(None, "options of the finetune method, e.g. "
                                                              "{confidence_threshold: 0.9}")
    pretrain_optim: Optional[Dict[str, Any]] = option(None, "merged over optim for the pretraining stage, e.g. {lr: 0.3}")
    pretrain_scheduler: Optional[Dict[str, Any]] = option(None, "merged over scheduler, e.g. "
                                                                "{name: warmup_cosine, warmup_steps: 100}")
    pretrain_augmentation: Optional[Dict[str, Any]] = option(None, "merged over augmentation, e.g. "
                                                                   "{crop_scale_min: 0.5}")


def method_node(name: str, overrides: Optional[dict]) -> DictConfig:
    """The `method` node of another method: its declared defaults with `overrides` on top."""
    return OmegaConf.merge({"name": name, **defaults(METHODS.options(name))}, overrides or {})


@METHODS.register("selfsup")
class SelfSupervised(Method):
    """Self-supervised pretraining (simclr or byol), then fine-tuning with the labels, in one run."""

    name = "selfsup"
    Options = SelfSupervisedOptions

    @classmethod
    def stages(cls, cfg: DictConfig, run_dir: Path) -> List[Tuple[str, DictConfig]]:
        o = SelfSupervisedOptions(**{k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
                                     if k != "name"})
        base = OmegaConf.to_container(cfg, resolve=True)
        pretrain = OmegaConf.create(base)
        pretrain.method = method_node(o.pretrain, o.pretrain_options)
        pretrain.trainer.max_steps = o.pretrain_steps
        pretrain.trainer.batch_size = o.pretrain_batch_size
        pretrain.optim = OmegaConf.merge(pretrain.optim, o.pretrain_optim or {})
        pretrain.scheduler = OmegaConf.merge(pretrain.scheduler, o.pretrain_scheduler or {})
        pretrain.augmentation = OmegaConf.merge(pretrain.augmentation, o.pretrain_augmentation or {})
        pretrain.backbone.freeze_features = False

        finetune = OmegaConf.create(base)
        finetune.method = method_node(o.finetune, o.finetune_options)
        finetune.backbone.init_from = str(Path(run_dir) / "pretrain")
        finetune.backbone.freeze_features = o.freeze_backbone
        return [("pretrain", pretrain), ("finetune", finetune)]

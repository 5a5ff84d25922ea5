"""Self-supervised pretraining, then fine-tuning with the labels: two stages in one run directory.

`selfsup` is a recipe rather than a per-step method: `stages` turns its config into two ordinary run
configs, which `train.run` trains one after the other into `<run dir>/pretrain` and `<run dir>/finetune`.
The pretraining stage runs `method.pretrain` (simclr or byol) with its own steps, batch size, optimiser
and schedule; the fine-tuning stage runs `method.finetune` (supervised, pseudolabel or fixmatch) from the
pretrained weights, with the run's own trainer, optimiser and schedule settings.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_cli.errors import UserError
from ssl_cli.methods.base import METHODS, Method

PRETRAIN_METHODS = ("simclr", "byol")
FINETUNE_METHODS = ("supervised", "pseudolabel", "fixmatch")


def method_defaults(name: str) -> DictConfig:
    """The shipped configs/method/<name>.yaml, as the `method` group would compose it."""
    return OmegaConf.create(resources.files("ssl_cli.configs").joinpath("method", f"{name}.yaml").read_text())


def _mapping(cfg: DictConfig, key: str) -> DictConfig:
    value = cfg.method.get(key)
    if value is None:
        return OmegaConf.create({})
    if not OmegaConf.is_dict(value):
        raise UserError(f"method.{key} must be a mapping of options, got {value!r}")
    return value


@METHODS.register("selfsup")
class SelfSupervised(Method):
    name = "selfsup"

    @classmethod
    def stages(cls, cfg: DictConfig, run_dir: Path) -> List[Tuple[str, DictConfig]]:
        m = cfg.method
        if m.pretrain not in PRETRAIN_METHODS:
            raise UserError(f"method.pretrain must be one of {', '.join(PRETRAIN_METHODS)}, got {m.pretrain!r}")
        if m.finetune not in FINETUNE_METHODS:
            raise UserError(f"method.finetune must be one of {', '.join(FINETUNE_METHODS)}, got {m.finetune!r}")
        if not isinstance(m.freeze_backbone, bool):
            raise UserError(f"method.freeze_backbone must be true or false, got {m.freeze_backbone!r}")
        for key in ("pretrain_steps", "pretrain_batch_size"):
            if not isinstance(m[key], int) or isinstance(m[key], bool) or m[key] < 1:
                raise UserError(f"method.{key} must be a positive integer, got {m[key]!r}")

        base = OmegaConf.to_container(cfg, resolve=True)
        pretrain = OmegaConf.create(base)
        pretrain.method = OmegaConf.merge(method_defaults(m.pretrain), _mapping(cfg, "pretrain_options"))
        pretrain.trainer.max_steps = m.pretrain_steps
        pretrain.trainer.batch_size = m.pretrain_batch_size
        pretrain.optim = OmegaConf.merge(pretrain.optim, _mapping(cfg, "pretrain_optim"))
        pretrain.scheduler = OmegaConf.merge(pretrain.scheduler, _mapping(cfg, "pretrain_scheduler"))
        pretrain.augmentation = OmegaConf.merge(pretrain.augmentation, _mapping(cfg, "pretrain_augmentation"))
        pretrain.backbone.freeze_features = False

        finetune = OmegaConf.create(base)
        finetune.method = OmegaConf.merge(method_defaults(m.finetune), _mapping(cfg, "finetune_options"))
        finetune.backbone.pretrained = str(Path(run_dir) / "pretrain")
        finetune.backbone.freeze_features = m.freeze_backbone
        return [("pretrain", pretrain), ("finetune", finetune)]

    def training_step(self, model, batch, step):  # pragma: no cover - stages() replaces it
        raise UserError("method=selfsup runs as two stages; train.run handles it")

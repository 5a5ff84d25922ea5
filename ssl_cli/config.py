"""Checks on the composed config that Hydra's composition cannot express.

Each check raises a UserError naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_cli.errors import UserError

# Keys of the `dataset` group that choose the label split; every other key goes to the loader.
SPLIT_KEYS = ("name", "num_labels", "label_fraction", "num_validation", "unlabeled_includes_labeled",
              "labeled_indices", "allow_flip")


def split_options(dataset_cfg: DictConfig) -> Tuple[dict, dict]:
    """(split options, loader options) of the dataset group."""
    opts = OmegaConf.to_container(dataset_cfg, resolve=True)
    split = {k: v for k, v in opts.items() if k in SPLIT_KEYS}
    loader = {k: v for k, v in opts.items() if k not in SPLIT_KEYS}
    return split, loader


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not _is_int(value) or value < 1:
        raise UserError(f"{key} must be a positive integer, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    for key in ("trainer.max_steps", "trainer.batch_size", "trainer.eval_every", "trainer.eval_batch_size",
                "trainer.log_every", "trainer.checkpoint_every"):
        _positive_int(cfg, key)
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {cfg.seed!r}")
    stop = cfg.trainer.get("stop_at_step")
    if stop is not None and (not _is_int(stop) or stop < 1):
        raise UserError(f"trainer.stop_at_step must be a positive integer or null, got {stop!r}")
    if cfg.trainer.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"trainer.precision must be auto, fp32 or bf16, got {cfg.trainer.precision!r}")
    if not isinstance(cfg.trainer.channels_last, bool):
        raise UserError(f"trainer.channels_last must be true or false, got {cfg.trainer.channels_last!r}")
    if cfg.trainer.get("nonfinite", "stop") not in ("stop", "skip"):
        raise UserError(f"trainer.nonfinite must be stop or skip, got {cfg.trainer.nonfinite!r}")
    ema = cfg.trainer.ema_decay
    if not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0 <= ema < 1:
        raise UserError(f"trainer.ema_decay must be in [0, 1) (0 turns the EMA off), got {ema!r}")
    d = cfg.dataset
    num_labels, fraction = d.get("num_labels"), d.get("label_fraction")
    if d.get("labeled_indices") is None:
        if (num_labels is None) == (fraction is None):
            raise UserError("set exactly one of dataset.num_labels and dataset.label_fraction "
                            "(e.g. dataset.num_labels=40 dataset.label_fraction=null)")
        if num_labels is not None and not _is_int(num_labels):
            raise UserError(f"dataset.num_labels must be an integer, got {num_labels!r}")
        if fraction is not None and (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
                                     or not 0 < fraction <= 1):
            raise UserError(f"dataset.label_fraction must be in (0, 1], got {fraction!r}")
    nval = d.get("num_validation", 0)
    if not _is_int(nval) or nval < 0:
        raise UserError(f"dataset.num_validation must be an integer >= 0, got {nval!r}")

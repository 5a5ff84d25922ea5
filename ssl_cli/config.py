"""Checks on the composed config that Hydra's composition cannot express.

Each check raises a UserError naming the key, the bad value and what is allowed. `check_config` runs
before anything is built (and, from the command line, before Hydra creates the run directory), so a
bad value never reaches a builder as a wrong type and never ends in a traceback.
"""

from __future__ import annotations

import inspect
import math
import typing
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_cli.errors import UserError

# Keys of the `dataset` group that choose the label split; every other key goes to the loader.
SPLIT_KEYS = ("name", "num_labels", "label_fraction", "num_validation", "unlabeled_includes_labeled",
              "labeled_indices", "allow_flip")

# Config groups with one option each in the composed config; all but `trainer` name their builder.
GROUPS = ("dataset", "backbone", "augmentation", "method", "optim", "scheduler", "trainer")
NAMED_GROUPS = ("dataset", "backbone", "method", "optim", "scheduler")

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
MAX_THREADS = 1024

# Augmentation values with a range (inclusive bounds; None: unbounded on that side).
AUGMENT_RANGES = {
    "translate": (0.0, 0.5), "apply_prob": (0.0, 1.0), "cutout_size": (0.0, 1.0), "rotation": (0.0, 180.0),
    "shift": (0.0, 1.0), "crop_scale_min": (0.0, 1.0), "jitter": (0.0, None), "jitter_prob": (0.0, 1.0),
    "grayscale_prob": (0.0, 1.0), "num_ops": (0, 64),
}


def split_options(dataset_cfg: DictConfig) -> Tuple[dict, dict]:
    """(split options, loader options) of the dataset group."""
    opts = OmegaConf.to_container(dataset_cfg, resolve=True)
    split = {k: v for k, v in opts.items() if k in SPLIT_KEYS}
    loader = {k: v for k, v in opts.items() if k not in SPLIT_KEYS}
    return split, loader


# --------------------------------------------------------------------------- value kinds


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def _show(value) -> str:
    """A value as the error message shows it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not _is_int(value) or value < 1:
        raise UserError(f"{key} must be a positive integer, got {_show(value)}")


def _in_unit_interval(value, *, open_low=False) -> bool:
    return _is_finite_number(value) and (0 < value if open_low else 0 <= value) and value <= 1


# --------------------------------------------------------------------------- the shipped config groups


@lru_cache(maxsize=None)
def group_options(group: str) -> Tuple[str, ...]:
    """The options of a config group, as shipped in ssl_cli.configs (e.g. dataset: cifar10, digits, ...)."""
    folder = resources.files("ssl_cli.configs").joinpath(group)
    try:
        return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))
    except (FileNotFoundError, NotADirectoryError):
        return ()


@lru_cache(maxsize=None)
def _group_keys(group: str) -> Dict[str, object]:
    """Every key any option of `group` sets, with the default value of the first option that sets it."""
    keys: Dict[str, object] = {}
    folder = resources.files("ssl_cli.configs").joinpath(group)
    for option in group_options(group):
        cfg = OmegaConf.create(folder.joinpath(f"{option}.yaml").read_text())
        for k, v in OmegaConf.to_container(cfg, resolve=False).items():
            if k != "defaults":
                keys.setdefault(k, v)
    return keys


@lru_cache(maxsize=None)
def top_level_keys() -> Tuple[str, ...]:
    """Keys allowed at the top of the config: train.yaml's own keys and its config groups."""
    main = OmegaConf.to_container(OmegaConf.create(
        resources.files("ssl_cli.configs").joinpath("train.yaml").read_text()), resolve=False)
    keys = {k for k in main if k not in ("defaults", "hydra")}
    for entry in main.get("defaults", []):
        if isinstance(entry, dict):
            keys.update(k for k in entry if not k.startswith("override ") and "/" not in k)
    return tuple(sorted(keys | set(GROUPS)))


# --------------------------------------------------------------------------- builder signatures


def _expected_kinds(annotation, default) -> Optional[set]:
    """What a parameter takes: a set of 'bool', 'int', 'number', 'str', 'list', 'none'; None if unknown."""
    kinds: set = set()
    if annotation is not inspect.Parameter.empty and annotation is not None:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation) if origin is typing.Union else (annotation,)
        for arg in args:
            arg_origin = typing.get_origin(arg) or arg
            if arg is type(None):
                kinds.add("none")
            elif arg is bool:
                kinds.add("bool")
            elif arg is int:
                kinds.add("int")
            elif arg is float:
                kinds.add("number")
            elif arg is str:
                kinds.add("str")
            elif arg_origin in (list, tuple, typing.Sequence) or arg_origin is getattr(typing, "Sequence", None):
                kinds.add("list")
            else:
                return None  # a type this check does not know: leave it to the builder
    elif default is not inspect.Parameter.empty and default is not None:
        if isinstance(default, bool):
            kinds.add("bool")
        elif isinstance(default, (int, float)):
            kinds.add("number")  # without an annotation an int default may still take a float
        elif isinstance(default, str):
            kinds.add("str")
        elif isinstance(default, (list, tuple)):
            kinds.add("list")
        else:
            return None
    else:
        return None
    if default is None:
        kinds.add("none")
    return kinds


def _describe(kinds: set) -> str:
    words = []
    if "bool" in kinds:
        words.append("true or false")
    if "int" in kinds:
        words.append("an integer")
    if "number" in kinds:
        words.append("a finite number")
    if "str" in kinds:
        words.append("a string")
    if "list" in kinds:
        words.append("a list")
    if "none" in kinds:
        words.append("null")
    return " or ".join(words)


def _fits(value, kinds: set) -> bool:
    if value is None:
        return "none" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "number"}) and (value.bit_length() < 64 or "number" in kinds)
    if isinstance(value, float):
        return "number" in kinds and math.isfinite(value)
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, (list, tuple)):
        return "list" in kinds and all(_is_finite_number(v) or isinstance(v, str) for v in value)
    return False  # a mapping where a plain value belongs


def _signature(builder, skip: Tuple[str, ...]) -> Dict[str, Tuple[object, object]]:
    """{option: (annotation, default)} of a builder function or class (its __init__)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    hints: dict = {}
    for source in ((builder, target) if inspect.isclass(builder) else (builder,)):  # a dataclass: its fields
        try:
            hints.update(typing.get_type_hints(source))
        except Exception:  # an annotation that cannot be resolved here: fall back to the defaults' types
            pass
    out = {}
    for p in inspect.signature(target).parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = (hints.get(p.name, p.annotation if not isinstance(p.annotation, str) else inspect.Parameter.empty),
                       p.default)
    return out


def check_options(group: str, options: dict, builder, skip: Tuple[str, ...] = (), strict: bool = False,
                  label: Optional[str] = None) -> None:
    """Each option must have the type of the builder's parameter it feeds (its annotation, else its default's).

    With `strict`, options the builder does not take are an error here (otherwise the builder reports them).
    """
    params = _signature(builder, skip)
    label = label or group
    if strict:
        unknown = sorted(k for k in options if k not in params and k != "name")
        if unknown:
            raise UserError(f"{label} has no option {', '.join(unknown)}; its options: {', '.join(params) or 'none'}")
    missing = [k for k, (_, default) in params.items() if default is inspect.Parameter.empty and k not in options]
    if missing:
        raise UserError(f"{group}.{missing[0]} is missing; {label} needs it (e.g. removed with ~{group}.{missing[0]}?)")
    for key, value in options.items():
        if key not in params:
            continue
        kinds = _expected_kinds(*params[key])
        if kinds is not None and not _fits(value, kinds):
            raise UserError(f"{group}.{key} must be {_describe(kinds)}, got {_show(value)}")


# --------------------------------------------------------------------------- the checks


def _resolved(cfg: DictConfig) -> dict:
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception:  # a dangling interpolation: reported below
        missing = []
    if missing:  # a mandatory value (???) nobody set, e.g. dataset.root of dataset=imagefolder
        raise UserError(f"{missing[0]} must be set (e.g. {missing[0]}=...); this config has no default for it")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # a dangling ${...}: OmegaConf's message names the key
        text = " ".join(str(e).split())
        raise UserError(f"cannot resolve the config: {text.split(' object_type=')[0]}") from None


def _check_structure(cfg: DictConfig, plain: dict) -> None:
    for group in GROUPS:
        value = plain.get(group)
        if not isinstance(value, dict):
            choices = ", ".join(group_options(group)) or "none"
            what = "is missing" if value is None else f"must be a config group, got {_show(value)}"
            raise UserError(f"{group} {what}; choose one with {group}=<option> ({choices})")
    unknown = sorted(k for k in plain if k not in top_level_keys())
    if unknown:
        raise UserError(f"unknown key {', '.join(unknown)}; top-level keys: {', '.join(top_level_keys())}")
    for group in NAMED_GROUPS:
        name = plain[group].get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{group}.name must be one of {', '.join(group_options(group))}, got {_show(name)}")
    resume = plain.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise UserError(f"resume must be a run directory or a checkpoint file, got {_show(resume)}")


def _check_trainer(trainer: dict) -> None:
    known = _group_keys("trainer")
    unknown = sorted(k for k in trainer if k not in known)
    if unknown:
        raise UserError(f"trainer has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    missing = sorted(k for k in ("max_steps", "batch_size", "eval_every", "eval_batch_size", "log_every",
                                 "checkpoint_every", "device", "precision", "ema_decay", "channels_last",
                                 "deterministic", "progress_bar", "ema_warmup", "nonfinite") if k not in trainer)
    if missing:
        raise UserError(f"trainer.{missing[0]} is missing; it must be set (default: {known.get(missing[0])!r})")
    for key in ("max_steps", "batch_size", "eval_every", "eval_batch_size", "log_every", "checkpoint_every",
                "grad_accumulation", "knn_k"):
        if key in trainer and (not _is_int(trainer[key]) or trainer[key] < 1):
            raise UserError(f"trainer.{key} must be a positive integer, got {_show(trainer[key])}")
    stop = trainer.get("stop_at_step")
    if stop is not None and (not _is_int(stop) or stop < 1):
        raise UserError(f"trainer.stop_at_step must be a positive integer or null, got {_show(stop)}")
    threads = trainer.get("num_threads")
    if threads is not None and (not _is_int(threads) or not 1 <= threads <= MAX_THREADS):
        raise UserError(f"trainer.num_threads must be an integer in 1..{MAX_THREADS} or null, got {_show(threads)}")
    if trainer["device"] not in ("auto", "cpu", "cuda"):
        raise UserError(f"trainer.device must be auto, cpu or cuda, got {_show(trainer['device'])}")
    if trainer["precision"] not in ("auto", "fp32", "bf16"):
        raise UserError(f"trainer.precision must be auto, fp32 or bf16, got {_show(trainer['precision'])}")
    if trainer["nonfinite"] not in ("stop", "skip"):
        raise UserError(f"trainer.nonfinite must be stop or skip, got {_show(trainer['nonfinite'])}")
    if not (trainer["progress_bar"] == "auto" or isinstance(trainer["progress_bar"], bool)):
        raise UserError(f"trainer.progress_bar must be auto, true or false, got {_show(trainer['progress_bar'])}")
    ema = trainer["ema_decay"]
    if not _is_finite_number(ema) or not 0 <= ema < 1:
        raise UserError(f"trainer.ema_decay must be in [0, 1) (0 turns the EMA off), got {_show(ema)}")
    temperature = trainer.get("knn_temperature", 1.0)
    if not _is_finite_number(temperature) or temperature <= 0:
        raise UserError(f"trainer.knn_temperature must be a number > 0, got {_show(temperature)}")
    # Everything else by the type of its shipped default: true/false keys take only true or false, etc.
    for key, value in trainer.items():
        default = known.get(key)
        if isinstance(default, bool) and not isinstance(value, bool) and key != "progress_bar":
            raise UserError(f"trainer.{key} must be true or false, got {_show(value)}")
        if _is_number(default) and not _is_finite_number(value):
            raise UserError(f"trainer.{key} must be a finite number, got {_show(value)}")


def _check_dataset(d: dict) -> None:
    num_labels, fraction = d.get("num_labels"), d.get("label_fraction")
    if d.get("labeled_indices") is None:
        if (num_labels is None) == (fraction is None):
            raise UserError("set exactly one of dataset.num_labels and dataset.label_fraction "
                            "(e.g. dataset.num_labels=40 dataset.label_fraction=null)")
        if num_labels is not None and not _is_int(num_labels):
            raise UserError(f"dataset.num_labels must be an integer, got {_show(num_labels)}")
        if fraction is not None and not _in_unit_interval(fraction, open_low=True):
            raise UserError(f"dataset.label_fraction must be in (0, 1], got {_show(fraction)}")
    elif not isinstance(d["labeled_indices"], str):
        raise UserError(f"dataset.labeled_indices must be a labeled_indices.json or a run directory, "
                        f"got {_show(d['labeled_indices'])}")
    nval = d.get("num_validation", 0)
    if not _is_int(nval) or nval < 0:
        raise UserError(f"dataset.num_validation must be an integer >= 0, got {_show(nval)}")
    for key in ("unlabeled_includes_labeled", "allow_flip"):
        if key in d and not isinstance(d[key], bool):
            raise UserError(f"dataset.{key} must be true or false, got {_show(d[key])}")
    from ssl_cli.data import DATASETS

    loader = DATASETS.get(d["name"])
    check_options("dataset", {k: v for k, v in d.items() if k not in SPLIT_KEYS}, loader, label=f"dataset={d['name']}")
    for key in ("num_classes", "num_train", "num_test", "image_size"):
        value = d.get(key)
        if _is_int(value) and value < 1:
            raise UserError(f"dataset.{key} must be a positive integer, got {value}")
    if "channels" in d and d["channels"] not in (1, 3) and (d["channels"] is not None or d["name"] != "imagefolder"):
        allowed = "1 or 3" + (" or null (as stored)" if d["name"] == "imagefolder" else "")
        raise UserError(f"dataset.channels must be {allowed} (grey or RGB images), got {_show(d['channels'])}")
    fraction = d.get("test_fraction")
    if fraction is not None and _is_number(fraction) and not 0 < fraction < 1:
        raise UserError(f"dataset.test_fraction must be in (0, 1), got {_show(fraction)}")


def _check_augmentation(a: dict) -> None:
    from ssl_cli.augment import AugmentConfig

    check_options("augmentation", a, AugmentConfig, strict=True)
    for key, (low, high) in AUGMENT_RANGES.items():
        value = a.get(key)
        if value is None or not _is_number(value):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise UserError(f"augmentation.{key} must be in {allowed}, got {_show(value)}")


def _check_groups(plain: dict) -> None:
    from ssl_cli.backbones import BACKBONES
    from ssl_cli.methods import METHODS
    from ssl_cli.optim import build_optimizer, build_scheduler

    backbone, method = plain["backbone"], plain["method"]
    check_options("backbone", backbone, BACKBONES.get(backbone["name"]), skip=("in_channels", "num_classes", "image_size"),
                  label=f"backbone={backbone['name']}")
    check_options("method", method, METHODS.get(method["name"]), skip=("num_classes", "max_steps"),
                  label=f"method={method['name']}")
    check_options("optim", plain["optim"], build_optimizer, skip=("model", "name"), strict=True,
                  label=f"optim={plain['optim']['name']}")
    check_options("scheduler", plain["scheduler"], build_scheduler, skip=("optimizer", "name", "max_steps"),
                  strict=True, label=f"scheduler={plain['scheduler']['name']}")
    from ssl_cli.optim import SCHEDULES, check_optimizer_options

    check_optimizer_options(**plain["optim"])
    scheduler = plain["scheduler"]
    if scheduler["name"] not in SCHEDULES:
        raise UserError(f"unknown scheduler '{scheduler['name']}'; choose one of: {', '.join(SCHEDULES)}")
    if scheduler.get("warmup_steps", 0) < 0:
        raise UserError(f"scheduler.warmup_steps must be >= 0, got {scheduler['warmup_steps']}")


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix[:-1]}[{i}].")
    else:
        yield prefix[:-1], tree


def check_config(cfg: DictConfig) -> None:
    plain = _resolved(cfg)
    for key, value in _leaves(plain):
        if _is_int(value) and not -2**63 <= value < 2**63:
            raise UserError(f"{key}={_show(value)} is out of range: integers must fit in 64 bits")
    _check_structure(cfg, plain)
    _check_trainer(plain["trainer"])
    seed = plain.get("seed")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer in 0..2^63-1, got {_show(seed)}")
    _check_dataset(plain["dataset"])
    _check_augmentation(plain["augmentation"])
    _check_groups(plain)
    _check_stages(cfg)


def _check_stages(cfg: DictConfig) -> None:
    """A method trained in stages (selfsup) runs each stage under its own config: each is checked too."""
    from pathlib import Path

    from ssl_cli.methods import METHODS

    stages = getattr(METHODS.get(cfg.method.name), "stages", None)
    if stages is None:
        return
    for name, stage_cfg in stages(cfg, Path(".")):
        if stage_cfg is cfg:
            continue
        try:
            check_config(stage_cfg)
        except UserError as e:
            raise UserError(f"in its {name} stage, method={cfg.method.name}: {e}") from None

"""What `ssl-train` checks before Hydra starts, so that bad input ends in one line and touches nothing.

Hydra creates the run directory and writes `.hydra/` into it before the task runs, and prints its own
multi-line errors. So the command line is checked here first, without writing anything:

* flags: Hydra's flags, declared here as its --help lists them; a bad flag is one line, not usage text;
* overrides: composed once with Hydra's compose API (syntax, unknown keys, unknown group options);
* values: `engine.config.check_config` on the composed config (each option against its declaration);
* the run directory: an earlier run there is never overwritten (`resume=` continues it instead);
* `resume=`: the checkpoint exists and is an ssl-train checkpoint, the overrides do not contradict the
  config it was trained with, and an image folder it was trained on still has the classes and image
  shape the checkpoint's model was built for;
* sweeps (`-m`): every swept value is valid, and the sweep directory holds no earlier sweep.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import List, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ssl_cli.core.errors import UserError, one_line
from ssl_cli.data.folders import describe_image_folder
from ssl_cli.engine.checkpoint import read_checkpoint
from ssl_cli.engine.config import GROUPS, check_config, compose, group_options
from ssl_cli.engine.outputs import LAST, RUN_FILES, STAGES
from ssl_cli.engine.run import RESUME_MAY_CHANGE, resolve_resume
from ssl_cli.models import BACKBONES, build_backbone

CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "config")
MAX_SWEEP_COMPOSES = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage text, then the message: one line instead
        if message.startswith("unrecognized arguments") and "=" in message:
            message += "; flags such as -m go before the key=value overrides"
        raise UserError(f"{message} (see ssl-train --help)")


def parse_flags(argv: List[str]) -> argparse.Namespace:
    """Hydra's command-line flags (as its --help lists them), failing with a UserError instead of usage text."""
    # No abbreviations: `--e x` would otherwise be read as `--experimental-rerun x`; refuse it instead.
    p = _Parser(add_help=False, prog="ssl-train", allow_abbrev=False)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--help", "-h", action="store_true")
    p.add_argument("--hydra-help", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    p.add_argument("--resolve", action="store_true")
    p.add_argument("--package", "-p")
    p.add_argument("--run", "-r", action="store_true")
    p.add_argument("--multirun", "-m", action="store_true")
    p.add_argument("--shell-completion", "-sc", action="store_true")
    p.add_argument("--config-path", "-cp")
    p.add_argument("--config-name", "-cn")
    p.add_argument("--config-dir", "-cd")
    p.add_argument("--experimental-rerun")
    p.add_argument("--info", "-i", const="all", nargs="?",
                   choices=["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"])
    return p.parse_args(argv)


def job_config(cfg: DictConfig) -> DictConfig:
    """The config the job sees: without the `hydra` node, with ${hydra:...} resolvable as in the run."""
    try:
        run_dir = str(cfg.hydra.run.dir)
        cfg = copy.deepcopy(cfg)
        OmegaConf.set_struct(cfg, False)
        cfg.hydra.runtime.output_dir = str(Path(run_dir).absolute())
        HydraConfig.instance().set_config(cfg)
    except Exception as e:
        raise UserError(f"cannot resolve the run directory: {one_line(e)}") from None
    job = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return job


def holds_run(run_dir: Path) -> Optional[str]:
    """Why `run_dir` holds a run that must not be overwritten, or None.

    A directory whose only run failed before training (its summary says so, and it has no checkpoint or
    metrics) may be used again: there is nothing in it to lose.
    """
    try:
        present = [f for f in RUN_FILES if (run_dir / f).exists()]
        if present:
            return present[0]
        summary = run_dir / "summary.json"
        if summary.exists():
            try:
                status = json.loads(summary.read_text()).get("status")
            except (OSError, ValueError, AttributeError):
                status = None
            if status != "failed":
                return "summary.json"
    except OSError:
        return None  # cannot even look: Hydra will report the directory itself
    return None


def check_can_create(folder: Path, key: str) -> None:
    """`folder` is a directory already, or can be made one (Hydra creates it next)."""
    if not str(folder) or str(folder) in ("''", '""'):
        raise UserError(f"{key} is empty; give a directory for the run's outputs")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key}={folder} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{key}={folder}: cannot create it ({e.strerror or e})") from None


def check_run_dir(run_dir: Path) -> None:
    what = holds_run(run_dir)
    if what is None:
        return
    if what in (LAST, STAGES):
        raise UserError(f"{run_dir} already holds a run ({what}); continue it with resume={run_dir} "
                        f"or pick another hydra.run.dir")
    raise UserError(f"{run_dir} already holds a run ({what}); pick another hydra.run.dir")


# --------------------------------------------------------------------------- resume


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


_MISSING = object()


def _select(tree, key):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _is_resume_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE) or key.startswith("hydra")


def _job_leaves(overrides: List[str]) -> dict:
    return _leaves(OmegaConf.to_container(job_config(compose(overrides, return_hydra_config=True)), resolve=True))


def touched_keys(overrides: List[str]) -> List[str]:
    """The config keys the command line sets: a key override names its key; a group override (backbone=x)
    names the group's `name`; a preset that spreads over the whole config (debug=smoke, experiment=...)
    names every key it changes."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base = [o.input_line for o in parsed if _is_resume_key(o.key_or_group)]
    base_leaves = None
    keys: List[str] = []
    for o in parsed:
        key = o.key_or_group
        if _is_resume_key(key):
            continue
        if key in GROUPS and o.package is None:
            keys.append(f"{key}.name")
        elif "." not in key and group_options(key):  # a preset packaged at the top (_global_)
            if base_leaves is None:
                base_leaves = _job_leaves(base)
            with_it = _job_leaves(base + [o.input_line])
            keys += [k for k, v in with_it.items() if base_leaves.get(k, _MISSING) != v]
            keys += [k for k in base_leaves if k not in with_it]
        else:
            keys.append(key)
    return [k for k in dict.fromkeys(keys) if not _is_resume_key(k)]


def resume_conflicts(saved: dict, given: dict, keys: List[str]) -> List[str]:
    """The keys the command line sets (`keys`) whose value in `given` differs from the saved config."""
    out = []
    for key in keys:
        had, wants = _select(saved, key), _select(given, key)
        if had == wants:
            continue
        group = key[:-len(".name")] if key.endswith(".name") else None
        if group in GROUPS:
            out.append(f"{group}={_show(wants if wants is not _MISSING else None)} "
                       f"(the checkpoint has {group}={_show(had if had is not _MISSING else None)})")
        elif wants is _MISSING:
            out.append(f"~{key} (the checkpoint has {key}={_show(had)})")
        elif had is _MISSING:
            out.append(f"{key}={_show(wants)} (the checkpoint has no {key})")
        else:
            out.append(f"{key}={_show(wants)} (the checkpoint has {key}={_show(had)})")
    return out


def _shape_now(saved: DictConfig) -> Optional[dict]:
    """The model the data now on disk needs, where that can be told without decoding (image folders)."""
    d = saved.get("dataset") or {}
    root = d.get("root")
    if d.get("name") == "imagefolder" or (d.get("name") in ("cifar10", "cifar100") and root
                                          and (Path(str(root)) / "train").is_dir()):
        now = describe_image_folder(root, d.get("image_size"), d.get("channels"))
        return None if now is None else {"num_classes": now["num_classes"], "channels": now["in_channels"],
                                         "image_size": now["image_size"]}
    return None


def weights_mismatch(state: dict) -> List[str]:
    """How the checkpoint's weights differ from the network its model card describes ([] if they fit).

    The network is built on PyTorch's meta device: shapes only, no memory, no data needed.
    """
    card = state.get("model_card") or {}
    weights = state.get("model")
    if not isinstance(weights, dict):
        return ["it holds no model weights"]
    try:
        options = BACKBONES.options(card["backbone"])(**card["backbone_options"])
        with torch.device("meta"):
            model = build_backbone(card["backbone"], options, card["channels"], card["num_classes"],
                                   card["image_size"])
    except Exception:  # not enough information to rebuild it: the run itself will tell
        return []
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    out = [f"{k} is {list(got[k])} in the checkpoint, {list(v)} in the model" for k, v in expected.items()
           if k in got and got[k] != v]
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing:
        out.append(f"{len(missing)} weight(s) of the model missing (e.g. {missing[0]})")
    if unexpected:
        out.append(f"{len(unexpected)} weight(s) the model does not have (e.g. {unexpected[0]})")
    return out


def _check_is_run_checkpoint(path: Path, resume: str) -> None:
    state = read_checkpoint(path, mmap=True)  # memory-mapped: cheap even for a large checkpoint
    missing = list(CHECKPOINT_KEYS) if not isinstance(state, dict) else [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else f"no {', '.join(missing)} in it"
        raise UserError(f"resume={resume}: {path} is not a checkpoint ssl-train can continue ({what})")
    if not isinstance(state["config"], dict):
        raise UserError(f"resume={resume}: {path} holds no config to continue with")


def _shown(items: List[str]) -> str:
    return "; ".join(items[:3]) + (f"; and {len(items) - 3} more" if len(items) > 3 else "")


def check_resume(cfg: DictConfig, overrides: List[str]) -> DictConfig:
    """The config the resumed run continues with; a UserError if it cannot or must not continue."""
    job = job_config(cfg)
    resume = str(job.resume)
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserError(f"resume={resume}: no such run directory or checkpoint file")
    if path.is_dir() and not (path / LAST).is_file() and not (path / STAGES).is_file():
        raise UserError(f"resume={resume}: {path.absolute()} holds no {LAST} (give the directory of a run "
                        f"that wrote a checkpoint, or a checkpoint file)")
    checkpoint = path / LAST if path.is_dir() else path
    try:
        if checkpoint.is_file():  # look inside before resolve_resume relies on what should be there
            _check_is_run_checkpoint(checkpoint, resume)
        saved, state = resolve_resume(job)
    except UserError as e:
        raise UserError(str(e) if str(e).startswith("resume=") else f"resume={resume}: {e}") from None
    except Exception as e:  # a file torch can read that is not an ssl-train checkpoint
        raise UserError(f"resume={resume}: not a checkpoint written by ssl-train "
                        f"({type(e).__name__}: {one_line(e)[:120]})") from None
    # The overrides against the run's saved config: only what may change on resume may differ.
    conflicts = resume_conflicts(OmegaConf.to_container(saved, resolve=True),
                                 OmegaConf.to_container(job, resolve=True), touched_keys(overrides))
    if conflicts:
        raise UserError(f"resume={resume} continues the run with the config it was started with, but the command "
                        f"line changes it: {_shown(conflicts)}. Only trainer.device and trainer.stop_at_step may "
                        f"change on resume; start a new run for anything else")
    card = state.get("model_card") if state is not None else None
    if card:
        now = _shape_now(saved)
        backbone = saved.backbone.name if saved.get("backbone") is not None else None
        expected = {"backbone": backbone, **(now or {})}
        diffs = [f"{k} {_show(card.get(k))} in the checkpoint, {_show(v)} now"
                 for k, v in expected.items() if v is not None and card.get(k) != v]
        if diffs:
            where = f"the data in {saved.dataset.get('root')}" if now else "the config"
            raise UserError(f"resume={resume}: the checkpoint's model does not fit {where}: {', '.join(diffs)}; "
                            f"restore the data it was trained on, or start a new run")
        wrong = weights_mismatch(state)
        if wrong:
            size = "x".join(str(x) for x in [card.get("channels"), *(card.get("image_size") or [])])
            raise UserError(f"resume={resume}: the checkpoint's weights are not those of the {card.get('backbone')} "
                            f"for {card.get('num_classes')} classes of {size} images it says it holds: {_shown(wrong)}")
    return saved


# --------------------------------------------------------------------------- sweeps


def check_sweep(overrides: List[str]) -> None:
    """Every swept value is valid; the sweep directory holds no earlier sweep.

    The sweep's first combination is composed and checked once. A swept group option (method=a,b) is
    composed for each of its values; a swept key (optim.lr=0.1,0.3) is only checked: each value set into
    the composed config, against the key's declaration, with no further composition.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:
        raise UserError(one_line(e)) from None
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    cfg = compose(plain, return_hydra_config=True)
    composes = 1
    for o in sweeps:
        if not o.is_discrete_sweep() or o.is_choice_sweep() and o.value_type.name == "GLOB_CHOICE_SWEEP":
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception as e:
            raise UserError(one_line(e)) from None
        key = o.get_key_element()
        group = key in GROUPS or (("." not in key) and bool(group_options(key)))
        for v in values:
            if group:
                composes += 1
                if composes <= MAX_SWEEP_COMPOSES:
                    compose(plain + [f"{key}={v}"], return_hydra_config=True)
            elif not key.startswith("hydra"):
                _check_value(cfg, key, v)
    try:
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
    except Exception:
        return  # depends on swept values: left to Hydra
    if not str(cfg.hydra.sweep.dir):
        raise UserError("hydra.sweep.dir is empty; give a directory for the sweep's outputs")
    if (sweep_dir / "multirun.yaml").exists() or any(
            holds_run(d) for d in (sweep_dir.iterdir() if sweep_dir.is_dir() else []) if d.is_dir()):
        raise UserError(f"{sweep_dir} already holds an earlier sweep; pick another hydra.sweep.dir")
    check_can_create(sweep_dir, "hydra.sweep.dir")


def _check_value(cfg: DictConfig, key: str, value: str) -> None:
    """One swept value of a key: set into the composed job config, then the whole config checked."""
    job = copy.deepcopy(job_config(cfg))
    try:
        override = OverridesParser.create().parse_override(f"{key}={value}")
        OmegaConf.update(job, key, override.value(), merge=False, force_add=False)
    except Exception as e:
        raise UserError(one_line(e)) from None
    check_config(job)


# --------------------------------------------------------------------------- the whole command line


def check_command_line(argv: List[str]) -> None:
    """Raises a UserError (one line) for anything wrong with `ssl-train <argv>`, before Hydra runs."""
    args = parse_flags(argv)
    for flag, value in (("--config-path", args.config_path), ("--config-dir", args.config_dir)):
        if value is not None and not Path(value).expanduser().is_dir():
            raise UserError(f"{flag} {value}: no such folder")
    if args.experimental_rerun is not None and not Path(args.experimental_rerun).expanduser().is_file():
        raise UserError(f"--experimental-rerun {args.experimental_rerun}: no such file (give a run's .hydra/config.pickle)")
    if args.help or args.hydra_help or args.version or args.shell_completion or args.info \
            or args.experimental_rerun or args.config_path or args.config_name or args.config_dir:
        return  # Hydra's own business: help, or another config than ssl-train's own
    overrides = list(args.overrides)
    if args.multirun:
        check_sweep(overrides)
        return
    cfg = compose(overrides, return_hydra_config=True)
    if args.cfg:  # only shows the config
        if args.package and args.package != "_global_" and OmegaConf.select(cfg, args.package) is None:
            raise UserError(f"--package {args.package}: no such key in the config (e.g. --package trainer)")
        return
    if cfg.get("resume"):
        check_config(check_resume(cfg, overrides))
        return
    check_config(job_config(cfg))
    run_dir = str(cfg.hydra.run.dir)
    if not run_dir:
        raise UserError("hydra.run.dir is empty; give a directory for the run's outputs")
    check_run_dir(Path(run_dir))
    check_can_create(Path(run_dir), "hydra.run.dir")  # last: nothing is created for a command that fails

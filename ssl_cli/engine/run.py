"""One run of `ssl-train`: resume resolution, the config check, then one Trainer per stage.

`run(cfg, run_dir)` is the whole program behind `ssl-train`; the command line only composes the config
and turns UserErrors into one-line messages. A method made of several stages (method=selfsup) trains
each stage as its own run in a sub-directory, one after the other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_cli.core.distributed import is_main
from ssl_cli.core.errors import UserError
from ssl_cli.engine.checkpoint import load_checkpoint, upgrade_config
from ssl_cli.engine.config import RunConfig, check_config, with_new_options
from ssl_cli.engine.outputs import LAST, STAGES, SUMMARY, write_json, write_summary
from ssl_cli.engine.trainer import Trainer, check_fits
from ssl_cli.methods import METHODS

log = logging.getLogger("ssl_cli")

# What may differ in a continued run: where it runs, and whether it stops early again.
RESUME_MAY_CHANGE = ("resume", "trainer.device", "trainer.stop_at_step")


def resolve_resume(cfg: DictConfig) -> Tuple[DictConfig, Optional[dict]]:
    """With `resume=<run dir>`, the run continues under the config saved in its last checkpoint.

    A run of several stages (method=selfsup) keeps its config in `stages.json`; each stage then resumes
    from its own checkpoint, so no state is returned for it.
    """
    if not cfg.get("resume"):
        return cfg, None
    path = Path(str(cfg.resume)).expanduser()
    if path.is_dir() and not (path / LAST).exists() and (path / STAGES).is_file():
        saved = json.loads((path / STAGES).read_text())["config"]
        saved, state = OmegaConf.create(with_new_options(upgrade_config(saved))), None
    else:
        state = load_checkpoint(path / LAST if path.is_dir() else path)
        saved = OmegaConf.create(with_new_options(state["config"]))
    saved.resume = str(cfg.resume)
    saved.trainer.device = cfg.trainer.device
    saved.trainer.stop_at_step = cfg.trainer.get("stop_at_step")
    return saved, state


def run(cfg: DictConfig, run_dir: Path, choices: Optional[dict] = None) -> dict:
    """Trains one model as `cfg` says, writing everything into `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, resume_state = resolve_resume(cfg)
    checked = check_config(cfg)
    if not checked.resume and any((run_dir / f).exists() for f in (LAST, STAGES)):
        raise UserError(f"{run_dir} already holds a run; continue it with resume={run_dir} or pick another run directory")
    stages = METHODS.get(checked.names["method"]).stages(cfg, run_dir)
    if len(stages) == 1:
        return run_stage(checked, run_dir, choices, resume_state)  # the config checked above, not again
    return run_stages(checked.plain(), stages, run_dir, choices)


def run_stage(run: RunConfig, run_dir: Path, choices: Optional[dict], resume_state: Optional[dict]) -> dict:
    trainer = Trainer(run, run_dir, choices, resuming=resume_state is not None)
    if resume_state is not None:
        check_fits(resume_state.get("model_card"), trainer.shape(), run.resume)
        trainer.load_state_dict(resume_state)
        log.info("resuming from step %d of %d", trainer.step, trainer.options.max_steps)
        if resume_state.get("upgraded_from"):  # rewritten at once in today's format, with its model card
            trainer.save(LAST)
    return trainer.fit()


def run_stages(config: dict, stages, run_dir: Path, choices: Optional[dict]) -> dict:
    """Runs the stages in order; on resume, completed stages are kept and the unfinished one continues."""
    if not config.get("resume") and is_main():
        write_json(run_dir / STAGES, {"config": config, "stages": [name for name, _ in stages]})
    summaries: Dict[str, dict] = {}
    for name, stage_cfg in stages:
        stage_dir = run_dir / name
        stage_dir.mkdir(exist_ok=True)
        done = stage_dir / SUMMARY
        if done.exists() and json.loads(done.read_text()).get("status") == "completed":
            summaries[name] = json.loads(done.read_text())
            continue
        state = None
        if (stage_dir / LAST).exists():
            state = load_checkpoint(stage_dir / LAST)
            stage_cfg.resume = str(stage_dir)
        log.info("stage %s: method=%s, %d steps, in %s", name, stage_cfg.method.name,
                 stage_cfg.trainer.max_steps, stage_dir)
        summaries[name] = run_stage(check_config(stage_cfg), stage_dir, choices, state)
        if summaries[name]["status"] != "completed":
            break
    last = summaries[list(summaries)[-1]]
    summary = {**last, "method": config["method"]["name"], "run_dir": str(run_dir), "stages": summaries,
               "wall_time_s": round(sum(s["wall_time_s"] for s in summaries.values()), 2),
               "stage_methods": {name: stage_cfg.method.name for name, stage_cfg in stages}}
    if is_main():
        write_summary(run_dir, summary)
    return summary

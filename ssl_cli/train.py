"""One training run: data -> split -> backbone -> method -> optimise -> evaluate -> outputs.

`run(cfg, run_dir)` is the whole program behind `ssl-train`; the command line only composes the
config and turns UserErrors into one-line messages. The loop below knows nothing about which method
it trains: a method asks for image views and returns a loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_cli.accel import apply_speed_settings
from ssl_cli.augment import AugmentConfig, Augmenter, Normalizer
from ssl_cli.backbones import build_backbone
from ssl_cli.checkpoint import load_checkpoint, save_checkpoint
from ssl_cli.config import check_config, split_options
from ssl_cli.data import ImageData, load_dataset
from ssl_cli.errors import UserError
from ssl_cli.evaluate import classification_metrics, classify, embed
from ssl_cli.knn import fit_linear_probe, knn_predict
from ssl_cli.methods import METHODS, Batch, Method, build_method
from ssl_cli.optim import EMA, build_optimizer, build_scheduler
from ssl_cli.progress import TrainingProgress
from ssl_cli.split import SPLIT_FILE, Split, load_split, make_split, save_split

log = logging.getLogger("ssl_cli")

LAST, BEST = "last.pt", "best.pt"
STAGES = "stages.json"  # the config of a run made of several stages (method=selfsup)


# --------------------------------------------------------------------------- sampling


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers, so each (seed, stream, step) gets its own random stream."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class StepSampler:
    """Batches as consecutive slices of per-epoch random permutations of `n` items.

    The batch at a step is a pure function of (seed, stream, step): resuming at step k needs no
    sampler state, and a resumed run draws exactly the batches an uninterrupted one would. The
    permutations are drawn on the CPU (then copied to `device` once per epoch, without a host sync), so
    the schedule is the same on every device and a streaming source can compute it on the CPU.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, device: torch.device):
        self.n, self.batch_size, self.seed, self.stream, self.device = n, batch_size, seed, stream, device
        self._perms: Dict[int, torch.Tensor] = {}
        self._gen = torch.Generator()

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._gen.manual_seed(_mix(self.seed, self.stream, epoch))
            perm = torch.randperm(self.n, generator=self._gen)
            if self.device.type == "cuda":
                perm = perm.pin_memory().to(self.device, non_blocking=True)
            self._perms[epoch] = perm.to(self.device)
        return self._perms[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos, remaining, parts = step * self.batch_size, self.batch_size, []
        while remaining > 0:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, remaining)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos, remaining = pos + take, remaining - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class TrainingData:
    """Everything the loop samples from, already on the training device."""

    images: torch.Tensor  # uint8 [N, C, H, W]: training images, then any extra unlabeled images
    labels: torch.Tensor  # int64 [N]; -1 for images whose label is unknown
    labeled: torch.Tensor  # indices into images
    unlabeled: torch.Tensor
    validation: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


class BatchBuilder:
    """Samples indices, gathers uint8 images on the device, augments them in batches and normalises."""

    def __init__(self, data: TrainingData, method: Method, augmenter: Augmenter, normalizer: Normalizer,
                 batch_size: int, seed: int, channels_last: bool):
        device = data.images.device
        self.data, self.method, self.augmenter, self.normalizer = data, method, augmenter, normalizer
        self.channels_last = channels_last
        self.labeled_sampler = None
        if method.labeled_view is not None:
            self.labeled_sampler = StepSampler(len(data.labeled), batch_size, seed, 1, device)
        self.unlabeled_sampler = None
        if method.unlabeled_views:
            if len(data.unlabeled) == 0:
                raise UserError(f"method={method.name} needs unlabeled images, but the unlabeled pool is empty")
            self.unlabeled_sampler = StepSampler(len(data.unlabeled), batch_size * method.unlabeled_ratio,
                                                 seed, 2, device)
        self.seed = seed
        self.gen = torch.Generator(device=device)
        # The image source: the in-memory tensor, or images streamed from files (ssl_cli.stream.FileImages)
        # whose decode workers follow this builder's step schedule.
        self.stream = None if isinstance(data.images, torch.Tensor) else data.images
        if self.stream is not None:
            self.stream.bind(self)

    def gather(self, indices: torch.Tensor, step: int) -> torch.Tensor:
        """The uint8 images at `indices` (drawn at `step`), on the device."""
        return self.data.images[indices] if self.stream is None else self.stream.gather(indices, step)

    def prepare(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # reorder the uint8 images (a quarter of the bytes); normalising keeps the layout
            return self.normalizer(images_uint8.contiguous(memory_format=torch.channels_last)).contiguous(
                memory_format=torch.channels_last)
        return self.normalizer(images_uint8)

    def __call__(self, step: int) -> Batch:
        self.gen.manual_seed(_mix(self.seed, 3, step))  # augmentation randomness for this step only
        d = self.data
        batch = Batch()
        if self.labeled_sampler is not None:
            idx = d.labeled[self.labeled_sampler(step)]
            batch.labeled = self.prepare(self.augmenter(self.method.labeled_view, self.gather(idx, step), self.gen))
            batch.labels = d.labels[idx]
        if self.unlabeled_sampler is not None:
            uidx = d.unlabeled[self.unlabeled_sampler(step)]
            raw = self.gather(uidx, step)
            batch.unlabeled = tuple(self.prepare(self.augmenter(v, raw, self.gen)) for v in self.method.unlabeled_views)
            batch.unlabeled_targets = d.labels[uidx]
        return batch


# --------------------------------------------------------------------------- metrics bookkeeping


def _average_into(total: Dict[str, object], metrics: Dict[str, object], parts: int) -> Dict[str, object]:
    """Adds one micro-batch's metrics: scalar metrics as 1/parts of their value, (num, den) pairs summed."""
    out = dict(total)
    for k, v in metrics.items():
        if isinstance(v, tuple):
            num, den = out.get(k, (0, 0))
            out[k] = (num + v[0], den + v[1])
        else:
            out[k] = out.get(k, 0) + v / parts
    return out


class RunningMetrics:
    """Sums step metrics on the device; `compute` syncs with the host once."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, object] = {}

    def add(self, metrics: Dict[str, object]) -> None:
        for k, v in metrics.items():
            num, den = v if isinstance(v, tuple) else (v, 1)
            self.sums[k] = self.sums.get(k, 0) + num.detach().float()
            self.counts[k] = self.counts.get(k, 0) + den

    def compute(self) -> Dict[str, float]:
        out = {}
        for k, s in self.sums.items():
            c = self.counts[k]
            c = c.item() if torch.is_tensor(c) else c
            out[k] = s.item() / c if c else float("nan")
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def state_dict(self) -> dict:
        """Plain numbers, so a run stopped between evaluations logs the same averages after resuming."""
        as_float = lambda v: float(v.item() if torch.is_tensor(v) else v)  # noqa: E731
        return {k: [as_float(s), as_float(self.counts[k])] for k, s in self.sums.items()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.reset()
        for k, (s, c) in state.items():
            self.sums[k] = torch.tensor(s, device=device)
            self.counts[k] = c


class LossHealth:
    """Notices a non-finite loss without a host sync per step: the first bad step is kept on the device."""

    def __init__(self, device: torch.device, skip_nonfinite: bool = False):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.skip_nonfinite = skip_nonfinite
        self.skipped = 0

    def watch(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step + 1), self.first_bad)

    def diverged_at(self) -> Optional[int]:
        """The step (1-based, as logged) whose loss was first non-finite, or None."""
        value = int(self.first_bad.item())
        return value if value >= 0 else None


class StopSignals:
    """SIGINT and SIGTERM (what SLURM sends before pre-emption) ask the loop to save and stop."""

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name
        log.warning("received %s: saving a checkpoint and stopping after this step", self.received)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- setup


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but CUDA is not available on this machine; use trainer.device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"trainer.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def choose_split(cfg: DictConfig, data: ImageData, run_dir: Path) -> Split:
    labels = data.train_labels.numpy()
    opts = cfg.dataset
    if opts.get("labeled_indices"):
        split = load_split(opts.labeled_indices, data.name, len(labels), data.num_classes, labels)
    else:
        split = make_split(labels, data.num_classes, cfg.seed, num_labels=opts.get("num_labels"),
                           label_fraction=opts.get("label_fraction"), num_validation=opts.get("num_validation", 0),
                           unlabeled_includes_labeled=opts.get("unlabeled_includes_labeled", True))
    save_split(split, run_dir / SPLIT_FILE, data.name, len(labels))
    return split


def to_device(data: ImageData, split: Split, device: torch.device) -> TrainingData:
    images, labels = data.train_images, data.train_labels
    unlabeled = torch.as_tensor(split.unlabeled)
    if data.extra_unlabeled is not None:  # e.g. STL-10's unlabeled split joins the unlabeled pool
        n = len(labels)
        images = torch.cat([images, data.extra_unlabeled])
        labels = torch.cat([labels, torch.full((len(data.extra_unlabeled),), -1, dtype=torch.long)])
        unlabeled = torch.cat([unlabeled, torch.arange(n, n + len(data.extra_unlabeled))])
    return TrainingData(
        images=images.to(device), labels=labels.to(device),
        labeled=torch.as_tensor(split.labeled).to(device), unlabeled=unlabeled.to(device),
        validation=torch.as_tensor(split.validation).to(device),
        test_images=data.test_images.to(device), test_labels=data.test_labels.to(device),
    )


def build_augmenter(cfg: DictConfig) -> Augmenter:
    options = OmegaConf.to_container(cfg.augmentation, resolve=True)
    allowed = list(AugmentConfig.__dataclass_fields__)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"augmentation has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    config = AugmentConfig(**options)
    config.flip = config.flip and cfg.dataset.get("allow_flip", True)  # e.g. digits: mirrored digits are wrong
    try:
        return Augmenter(config)
    except ValueError as e:
        raise UserError(str(e)) from None


def resolve_resume(cfg: DictConfig) -> tuple[DictConfig, Optional[dict]]:
    """With `resume=<run dir>`, the run continues under the config saved in its last checkpoint.

    A run of several stages (method=selfsup) keeps its config in `stages.json`; each stage then resumes
    from its own checkpoint, so no state is returned for it.
    """
    if not cfg.get("resume"):
        return cfg, None
    path = Path(str(cfg.resume)).expanduser()
    if path.is_dir() and not (path / LAST).exists() and (path / STAGES).is_file():
        saved, state = OmegaConf.create(json.loads((path / STAGES).read_text())["config"]), None
    else:
        state = load_checkpoint(path / LAST if path.is_dir() else path)
        saved = OmegaConf.create(state["config"])
    saved.resume = str(cfg.resume)
    # What may differ in the continued run: where it runs, and whether it stops early again.
    saved.trainer.device = cfg.trainer.device
    saved.trainer.stop_at_step = cfg.trainer.get("stop_at_step")
    return saved, state


# --------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, choices: Optional[dict] = None):
        self.cfg, self.run_dir, self.choices = cfg, run_dir, dict(choices or {})
        t = cfg.trainer
        self.device = pick_device(t.device)
        seed_everything(cfg.seed, t.deterministic)
        if t.get("num_threads"):
            torch.set_num_threads(int(t.num_threads))
        self.use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        if self.use_bf16 and self.device.type != "cuda":
            raise UserError("trainer.precision=bf16 is for CUDA; use trainer.precision=auto or fp32 on the CPU")
        channels_last = bool(t.channels_last)

        self.data_cpu = load_dataset(cfg.dataset.name, **split_options(cfg.dataset)[1])
        bad_files = self.data_cpu.notes.get("bad_files") or []
        if bad_files:  # skipped (dataset.bad_images=skip): say so, and list them with the run
            (run_dir / "bad_images.txt").write_text("".join(f + "\n" for f in bad_files))
            log.warning("skipped %d unreadable image file(s); listed in %s", len(bad_files), run_dir / "bad_images.txt")
        self.split = choose_split(cfg, self.data_cpu, run_dir)
        self.data = to_device(self.data_cpu, self.split, self.device)
        mean, std = self.data_cpu.channel_stats()
        augmenter = build_augmenter(cfg)

        backbone_opts = {k: v for k, v in cfg.backbone.items() if k not in ("name",) + LOADING_KEYS}
        self.model = build_backbone(cfg.backbone.name, self.data_cpu.channels, self.data_cpu.num_classes,
                                    self.data_cpu.image_size, **backbone_opts)
        if cfg.backbone.get("pretrained"):
            load_pretrained(self.model, cfg.backbone.pretrained, self.model_info())
        if cfg.backbone.get("freeze_features"):
            self.model.freeze_features()
        self.model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        method_opts = {k: v for k, v in cfg.method.items() if k != "name"}
        self.method = build_method(cfg.method.name, self.data_cpu.num_classes, t.max_steps, **method_opts)
        self.method.setup(self.model)
        self.method.to(self.device)
        optim_opts = {k: v for k, v in cfg.optim.items() if k != "name"}
        self.optimizer = build_optimizer(torch.nn.ModuleList([self.model, self.method]), cfg.optim.name, **optim_opts)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler.name, t.max_steps,
                                         cfg.scheduler.get("warmup_steps", 0))
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None
        apply_speed_settings(self.model, t, self.device)  # trainer.compile (the EMA copy stays eager), reuse_cpu_memory
        self.normalizer = Normalizer(mean, std).to(self.device)
        self.accumulation = int(t.get("grad_accumulation", 1))
        self.batches = BatchBuilder(self.data, self.method, augmenter, self.normalizer,
                                    t.batch_size, cfg.seed, channels_last)
        self.knn_k, self.knn_temperature = int(t.get("knn_k", 200)), float(t.get("knn_temperature", 0.1))
        self.step = 0
        self.elapsed = 0.0
        self.best: dict = {}
        self.running = RunningMetrics()  # training metrics since the last evaluation
        self.last_train: Dict[str, float] = {}  # the training metrics logged at the last evaluation
        self.last_eval: Dict[str, float] = {}  # shown on the progress bar until the next evaluation
        self.health = LossHealth(self.device, skip_nonfinite=t.nonfinite == "skip")
        self.metrics_path = run_dir / "metrics.jsonl"

    # -- state ---------------------------------------------------------------------------------

    @property
    def eval_model(self):
        return self.ema.model if self.ema is not None else self.model

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best": self.best,
            "running_metrics": self.running.state_dict(),
            "elapsed_seconds": self.elapsed,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "choices": self.choices,
            "model_info": self.model_info(),
        }

    def model_info(self) -> dict:
        return {"backbone": self.cfg.backbone.name, "in_channels": self.data_cpu.channels,
                "num_classes": self.data_cpu.num_classes, "image_size": list(self.data_cpu.image_size)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state.get("method") or {})
        if self.ema is not None and state.get("ema") is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.best = dict(state.get("best") or {})
        self.running.load_state_dict(state.get("running_metrics") or {}, self.device)
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.choices = state.get("choices") or self.choices
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from will be logged again; drop them."""
        if not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if json.loads(r)["step"] <= step]
        if len(keep) != len(rows):
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(r + "\n" for r in keep))
            os.replace(tmp, self.metrics_path)

    def save(self, name: str) -> None:
        save_checkpoint(self.state_dict(), self.run_dir / name)

    # -- training ------------------------------------------------------------------------------

    def autocast(self):
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, step: int) -> Dict[str, object]:
        """One optimiser step over `grad_accumulation` micro-batches (micro-batch i of step k is batch k*n + i)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = 0.0, {}
        for micro in range(step * self.accumulation, (step + 1) * self.accumulation):
            batch = self.batches(micro)
            with self.autocast():
                out = self.method.training_step(self.model, batch, step)
            if self.health.skip_nonfinite and not torch.isfinite(out.loss).item():  # costs a sync; opt-in
                self.health.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return {}
            self.health.watch(out.loss, step)
            (out.loss / self.accumulation).backward()
            loss = loss + out.loss.detach() / self.accumulation
            metrics = out.metrics if self.accumulation == 1 else _average_into(metrics, out.metrics, self.accumulation)
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step(self.model, step)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {"loss": loss, **metrics}

    def evaluate(self) -> Dict[str, dict]:
        """Classifier metrics on test (and validation), plus kNN accuracy with the labeled images as memory bank.

        For a method that does not train the classifier (self-supervised pretraining), the classifier is
        first fitted as a linear probe on the frozen features of the labeled images.
        """
        d, bs, model = self.data, self.cfg.trainer.eval_batch_size, self.eval_model
        num_classes = self.data_cpu.num_classes
        bank = embed(model, d.images[d.labeled], self.batches.prepare, bs, self.autocast)
        bank_labels = d.labels[d.labeled]
        if not self.method.trains_classifier:
            fit_linear_probe(model.classifier, bank, bank_labels)
            if model is not self.model:  # keep the trained model's classifier in step (checkpoints, fine-tuning)
                self.model.classifier.load_state_dict(model.classifier.state_dict())
        results = {}
        sets = {"test": (d.test_images, d.test_labels)}
        if len(d.validation):
            sets["val"] = (d.images[d.validation], d.labels[d.validation])
        for name, (images, labels) in sets.items():
            features = embed(model, images, self.batches.prepare, bs, self.autocast)
            preds = classify(model, features)
            results[name] = classification_metrics(preds, labels, num_classes)
            knn = knn_predict(bank, bank_labels, features, num_classes, self.knn_k, self.knn_temperature)
            results[name]["knn_accuracy"] = (knn == labels).float().mean().item() if len(labels) else 0.0
        return results

    def fit(self) -> dict:
        t = self.cfg.trainer
        max_steps = t.max_steps
        stop_at = t.get("stop_at_step") or max_steps
        running = self.running
        self.model.train()
        self.method.train()
        status, results = "completed", None
        progress = TrainingProgress(max_steps, enabled=t.progress_bar, show_ssl=bool(self.method.unlabeled_views))
        started = time.perf_counter() - self.elapsed
        with progress, StopSignals() as signals:
            progress.update(self.step, {})
            while self.step < max_steps:
                metrics = self.train_step(self.step)
                running.add(metrics)
                self.step += 1
                every = lambda n: self.step % n == 0 or self.step == max_steps  # noqa: E731
                stopping = signals.received is not None or self.step >= stop_at
                if (every(t.log_every) or every(t.eval_every) or every(t.checkpoint_every) or stopping) \
                        and self.health.diverged_at() is not None:
                    # Nothing after the bad step is evaluated or saved: last.pt stays the last good state.
                    self.elapsed = time.perf_counter() - started
                    return self._diverged(results)
                if every(t.log_every):
                    progress.update(self.step, {**running.compute(), "lr": self.scheduler.get_last_lr()[0],
                                                **self.last_eval})
                if every(t.eval_every):
                    self.elapsed = time.perf_counter() - started
                    results = self.evaluate()
                    self.last_eval = {"knn_acc": results["test"]["knn_accuracy"]}
                    self._log_evaluation(running.compute(), results)
                    running.reset()
                if every(t.checkpoint_every) or (stopping and self.step < max_steps):
                    self.elapsed = time.perf_counter() - started
                    self.save(LAST)
                if stopping and self.step < max_steps:
                    status = "interrupted"
                    why = f"received {signals.received}" if signals.received else "trainer.stop_at_step"
                    log.info("stopped at step %d of %d (%s); continue with resume=%s",
                             self.step, max_steps, why, self.run_dir)
                    break
        self.elapsed = time.perf_counter() - started
        if results is None:
            results = self.evaluate()
        return self._finish(status, results)

    def _log_evaluation(self, train: Dict[str, float], results: Dict[str, dict]) -> None:
        self.last_train = train
        row = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "elapsed_s": round(self.elapsed, 2)}
        row.update({f"train/{k}": v for k, v in train.items()})
        for split, m in results.items():
            row[f"{split}/accuracy"] = m["accuracy"]
            row[f"{split}/macro_f1"] = m["macro_f1"]
            row[f"{split}/knn_accuracy"] = m["knn_accuracy"]
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        # Model selection uses the validation split only; without one, the latest evaluation is kept.
        selected_by = "val/accuracy" if "val" in results else "latest"
        score = results["val"]["accuracy"] if "val" in results else float(self.step)
        if not self.best or score > self.best["score"] or selected_by == "latest":
            self.best = {"score": score, "selected_by": selected_by, "step": self.step,
                         "test/accuracy": results["test"]["accuracy"],
                         "val/accuracy": results["val"]["accuracy"] if "val" in results else None}
            self.save(BEST)
        parts = [f"step {self.step}/{self.cfg.trainer.max_steps}", f"loss {train.get('loss', float('nan')):.4f}"]
        if "mask_rate" in train:
            parts.append(f"mask {train['mask_rate']:.3f}")
        if "pseudo_label_acc" in train:
            parts.append(f"pl_acc {train['pseudo_label_acc']:.3f}")
        if "val" in results:
            parts.append(f"val_acc {results['val']['accuracy']:.4f}")
        parts.append(f"test_acc {results['test']['accuracy']:.4f}")
        parts.append(f"test_knn {results['test']['knn_accuracy']:.4f}")
        parts.append(f"{self.elapsed:.1f}s")
        log.info(" | ".join(parts))

    def _diverged(self, results) -> dict:
        bad = self.health.diverged_at()
        message = (f"loss became non-finite at step {bad}; stopped, and {self.run_dir / LAST} keeps the last "
                   f"good checkpoint (lower optim.lr, or set trainer.nonfinite=skip)")
        log.error(message)
        summary = self._summary("diverged", results)
        summary.update(error=message, diverged_at_step=bad)
        write_summary(self.run_dir, summary)
        raise UserError(message)

    def _finish(self, status: str, results: Dict[str, dict]) -> dict:
        (self.run_dir / "confusion_matrix.json").write_text(json.dumps(
            {"class_names": self.data_cpu.class_names, "matrix": results["test"]["confusion_matrix"]}))
        summary = self._summary(status, results)
        write_summary(self.run_dir, summary)
        return summary

    def _summary(self, status: str, results: Optional[Dict[str, dict]]) -> dict:
        final = None
        if results is not None:
            test = results["test"]
            final = {
                "test/accuracy": test["accuracy"],
                "test/macro_f1": test["macro_f1"],
                "test/knn_accuracy": test["knn_accuracy"],
                "val/accuracy": results["val"]["accuracy"] if "val" in results else None,
                "per_class": {name: {"precision": p, "recall": r, "f1": f} for name, p, r, f in
                              zip(self.data_cpu.class_names, test["precision"], test["recall"], test["f1"])},
            }
        return {
            "status": status,
            "method": self.cfg.method.name,
            "dataset": self.cfg.dataset.name,
            "backbone": self.cfg.backbone.name,
            "num_labels": int(len(self.split.labeled)),
            "num_unlabeled": int(len(self.data.unlabeled)),
            "num_validation": int(len(self.split.validation)),
            "seed": int(self.cfg.seed),
            "step": self.step,
            "max_steps": int(self.cfg.trainer.max_steps),
            "wall_time_s": round(self.elapsed, 2),
            "device": str(self.device),
            "final": final,
            "best": {k: v for k, v in self.best.items() if k != "score"},
            "train": self.last_train,
            "skipped_nonfinite_steps": self.health.skipped,
            "reported_accuracy": "final test accuracy (EMA weights) after the last step"
                                 + ("" if self.method.trains_classifier else
                                    ", classifier = linear probe on the frozen features of the labeled images")
                                 + "; best.pt is chosen on the validation split, never on the test set",
            "choices": self.choices,
            "run_dir": str(self.run_dir),
        }


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "summary.json")


def run(cfg: DictConfig, run_dir: Path, choices: Optional[dict] = None) -> dict:
    """Trains one model as `cfg` says, writing everything into `run_dir`; returns the summary.

    A method made of several stages (method=selfsup) trains each stage as its own run in a
    sub-directory, one after the other, and the summary in `run_dir` reports all of them.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, resume_state = resolve_resume(cfg)
    check_config(cfg)
    if not cfg.get("resume") and any((run_dir / f).exists() for f in (LAST, STAGES)):
        raise UserError(f"{run_dir} already holds a run; continue it with resume={run_dir} or pick another run directory")
    stages = METHODS.get(cfg.method.name).stages(cfg, run_dir)
    if len(stages) == 1:
        return run_stage(stages[0][1], run_dir, choices, resume_state)
    return run_stages(cfg, stages, run_dir, choices)


def run_stage(cfg: DictConfig, run_dir: Path, choices: Optional[dict], resume_state: Optional[dict]) -> dict:
    trainer = Trainer(cfg, run_dir, choices)
    if resume_state is not None:
        check_model_info(resume_state.get("model_info", {}), trainer.model_info(), cfg.resume)
        trainer.load_state_dict(resume_state)
        log.info("resuming from step %d of %d", trainer.step, cfg.trainer.max_steps)
    return trainer.fit()


def run_stages(cfg: DictConfig, stages, run_dir: Path, choices: Optional[dict]) -> dict:
    """Runs the stages in order; on resume, completed stages are kept and the unfinished one continues."""
    if not cfg.get("resume"):
        (run_dir / STAGES).write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True),
                                                  "stages": [name for name, _ in stages]}, indent=2))
    summaries: Dict[str, dict] = {}
    for name, stage_cfg in stages:
        stage_dir = run_dir / name
        stage_dir.mkdir(exist_ok=True)
        done = stage_dir / "summary.json"
        if done.exists() and json.loads(done.read_text()).get("status") == "completed":
            summaries[name] = json.loads(done.read_text())
            continue
        state = None
        if (stage_dir / LAST).exists():
            state = load_checkpoint(stage_dir / LAST)
            stage_cfg.resume = str(stage_dir)
        log.info("stage %s: method=%s, %d steps, in %s", name, stage_cfg.method.name,
                 stage_cfg.trainer.max_steps, stage_dir)
        summaries[name] = run_stage(stage_cfg, stage_dir, choices, state)
        if summaries[name]["status"] != "completed":
            break
    last = summaries[list(summaries)[-1]]
    summary = {**last, "method": cfg.method.name, "run_dir": str(run_dir), "stages": summaries,
               "wall_time_s": round(sum(s["wall_time_s"] for s in summaries.values()), 2),
               "stage_methods": {name: stage_cfg.method.name for name, stage_cfg in stages}}
    write_summary(run_dir, summary)
    return summary


# Backbone keys that say how to load the weights rather than what network to build.
LOADING_KEYS = ("pretrained", "freeze_features")


def pretrained_checkpoint(source) -> Path:
    """The checkpoint behind `backbone.pretrained`: a .pt file, a run directory, or a selfsup run's directory."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        for candidate in (path / LAST, path / "pretrain" / LAST):
            if candidate.is_file():
                return candidate
        raise UserError(f"backbone.pretrained={source}: no {LAST} in that directory (nor in its pretrain/); "
                        f"give a run directory or a checkpoint file")
    if not path.is_file():
        raise UserError(f"backbone.pretrained={source}: no such file or directory; give a run directory or a "
                        f"checkpoint file (.pt)")
    return path


def load_pretrained(model: torch.nn.Module, source, model_info: dict) -> None:
    """Starts `model`'s features from another run's weights (its EMA weights where it kept them: what it
    evaluated). The architecture, input channels and image size must match. The classifier keeps its
    fresh initialisation, the usual fine-tuning protocol: the other run's classifier was trained (or,
    after pretraining, fitted as a probe) on features in eval mode, and a new head adapts more safely.
    """
    path = pretrained_checkpoint(source)
    state = load_checkpoint(path)
    saved = state.get("model_info", {})
    check_model_info(saved, {k: v for k, v in model_info.items() if k != "num_classes"}, f"backbone.pretrained={source}")
    weights = {k: v for k, v in (state.get("ema") or state["model"]).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise UserError(f"backbone.pretrained={source}: the checkpoint's weights do not fit this backbone "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    log.info("backbone starts from %s", path)


def check_model_info(saved: dict, current: dict, source) -> None:
    diffs = [f"{k} {saved.get(k)} vs {v}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise UserError(f"checkpoint {source} does not fit this model: " + ", ".join(diffs))

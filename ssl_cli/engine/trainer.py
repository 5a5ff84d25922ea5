"""The training loop: `Trainer` builds data, model, method, optimiser from a checked config and runs `fit`.

Per step: `batch = BatchBuilder(step)` -> `out = method.training_step(model, batch, step)` ->
`out.loss.backward()` -> optimiser, scheduler -> `method.after_step(model, step, outputs)` -> EMA.
Evaluation, logging and checkpoints happen on fixed step intervals. Nothing here depends on which
method it trains: a method asks for image views by name and returns a loss.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ssl_cli.core.distributed import all_reduce_sum, is_distributed, is_main, rank, world_size
from ssl_cli.core.errors import UserError
from ssl_cli.core.seeding import seed_everything
from ssl_cli.data import load_dataset
from ssl_cli.data.batches import BatchBuilder, training_data
from ssl_cli.data.resize import image_bytes, resize_data
from ssl_cli.data.split import SPLIT_FILE, Split, load_split, make_split, save_split
from ssl_cli.engine.accel import apply_speed_settings
from ssl_cli.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from ssl_cli.engine.config import RunConfig
from ssl_cli.engine.distributed import (any_rank, average_gradients, broadcast_module, device_for_rank,
                                        uses_sync_batchnorm, wrap)
from ssl_cli.engine.evaluation import classification_metrics, classify, embed, fit_linear_probe, knn_predict
from ssl_cli.engine.loggers import Evaluation, build_loggers
from ssl_cli.engine.optim import build_optimizer, build_scheduler
from ssl_cli.engine.outputs import BEST, LAST, METRICS, write_json, write_summary
from ssl_cli.engine.plots import plot_confusion_matrix, plot_training_curves
from ssl_cli.engine.precision import autocast, resolve_precision
from ssl_cli.engine.progress import TrainingProgress
from ssl_cli.engine.selection import selected_split
from ssl_cli.methods import METHODS
from ssl_cli.models import build_backbone
from ssl_cli.models.ema import EMA
from ssl_cli.transforms.views import Augmenter, Normalizer

log = logging.getLogger("ssl_cli")


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
        """The averages; a metric that counted nothing is left out (pseudo-label accuracy when every
        confident pseudo-label was on an image whose label is unknown, as in an image folder's unlabeled/)."""
        if is_distributed() and self.sums:  # sums and counts over every rank's share of the global batch
            keys = list(self.sums)
            sums = torch.stack([self.sums[k].reshape(()) for k in keys])
            counts = torch.stack([torch.as_tensor(self.counts[k], dtype=torch.float32, device=sums.device).reshape(())
                                  for k in keys])
            totals = all_reduce_sum(torch.stack([sums, counts])).tolist()
            return {k: s / c for k, s, c in zip(keys, totals[0], totals[1]) if c}
        out = {}
        for k, s in self.sums.items():
            c = self.counts[k]
            c = c.item() if torch.is_tensor(c) else c
            if c:
                out[k] = s.item() / c
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
        first_bad = self.first_bad
        if is_distributed():  # a non-finite loss on any rank stops every rank
            first_bad = first_bad.clone()
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
        value = int(first_bad.item())
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but CUDA is not available on this machine; use trainer.device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"trainer.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)




def choose_split(run: RunConfig, data, run_dir: Path) -> Split:
    """The label split of the training images. A validation split given as such (an image folder's val/)
    follows the training images (ssl_cli.data.batches.training_data); split.validation points there."""
    labels = data.train_labels.numpy()
    given = None if data.validation_labels is None else data.validation_labels.numpy()
    num_images = len(labels) + (0 if given is None else len(given))
    d = run.dataset
    every_label = labels if given is None else np.concatenate([labels, given])
    if d.labeled_indices:
        split = load_split(d.labeled_indices, data.name, num_images, data.num_classes, every_label)
    else:
        saved = run_dir / SPLIT_FILE
        if d.labeled_selection != "random" and run.resume and saved.is_file():
            # a resumed run keeps the images it chose (choosing again could differ in the last float bit)
            split = load_split(str(saved), data.name, num_images, data.num_classes, every_label)
        elif d.labeled_selection != "random":
            split = selected_split(run, data)
        else:
            split = make_split(labels, data.num_classes, run.seed, num_labels=d.num_labels,
                               label_fraction=d.label_fraction, num_validation=d.num_validation,
                               unlabeled_includes_labeled=d.unlabeled_includes_labeled)
        if given is not None:
            split = replace(split, validation=np.arange(len(labels), num_images, dtype=np.int64))
    if is_main():
        save_split(split, run_dir / SPLIT_FILE, data.name, num_images)
    return split


def model_shape(card: dict) -> dict:
    """What a checkpoint's weights must match: the backbone and the input and output sizes."""
    return {k: card.get(k) for k in ("backbone", "channels", "num_classes", "image_size")}


def check_fits(saved_card: dict, current: dict, source, ignore=()) -> None:
    saved = model_shape(saved_card or {})
    diffs = [f"{k} {saved.get(k)} vs {v}" for k, v in current.items() if k not in ignore and saved.get(k) != v]
    if diffs:
        raise UserError(f"checkpoint {source} does not fit this model: " + ", ".join(diffs))


def load_init_weights(model: torch.nn.Module, source, shape: dict) -> None:
    """Starts `model`'s features from another run's weights (its EMA weights where it kept them: what it
    evaluated). The architecture, input channels and image size must match. The classifier keeps its
    fresh initialisation, the usual fine-tuning protocol: the other run's classifier was trained (or,
    after pretraining, fitted as a probe) on features in eval mode, and a new head adapts more safely.
    """
    path = find_checkpoint(source, stage="pretrain", label="backbone.init_from=")
    state = load_checkpoint(path)
    check_fits(state.get("model_card"), shape, f"backbone.init_from={source}", ignore=("num_classes",))
    weights = {k: v for k, v in (state.get("ema") or state["model"]).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise UserError(f"backbone.init_from={source}: the checkpoint's weights do not fit this backbone "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    log.info("backbone starts from %s", path)


# --------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, run: RunConfig, run_dir: Path, choices: Optional[dict] = None, resuming: bool = False):
        self.run, self.run_dir, self.choices = run, Path(run_dir), dict(choices or {})
        t = self.options = run.trainer
        self.device = device_for_rank(pick_device(t.device))
        seed_everything(run.seed, t.deterministic)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        # What the forward passes compute in: "bf16" (autocast) or "fp32" (engine/precision.py).
        self.precision = resolve_precision(t.precision, self.device)
        log.info("precision %s (trainer.precision=%s, %s)", self.precision, t.precision, self.device.type)

        self.data_cpu = load_dataset(run.names["dataset"], run.dataset)
        backbone_size = getattr(run.backbone, "image_size", None)  # library backbones: the size they expect
        if backbone_size and self.data_cpu.image_size != (backbone_size, backbone_size):
            # by the data's own policy (image folders' dataset.resize), as predict decodes new images
            self.data_cpu = resize_data(self.data_cpu, (backbone_size, backbone_size),
                                        getattr(run.dataset, "resize", "crop"))
        if backbone_size or self.data_cpu.image_size[0] >= 96:  # large images: say what they cost
            log.info("images at %dx%d take %.1f MB in memory (uint8)", *self.data_cpu.image_size,
                     image_bytes(self.data_cpu) / 1e6)
        bad_files = self.data_cpu.notes.get("bad_files") or []
        if bad_files and is_main():  # skipped (dataset.bad_images=skip): say so, and list them with the run
            (self.run_dir / "bad_images.txt").write_text("".join(f + "\n" for f in bad_files))
            log.warning("skipped %d unreadable image file(s); listed in %s", len(bad_files),
                        self.run_dir / "bad_images.txt")
        self.split = choose_split(run, self.data_cpu, self.run_dir)
        self.data = training_data(self.data_cpu, self.split, self.device)

        # A resumed run's checkpoint holds the weights: no weights file or hub download is needed again.
        backbone_options = run.backbone.without_weight_sources() if resuming else run.backbone
        self.model = build_backbone(run.names["backbone"], backbone_options, self.data_cpu.channels,
                                    self.data_cpu.num_classes, self.data_cpu.image_size)
        # Pretrained networks expect their own normalisation; the others use the data's statistics.
        self.mean, self.std = self.model.normalization or self.data_cpu.channel_stats()
        if backbone_options.init_from:
            load_init_weights(self.model, run.backbone.init_from, self.shape())
        if run.backbone.freeze_features:
            self.model.freeze_features()
        if run.backbone.freeze_stages:  # after loading: the frozen weights are the pretrained ones
            frozen = self.model.freeze_stages(run.backbone.freeze_stages)
            log.info("froze the first %d stage(s) of the backbone: %d parameter tensors, %d BatchNorm layers",
                     run.backbone.freeze_stages, frozen, len(self.model.frozen_norms))
        self.model.to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None
        self.method = METHODS.get(run.names["method"])(run.method, self.data.info(), t.max_steps)
        self.method.setup(self.model, self.ema)
        self.method.to(self.device)
        self.optimizer = build_optimizer(torch.nn.ModuleList([self.model, self.method]), run.names["optim"], run.optim,
                                         backbone=self.model)
        self.scheduler = build_scheduler(self.optimizer, run.names["scheduler"], t.max_steps, run.scheduler)
        apply_speed_settings(self.model, t.compile, t.compile_mode, t.reuse_cpu_memory, self.device)
        # What the method calls: under torchrun the DDP wrapper (its gradients are averaged over ranks);
        # self.model stays the plain backbone for the EMA, evaluation and checkpoints.
        self.train_model = self.model
        if is_distributed():
            self.train_model = wrap(self.model, self.device, uses_sync_batchnorm(t.sync_batchnorm, self.device),
                                    find_unused_parameters=not self.method.trains_classifier
                                    or bool(run.backbone.freeze_features))
        else:
            uses_sync_batchnorm(t.sync_batchnorm, self.device)  # refuses sync_batchnorm=true on the CPU
        self.normalizer = Normalizer(self.mean, self.std).to(self.device)
        # Mirrored images are wrong for some data (digits): the data set's allow_flip overrides every view.
        augment = replace(run.augmentation, flip=run.augmentation.flip and run.dataset.allow_flip)
        self.batches = BatchBuilder(self.data, self.method.labeled_views, self.method.unlabeled_views,
                                    t.batch_size, t.batch_size * self.method.unlabeled_ratio, Augmenter(augment),
                                    self.normalizer, run.seed, t.channels_last,
                                    needs_unlabeled_for=f"method={run.names['method']}",
                                    shard=(rank(), world_size()) if is_distributed() else (0, 1))
        self.step = 0
        self.elapsed = 0.0
        self.best: dict = {}
        self.running = RunningMetrics()  # training metrics since the last evaluation
        self.last_train: Dict[str, float] = {}  # the training metrics logged at the last evaluation
        self.last_eval: Dict[str, float] = {}  # shown on the progress bar until the next evaluation
        self.health = LossHealth(self.device, skip_nonfinite=t.nonfinite == "skip")
        self.metrics_path = self.run_dir / METRICS
        # logger=[tensorboard,mlflow]; none by default; only rank 0 logs
        self.loggers = build_loggers(run.loggers if is_main() else [])

    # -- state ---------------------------------------------------------------------------------

    @property
    def eval_model(self):
        return self.ema.model if self.ema is not None else self.model

    def shape(self) -> dict:
        """What any checkpoint this run loads must match (see model_shape)."""
        d = self.data_cpu
        return {"backbone": self.run.names["backbone"], "channels": d.channels, "num_classes": d.num_classes,
                "image_size": list(d.image_size)}

    def model_card(self) -> dict:
        """What `load_model` needs to use the model without the training data."""
        d = self.data_cpu
        return {**self.shape(), "backbone_options": self.run.backbone.architecture(),
                "class_names": list(d.class_names), "mean": list(self.mean), "std": list(self.std),
                "dataset": self.run.names["dataset"], "method": self.run.names["method"],
                "evaluated_weights": "ema" if self.ema is not None else "model",
                "trained_precision": self.precision,
                # how images larger than the input were brought to it (dataset.resize of image folders)
                "resize": getattr(self.run.dataset, "resize", "crop"),
                "linear_probe": not self.method.trains_classifier}

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
            "precision": self.precision,
            "config": self.run.plain(),
            "choices": self.choices,
            "model_card": self.model_card(),
        }

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
        # A resumed run computes as it did, whatever this CPU would pick; a checkpoint that records no
        # precision predates bf16 on the CPU, when every CPU run was float32.
        ran = state.get("precision") or ("fp32" if self.device.type == "cpu" else self.precision)
        if ran != self.precision:
            log.info("precision %s, as the checkpoint's run computed", ran)
            self.precision = ran
        self.best = dict(state.get("best") or {})
        self.running.load_state_dict(state.get("running_metrics") or {}, self.device)
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.choices = state.get("choices") or self.choices
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from will be logged again; drop them."""
        if not is_main() or not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if json.loads(r)["step"] <= step]
        if len(keep) != len(rows):
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(r + "\n" for r in keep))
            os.replace(tmp, self.metrics_path)

    def save(self, name: str) -> None:
        if not is_main():  # every rank holds the same state; rank 0 writes it
            return
        save_checkpoint(self.state_dict(), self.run_dir / name)

    # -- training ------------------------------------------------------------------------------

    def autocast(self):
        """bf16 autocast around forward passes (training and evaluation), or nothing for fp32."""
        return autocast(self.precision, self.device)

    def train_step(self, step: int) -> Dict[str, object]:
        """One optimiser step over `grad_accumulation` micro-batches (micro-batch i of step k is batch k*n + i)."""
        accumulation = self.options.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics, outputs = 0.0, {}, []
        for micro in range(step * accumulation, (step + 1) * accumulation):
            batch = self.batches(micro)
            with self.autocast():
                out = self.method.training_step(self.train_model, batch, step)
            if self.health.skip_nonfinite and any_rank(not torch.isfinite(out.loss).item()):  # costs a sync; opt-in
                self.health.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return {}
            self.health.watch(out.loss, step)
            (out.loss / accumulation).backward()
            loss = loss + out.loss.detach() / accumulation
            metrics = out.metrics if accumulation == 1 else _average_into(metrics, out.metrics, accumulation)
            outputs.append(out)
        average_gradients(self.method.parameters())  # the method's own heads, as DDP does for the backbone
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step(self.model, step, outputs)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {"loss": loss, **metrics}

    def evaluate(self) -> Dict[str, dict]:
        """Classifier metrics on test (and validation), plus kNN accuracy with the labeled images as memory bank.

        For a method that does not train the classifier (self-supervised pretraining), the classifier is
        first fitted as a linear probe on the frozen features of the labeled images.
        """
        d, bs, model = self.data, self.options.eval_batch_size, self.eval_model
        num_classes = self.data_cpu.num_classes
        bank = embed(model, d.images[d.labeled], self.batches.prepare, bs, self.autocast)
        bank_labels = d.labels[d.labeled]
        if not self.method.trains_classifier:
            fit_linear_probe(model.classifier, bank, bank_labels)
            broadcast_module(model.classifier)  # every rank keeps rank 0's probe (BatchNorm buffers may differ)
            if model is not self.model:  # keep the trained model's classifier in step (checkpoints, fine-tuning)
                self.model.classifier.load_state_dict(model.classifier.state_dict())
        results = {}
        sets = {"test": (d.test_images, d.test_labels)}
        if len(d.validation):
            sets["val"] = (d.images[d.validation], d.labels[d.validation])
        for name, (images, labels) in sets.items():
            features = embed(model, images, self.batches.prepare, bs, self.autocast)
            preds = classify(model.classifier, features).argmax(dim=1)
            results[name] = classification_metrics(preds, labels, num_classes)
            knn = knn_predict(bank, bank_labels, features, num_classes, self.options.knn_k, self.options.knn_temperature)
            results[name]["knn_accuracy"] = (knn == labels).float().mean().item() if len(labels) else 0.0
        return results

    def fit(self) -> dict:
        t = self.options
        stop_at = t.stop_at_step or t.max_steps
        self.model.train()
        self.method.train()
        progress = TrainingProgress(t.max_steps, enabled=t.progress_bar and is_main(), show_ssl=bool(self.method.unlabeled_views))
        self.views_logged = self.step > 0  # the augmented views go to the loggers at the first evaluation only
        try:
            self.loggers.start(self.run.plain(), self.choices, self.run_dir, self.step)
            started = time.perf_counter() - self.elapsed
            return self._fit(progress, started, stop_at)
        finally:
            self.loggers.close()

    def _fit(self, progress: TrainingProgress, started: float, stop_at: int) -> dict:
        t, running, max_steps = self.options, self.running, self.options.max_steps
        status, results = "completed", None
        self.stop_signal: Optional[str] = None
        with progress, StopSignals() as signals:
            progress.update(self.step, {})
            while self.step < max_steps:
                metrics = self.train_step(self.step)
                running.add(metrics)
                self.step += 1
                every = lambda n: self.step % n == 0 or self.step == max_steps  # noqa: E731
                # A signal on any rank stops every rank after the same step (a CPU message under torchrun).
                stopping = any_rank(signals.received is not None) or self.step >= stop_at
                if (every(t.log_every) or every(t.eval_every) or every(t.checkpoint_every) or stopping) \
                        and self.health.diverged_at() is not None:
                    # Nothing after the bad step is evaluated or saved: last.pt stays the last good state.
                    self.elapsed = time.perf_counter() - started
                    return self._diverged(results)
                if every(t.log_every):
                    train, lr = running.compute(), self.scheduler.get_last_lr()[0]
                    progress.update(self.step, {**train, "lr": lr, **self.last_eval})
                    if not every(t.eval_every):  # an evaluation step logs the same figures with its own
                        self.loggers.log_scalars(self.step, {"lr": lr, **{f"train/{k}": v for k, v in train.items()}})
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
                    if self.step < stop_at:  # a signal, here or on another rank
                        self.stop_signal = signals.received or "SIGTERM"
                    why = (f"received {signals.received}" if signals.received else
                           "another rank received a signal" if self.step < stop_at else "trainer.stop_at_step")
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
        if is_main():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        self.loggers.log_eval(self.step, Evaluation(
            scalars={k: v for k, v in row.items() if k not in ("step", "elapsed_s")},
            confusion=results["test"]["confusion_matrix"], class_names=self.data_cpu.class_names,
            views=None if self.views_logged else self.view_samples()))
        self.views_logged = True
        # Model selection uses the validation split only; without one, the latest evaluation is kept.
        selected_by = "val/accuracy" if "val" in results else "latest"
        score = results["val"]["accuracy"] if "val" in results else float(self.step)
        if not self.best or score > self.best["score"] or selected_by == "latest":
            self.best = {"score": score, "selected_by": selected_by, "step": self.step,
                         "test/accuracy": results["test"]["accuracy"],
                         "val/accuracy": results["val"]["accuracy"] if "val" in results else None}
            self.save(BEST)
        parts = [f"step {self.step}/{self.options.max_steps}", f"loss {train.get('loss', float('nan')):.4f}"]
        if "mask_rate" in train:
            parts.append(f"mask {train['mask_rate']:.3f}")
        if "pseudo_label_acc" in train:
            parts.append(f"pl_acc {train['pseudo_label_acc']:.3f}")
        if "val" in results:
            parts.append(f"val_acc {results['val']['accuracy']:.4f}")
        parts.append(f"test_acc {results['test']['accuracy']:.4f}")
        parts.append(f"test_knn {results['test']['knn_accuracy']:.4f}")
        parts.append(f"{self.elapsed:.1f}s")
        parts.append(self.precision)
        log.info(" | ".join(parts))

    def view_samples(self, count: int = 16) -> Optional[Dict[str, torch.Tensor]]:
        """A few training images through each view the method trains on (uint8), for the loggers to show.
        Their own generator leaves the training's randomness untouched."""
        if self.batches.stream is not None:  # streamed from files: no cheap random access here
            return None
        d = self.data
        pool, names = (d.unlabeled, self.method.unlabeled_views) if self.method.unlabeled_views else \
            (d.labeled, self.method.labeled_views)
        raw = d.images[pool[:count]]
        generator = torch.Generator(device=raw.device)
        out = {"original": raw}
        for name in names:
            out[name] = self.batches.augment(name, raw, generator.manual_seed(self.run.seed))
        return out

    def write_pictures(self, results: Optional[Dict[str, dict]]) -> None:
        """curves.png from metrics.jsonl and confusion_matrix.png of the last evaluation, into the run directory."""
        plot_training_curves(self.metrics_path, self.run_dir / "curves.png")
        if results is not None:
            title = f"{self.run.names['method']} on {self.run.names['dataset']}, test, step {self.step}"
            plot_confusion_matrix(results["test"]["confusion_matrix"], self.data_cpu.class_names,
                                  self.run_dir / "confusion_matrix.png", title=title)

    def _diverged(self, results) -> dict:
        bad = self.health.diverged_at()
        message = (f"loss became non-finite at step {bad}; stopped, and {self.run_dir / LAST} keeps the last "
                   f"good checkpoint (lower optim.lr, or set trainer.nonfinite=skip)")
        log.error(message)
        summary = self._summary("diverged", results)
        summary.update(error=message, diverged_at_step=bad)
        if is_main():
            write_summary(self.run_dir, summary)
        self.loggers.finish(summary, self.run_dir)
        raise UserError(message)

    def _finish(self, status: str, results: Dict[str, dict]) -> dict:
        summary = self._summary(status, results)
        if status == "interrupted" and self.stop_signal:
            summary["signal"] = self.stop_signal  # ssl-train then exits 128 + the signal's number
        if is_main():
            write_json(self.run_dir / "confusion_matrix.json",
                       {"class_names": self.data_cpu.class_names, "matrix": results["test"]["confusion_matrix"]})
            write_summary(self.run_dir, summary)
            self.write_pictures(results)
        self.loggers.finish(summary, self.run_dir)
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
            "method": self.run.names["method"],
            "dataset": self.run.names["dataset"],
            "backbone": self.run.names["backbone"],
            "num_labels": int(len(self.split.labeled)),
            "num_unlabeled": int(len(self.data.unlabeled)),
            "num_validation": int(len(self.split.validation)),
            "seed": int(self.run.seed),
            "step": self.step,
            "max_steps": int(self.options.max_steps),
            "wall_time_s": round(self.elapsed, 2),
            "device": str(self.device),
            "precision": self.precision,
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

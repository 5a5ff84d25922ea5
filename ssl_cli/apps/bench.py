"""ssl-bench: how fast a training step runs, and how close it comes to the machine's limit.

For one backbone, method, batch size, unlabeled ratio and device it builds the real runner
(`ssl_cli.engine.trainer.Trainer`: data on the device, BatchBuilder, method, optimiser, scheduler, EMA) on
synthetic 32x32x3 images in memory (or an image folder, streamed or in memory) and times:

  (a) compute   forward, backward and optimiser step of the same model, optimiser and loss on ready,
                normalised tensors: the limit a training step can reach
  (b) step      the full training step, Trainer.train_step: sampling, gathering (or streaming),
                weak and strong augmentation, normalisation, forward, backward, optimiser, scheduler, EMA
  (c) augment   the augmentation alone (the method's views of one batch of uint8 images)
      batch     BatchBuilder alone: sampling, gathering, augmentation, normalisation
      load      sampling and gathering alone (streaming: waiting for the decode workers)
  (d) eval      inference: the trained model as `load_model` rebuilds it from a checkpoint (what
                ssl-predict uses), class probabilities of --eval-images test images

Each phase runs --warmup times untimed, then --repeats timed runs (each of --steps-per-repeat calls,
synchronised with the device at its ends only); (a) and (b) alternate, so a change in machine load
hits both. With several precisions (--precision fp32,bf16) one runner per precision is built and
(a) and (b) of all of them alternate in the same loop, so the comparison sees the same machine load;
the other phases follow per precision. Reported: median, min, max, interquartile range, images per second (images through the
model per step: labeled + every unlabeled view), the FLOP rate from torch.utils.flop_counter's count
of one step against the machine's peak (--peak-tflops, or measured with a large matmul at start), and
the ratios (b)/(a) in images per second and (c)/(b) in time. JSON with --json PATH.

    ssl-bench --backbone wrn28_2 --device cpu --json bench/wrn28_2_cpu.json
    ssl-bench --backbone cnn --device cpu
    ssl-bench --backbone cnn --device cpu --dataset imagefolder --root ../shared/data/cifar10
    ssl-bench --backbone wrn28_2 --device cpu --precision fp32,bf16 --json bench/wrn28_2_cpu_bf16.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from ssl_cli.core.errors import UserError
from ssl_cli.core.tables import markdown_table
from ssl_cli.engine.config import check_config, compose
from ssl_cli.engine.model_io import load_model
from ssl_cli.engine.outputs import LAST
from ssl_cli.engine.precision import PRECISIONS, cpu_capability, cpu_supports_bf16, resolve_precision
from ssl_cli.engine.trainer import Trainer
from ssl_cli.methods import METHODS

# The must-show targets (docs/benchmarks.md): FixMatch on the CPU.
STEP_OVER_COMPUTE_TARGET = {"wrn28_2": 0.9, "cnn": 0.8}
AUGMENT_SHARE_TARGET = 0.10


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssl-bench", description=__doc__.split("\n\n")[0],
                                epilog="Phases and output: see docs/benchmarks.md.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="wrn28_2", help="cnn, wrn28_2, wrn28_8, resnet18 (default wrn28_2)")
    p.add_argument("--method", default="fixmatch", help="training method (default fixmatch)")
    p.add_argument("--batch-size", type=int, default=64, help="labeled images per step (default 64)")
    p.add_argument("--unlabeled-ratio", type=int, default=7,
                   help="unlabeled images per labeled image (default 7: 64 + 448, two views each)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", type=precision_list, metavar="P[,P]",
                   help="auto | fp32 | bf16, or a comma list (fp32,bf16) timed side by side, alternated; auto: "
                        "bf16 autocast on CUDA and on CPUs with AMX-BF16 or AVX-512 BF16, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default on)")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the model (trainer.compile=true); MODE: default, reduce-overhead "
                        "(CUDA graphs), max-autotune")
    p.add_argument("--reuse-cpu-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="trainer.reuse_cpu_memory: glibc keeps freed memory instead of page-faulting it in again "
                        "every step (default on)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's, the core count)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per phase (default: 3 on the CPU, 10 for cnn; 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 on the CPU, 5 on CUDA)")
    p.add_argument("--steps-per-repeat", type=int, default=None, help="calls per timed run (default: 1 on the CPU, 10 on CUDA)")
    p.add_argument("--dataset", default="synthetic", choices=("synthetic", "imagefolder"),
                   help="synthetic: 32x32x3 images made in memory (default); imagefolder: --root")
    p.add_argument("--root", default=None, help="image folder root (root/train/<class>/...) for --dataset imagefolder")
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True,
                   help="image folder: decode in DataLoader workers every step (default) or decode once into memory")
    p.add_argument("--num-workers", type=int, default=2, help="streaming decode workers (default 2)")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic: side of the images (default 32); imagefolder: resize to this square")
    p.add_argument("--train-images", type=int, default=8192, help="synthetic training images (default 8192)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="images evaluated in (d) (default: 512 on the CPU, 2048 for cnn; 10000 on CUDA)")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the machine's peak in TFLOP/s for the FLOP-rate fraction (default: measured with a matmul)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 when a must-show target (docs/benchmarks.md) is missed")
    return p.parse_args(argv)


def precision_list(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: each precision must be one of {', '.join(PRECISIONS)}")
    return names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available on this machine")
    return torch.device(name)


def fill_defaults(a: argparse.Namespace, device: torch.device) -> None:
    cpu = device.type == "cpu"
    small = a.backbone == "cnn"
    if a.repeats is None:
        a.repeats = (10 if small else 3) if cpu else 20
    if a.warmup is None:
        a.warmup = (2 if small else 1) if cpu else 5
    if a.steps_per_repeat is None:
        a.steps_per_repeat = 1 if cpu else 10
    if a.eval_images is None:
        a.eval_images = (2048 if small else 512) if cpu else 10000
    for name in ("batch_size", "unlabeled_ratio", "repeats", "steps_per_repeat", "eval_images", "eval_batch_size",
                 "train_images"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if a.warmup < 0 or a.num_workers < 0:
        raise UserError("--warmup and --num-workers must be >= 0")
    if a.dataset == "imagefolder" and not a.root:
        raise UserError("--dataset imagefolder needs --root (a folder root/train/<class>/<image>)")


# --------------------------------------------------------------------------- the machine


def describe_machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "os": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def measure_peak(device: torch.device, bf16: bool) -> tuple:
    """Best FLOP rate of large square matmuls: the compute-bound ceiling this process can reach."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    n, tries = (2048, 5) if device.type == "cpu" else (8192, 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = _sync(device)
    torch.matmul(a, b)
    sync()
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    tflops = 2 * n**3 / best / 1e12
    return tflops, (f"measured: best of {tries} {str(dtype).replace('torch.', '')} {n}x{n} matmuls "
                    f"({torch.get_num_threads()} threads)" if device.type == "cpu" else
                    f"measured: best of {tries} {str(dtype).replace('torch.', '')} {n}x{n} matmuls")


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# --------------------------------------------------------------------------- the runner under test


def overrides(a: argparse.Namespace, device: torch.device, precision: str) -> List[str]:
    out = ["dataset=synthetic" if a.dataset == "synthetic" else "dataset=imagefolder",
           f"backbone={a.backbone}", f"method={a.method}", f"seed={a.seed}",
           f"trainer.device={device.type}", f"trainer.batch_size={a.batch_size}",
           f"trainer.precision={precision}", f"trainer.channels_last={str(a.channels_last).lower()}",
           f"trainer.compile={'true' if a.compile else 'false'}", "trainer.progress_bar=false",
           f"trainer.reuse_cpu_memory={str(a.reuse_cpu_memory).lower()}",
           f"trainer.eval_batch_size={a.eval_batch_size}", "trainer.max_steps=1048576"]
    if a.compile:
        out.append(f"trainer.compile_mode={a.compile}")
    if a.threads:
        out.append(f"trainer.num_threads={a.threads}")
    # Every training image labeled: the label split does not change the cost of a step.
    out += ["dataset.num_labels=null", "dataset.label_fraction=1.0", "dataset.num_validation=0"]
    if a.dataset == "synthetic":
        out += ["dataset.num_classes=10", "dataset.channels=3",
                f"dataset.image_size={a.image_size or 32}", f"dataset.num_train={a.train_images}",
                f"dataset.num_test={a.eval_images}"]
    else:
        out += [f"dataset.root={a.root}", f"dataset.streaming={str(a.streaming).lower()}",
                f"dataset.num_workers={a.num_workers}"]
        if a.image_size:
            out.append(f"dataset.image_size={a.image_size}")
    return out


def build_trainer(a: argparse.Namespace, device: torch.device, run_dir: Path, precision: str):
    ov = overrides(a, device, precision)
    if "unlabeled_ratio" in METHODS.options(a.method).__dataclass_fields__:
        ov.append(f"method.unlabeled_ratio={a.unlabeled_ratio}")
    return Trainer(check_config(compose(ov)), run_dir, {}), ov


def batch_images(batch) -> int:
    """Images through the model in one step: the labeled view plus every unlabeled view."""
    return sum(v.shape[0] for v in batch.labeled) + sum(v.shape[0] for v in batch.unlabeled)


def count_flops(trainer, batch) -> tuple:
    """(FLOPs of one training step's forward and backward, FLOPs of one evaluation image), counted by
    torch.utils.flop_counter on an eager copy of the model (the trained model may be compiled)."""
    if trainer.ema is not None:
        source = trainer.ema.model
    elif getattr(trainer.model, "_compiled_call_impl", None) is None:
        source = trainer.model
    else:
        return None, None  # no eager copy to count on (compiled, no EMA)
    model = copy.deepcopy(source).train()
    for p in model.parameters():
        p.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        with trainer.autocast():
            out = trainer.method.training_step(model, batch, 0)
        out.loss.backward()
    step_flops = counter.get_total_flops()
    trainer.optimizer.zero_grad(set_to_none=True)  # modules the method owns got gradients too
    images = (batch.labeled or batch.unlabeled)[0]
    k = min(8, images.shape[0])
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        with trainer.autocast():
            model(images[:k])
    return step_flops, counter.get_total_flops() / k


# --------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, per_repeat: int, sync) -> List[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        times.append(time_once(fn, per_repeat, sync))
    return times


def time_once(fn: Callable[[], object], per_repeat: int, sync) -> float:
    """Seconds per call of `fn`, over `per_repeat` calls (torch.utils.benchmark synchronises CUDA)."""
    sync()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(per_repeat).mean


def summarise(times: List[float], images: int, flops: Optional[float] = None,
              peak_tflops: Optional[float] = None) -> dict:
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [med, med, med]
    out = {
        "median_s": med, "min_s": min(times), "max_s": max(times), "iqr_s": q[2] - q[0],
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
        "repeats": len(times), "times_s": times,
        "images": images, "images_per_s": images / med if med > 0 else float("inf"),
    }
    if flops:
        out["tflops"] = flops / med / 1e12
        if peak_tflops:
            out["peak_fraction"] = out["tflops"] / peak_tflops
    return out


def run_benchmark(a: argparse.Namespace) -> dict:
    device = resolve_device(a.device)
    fill_defaults(a, device)
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.getLogger("ssl_cli").setLevel(logging.WARNING)
    machine = describe_machine(device)
    sync = _sync(device)
    # What each requested precision runs as here (auto resolved); a repeat (auto,fp32 on fp32) runs once.
    precisions = list(dict.fromkeys(resolve_precision(p, device) for p in a.precision))
    peaks = {}
    for precision in precisions:
        peaks[precision] = ((a.peak_tflops, "given (--peak-tflops)") if a.peak_tflops
                            else measure_peak(device, precision == "bf16"))

    with tempfile.TemporaryDirectory(prefix="ssl-bench-") as tmp:
        trainers = {}
        try:
            for precision in precisions:
                (Path(tmp) / precision).mkdir()
                trainers[precision] = build_trainer(a, device, Path(tmp) / precision, precision)
            runs = _phases(a, {p: t for p, (t, _) in trainers.items()}, device, sync, peaks, Path(tmp))
        finally:
            for trainer, _ in trainers.values():
                images = trainer.data.images
                if hasattr(images, "close"):
                    images.close()
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    for precision, r in runs.items():
        r.update(peak_tflops=peaks[precision][0], peak_source=peaks[precision][1],
                 overrides=trainers[precision][1])
    # The first precision's figures at the top level (as with one precision), every one under by_precision.
    results = {**runs[precisions[0]], "machine": machine, "args": args, "precisions": precisions,
               "by_precision": runs}
    if len(precisions) > 1:
        base = runs[precisions[0]]["phases"]
        results["speedup_over_" + precisions[0]] = {
            p: {phase: base[phase]["median_s"] / r["phases"][phase]["median_s"] for phase in ("compute", "step", "eval")}
            for p, r in runs.items() if p != precisions[0]}
    return results


class _Timed:
    """One runner's (a) compute-only and (b) full-step calls, on a batch built once."""

    def __init__(self, trainer):
        self.trainer = trainer
        trainer.model.train()
        trainer.method.train()
        self.batch = trainer.batches(0)  # (a) trains on this batch: ready, normalised tensors on the device
        self.images = batch_images(self.batch)
        self.step_flops, self.eval_flops = count_flops(trainer, self.batch)
        trainer.step = 1
        self.compute_times: List[float] = []
        self.step_times: List[float] = []

    def compute(self):
        t = self.trainer
        with t.autocast():
            out = t.method.training_step(t.model, self.batch, 0)
        t.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        t.optimizer.step()

    def full_step(self):
        t = self.trainer
        metrics = t.train_step(t.step)
        t.running.add(metrics)
        t.step += 1


def _phases(a, trainers: Dict[str, Trainer], device, sync, peaks, tmp: Path) -> Dict[str, dict]:
    timed = {p: _Timed(t) for p, t in trainers.items()}
    # (a) and (b) of every precision alternate: a drift in machine load (or clock) shows in all of them,
    # not in their ratios.
    for _ in range(a.warmup):
        for t in timed.values():
            t.compute()
            t.full_step()
    for _ in range(a.repeats):
        for t in timed.values():
            t.compute_times.append(time_once(t.compute, a.steps_per_repeat, sync))
            t.step_times.append(time_once(t.full_step, a.steps_per_repeat, sync))
    return {p: _other_phases(a, t, device, sync, peaks[p][0], tmp / p) for p, t in timed.items()}


def _other_phases(a, timed: _Timed, device, sync, peak, tmp: Path) -> dict:
    trainer = timed.trainer
    method, builder, data = trainer.method, trainer.batches, trainer.data
    images, step_flops, eval_flops = timed.images, timed.step_flops, timed.eval_flops
    compute_times, step_times = timed.compute_times, timed.step_times

    # (c) augmentation alone, on one uint8 batch already on the device.
    raw_labeled, raw_unlabeled = _raw_batch(trainer)
    augment_view, gen = builder.augment, builder.gen

    def augment():
        for view in method.labeled_views:
            augment_view(view, raw_labeled, gen)
        for view in method.unlabeled_views:
            augment_view(view, raw_unlabeled, gen)

    augment_times = time_calls(augment, a.warmup, a.repeats, a.steps_per_repeat, sync)

    def build_batch():
        builder(trainer.step)
        trainer.step += 1

    # Streaming: the decode workers run ahead by up to `depth` steps while other phases run. Draining
    # that queue first and timing runs twice as long measures the rate at which they decode.
    streaming = not isinstance(data.images, torch.Tensor)
    depth = max(1, 2 * data.images.num_workers) if streaming else 0
    io_warmup, io_calls = a.warmup + depth, max(a.steps_per_repeat, 2 * depth)
    batch_times = time_calls(build_batch, io_warmup, a.repeats, io_calls, sync)

    def load():
        step = trainer.step
        if builder.labeled_sampler is not None:
            builder.gather(data.labeled[builder.labeled_sampler(step)], step)
        if builder.unlabeled_sampler is not None:
            builder.gather(data.unlabeled[builder.unlabeled_sampler(step)], step)
        trainer.step += 1

    load_times = time_calls(load, io_warmup, a.repeats, io_calls, sync)
    loaded = sum(s.batch_size for s in (builder.labeled_sampler, builder.unlabeled_sampler) if s is not None)

    # (d) inference: the model as load_model rebuilds it from a checkpoint (in the runner's precision), on
    # the first --eval-images test images (uint8, at the model's size).
    n_eval = min(a.eval_images, len(data.test_images))
    test = data.test_images[torch.arange(n_eval, device=data.test_labels.device)]
    trainer.save(LAST)
    trained = load_model(tmp / LAST, device=device, precision=trainer.precision)

    def evaluate():
        trained.probabilities(test, batch_size=a.eval_batch_size)

    eval_times = time_calls(evaluate, min(a.warmup, 1), a.repeats, 1, sync)

    phases = {
        "compute": summarise(compute_times, images, step_flops, peak),
        "step": summarise(step_times, images, step_flops, peak),
        "augment": summarise(augment_times, images),
        "batch": summarise(batch_times, images),
        "load": summarise(load_times, loaded),
        "eval": summarise(eval_times, n_eval, eval_flops * n_eval if eval_flops else None, peak),
    }
    step_med = phases["step"]["median_s"]
    ratios = {
        "step_over_compute": phases["compute"]["median_s"] / step_med,
        "augment_share_of_step": phases["augment"]["median_s"] / step_med,
        "batch_share_of_step": phases["batch"]["median_s"] / step_med,
    }
    return {"phases": phases, "ratios": ratios, "images_per_step": images,
            "flops_per_step": step_flops, "flops_per_eval_image": eval_flops,
            "streaming": streaming,
            "device": str(device), "precision": trainer.precision,
            "checks": _checks(a, device, ratios)}


def _raw_batch(trainer):
    """The uint8 labeled and unlabeled images of one step, on the device (decoded once if streamed)."""
    builder, data = trainer.batches, trainer.data

    def take(pool, sampler):
        if sampler is None:
            return None
        idx = pool[sampler(0)]
        if isinstance(data.images, torch.Tensor):
            return data.images[idx]
        return data.images[idx][:]

    return take(data.labeled, builder.labeled_sampler), take(data.unlabeled, builder.unlabeled_sampler)


def _checks(a, device, ratios) -> Dict[str, dict]:
    if device.type != "cpu" or a.method != "fixmatch" or a.dataset != "synthetic":
        return {}
    checks = {}
    target = STEP_OVER_COMPUTE_TARGET.get(a.backbone)
    if target is not None:
        checks["step_over_compute"] = {"value": ratios["step_over_compute"], "target": f">= {target}",
                                       "ok": ratios["step_over_compute"] >= target}
    if a.backbone == "wrn28_2":
        share = ratios["augment_share_of_step"]
        checks["augment_share_of_step"] = {"value": share, "target": f"<= {AUGMENT_SHARE_TARGET}",
                                           "ok": share <= AUGMENT_SHARE_TARGET}
    return checks


# --------------------------------------------------------------------------- output


PHASE_NAMES = {
    "compute": "(a) compute only: forward, backward, optimiser",
    "step": "(b) full training step",
    "augment": "(c) augmentation alone",
    "batch": "batch building: sample, gather, augment, normalise",
    "load": "sample and gather (streaming: decode)",
    "eval": "(d) evaluation",
}


def format_report(results: dict) -> str:
    a, m = results["args"], results["machine"]
    where = m.get("gpu") or m["cpu"]
    cap = m.get("cpu_capability") or {}
    bf16_features = [k for k in ("amx_bf16", "amx_tile", "avx512_bf16") if cap.get(k)]
    lines = [f"machine: {where} ({cap.get('capability', '?')}; native bf16: "
             f"{', '.join(bf16_features) if bf16_features else 'no'}); {m['torch_threads']} torch threads, "
             f"{m['logical_cpus']} logical CPUs; torch {m['torch']}; load average {m['load_average_1min']}"]
    for r in results["by_precision"].values():
        lines += [""] + _format_run(a, r)
    speedups = {k: v for k, v in results.items() if k.startswith("speedup_over_")}
    for key, by_precision in speedups.items():
        base = key[len("speedup_over_"):]
        for precision, s in by_precision.items():
            lines.append(f"{precision} vs {base}: compute x{s['compute']:.2f}, full step x{s['step']:.2f}, "
                         f"evaluation x{s['eval']:.2f} (median time {base} / {precision})")
    load = m["load_average_1min"]
    if load is not None and m["logical_cpus"] and load > 0.5 * m["logical_cpus"] + 0.5:
        lines.append(f"warning: the machine was busy at start (load average {load} on {m['logical_cpus']} CPUs); "
                     f"these timings are not representative")
    return "\n".join(lines)


def _format_run(a: dict, r: dict) -> List[str]:
    data = a["dataset"] if a["dataset"] == "synthetic" else (
        f"imagefolder {a['root']} ({'streaming, %d workers' % a['num_workers'] if r['streaming'] else 'in memory'})")
    lines = [
        f"ssl-bench: {a['method']} {a['backbone']}, batch {a['batch_size']} labeled + "
        f"{a['batch_size'] * a['unlabeled_ratio']} unlabeled ({r['images_per_step']} images through the model per "
        f"step), {r['device']} {r['precision']}, channels_last {a['channels_last']}, compile {a['compile'] or 'off'}, "
        f"reuse_cpu_memory {a['reuse_cpu_memory']}, "
        f"data {data}",
        f"peak {r['peak_tflops']:.3f} TFLOP/s ({r['peak_source']}); FLOPs per step "
        + (f"{r['flops_per_step'] / 1e9:.1f} G" if r["flops_per_step"] else "not counted"),
        f"warm-up {a['warmup']}, {a['repeats']} repeats of {a['steps_per_repeat']} call(s)",
        "",
    ]
    rows = [[PHASE_NAMES[key], f"{1e3 * s['median_s']:.1f}", f"{1e3 * s['min_s']:.1f}-{1e3 * s['max_s']:.1f}",
             f"{1e3 * s['iqr_s']:.1f}", f"{s['images_per_s']:.0f}", f"{s['tflops']:.3f}" if "tflops" in s else "",
             f"{100 * s['peak_fraction']:.0f} %" if "peak_fraction" in s else ""] for key, s in r["phases"].items()]
    lines += markdown_table(["phase", "median ms", "min-max ms", "IQR ms", "images/s", "TFLOP/s", "of peak"],
                            rows).rstrip().split("\n")
    ratios = r["ratios"]
    lines += ["",
              f"step / compute (images/s): {ratios['step_over_compute']:.3f}",
              f"augmentation share of the step: {100 * ratios['augment_share_of_step']:.1f} %",
              f"batch building share of the step: {100 * ratios['batch_share_of_step']:.1f} %"]
    for name, c in r["checks"].items():
        lines.append(f"target {name} {c['target']}: {c['value']:.3f} {'ok' if c['ok'] else 'MISSED'}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        results = run_benchmark(args)
    except UserError as e:
        print(f"ssl-bench: error: {e}", file=sys.stderr)
        return 2
    print(format_report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"written {args.json}")
    if args.check and not all(c["ok"] for r in results["by_precision"].values() for c in r["checks"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

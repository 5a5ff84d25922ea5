"""ssl-predict throughput on the CIFAR-10 test folder: PyTorch against onnxruntime, and how far they differ.

It trains the small cnn on the image-folder copy of CIFAR-10 for --steps steps (or takes --run, an
existing run directory), exports it with ssl-export (ONNX), then over the test JPEGs (10,000; --limit
for fewer) measures, for each runtime, images per second of

  end to end   what ssl-predict does: decode each JPEG, batch, classify (ssl_cli.engine.inference.predict_files)
  model only   the classification of already decoded uint8 images

plus decoding alone, the accuracy of both (true class from the folder name), the largest absolute
difference of their probabilities, and whether ssl-predict's accuracy equals the run's summary.json
(it must, for a model trained on this folder: same weights, same pixels). Results as JSON (--json)
and a markdown table (printed; --markdown PATH to write it).

    python scripts/predict_benchmark.py --root ../shared/data/cifar10 --steps 2000 --out bench/predict
    python scripts/predict_benchmark.py --root ../shared/data/cifar10 --run outputs/<date>/<run> --out bench/predict

Timings mean something only on a quiet machine; --num-threads (default 2) sets both runtimes' threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssl_cli.apps import export as export_app
from ssl_cli.core.tables import markdown_table
from ssl_cli.data.files import decode_images, list_class_folders
from ssl_cli.engine.inference import OnnxRuntimeModel, labeled_files, predict_files, run_summary
from ssl_cli.engine.model_io import load_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/cifar10"), help="root/train/<class>, root/test/<class>")
    p.add_argument("--run", type=Path, default=None, help="an existing run directory (skips training)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the cnn when --run is not given")
    p.add_argument("--method", default="supervised", help="method of that training run (default supervised)")
    p.add_argument("--num-labels", type=int, default=4000)
    p.add_argument("--out", type=Path, default=Path("bench/predict"), help="working folder (run, model.onnx, results)")
    p.add_argument("--limit", type=int, default=None, help="only this many test images (spread over the classes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each measurement (the best is kept)")
    p.add_argument("--json", type=Path, default=None, help="default: <out>/predict_benchmark.json")
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


def console_script(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def train(args) -> Path:
    run = args.out / "run"
    if (run / "summary.json").is_file():
        return run  # trained by an earlier call with the same --out
    cmd = [console_script("ssl-train"), "dataset=cifar10", f"dataset.root={args.root}", "backbone=cnn",
           f"method={args.method}", f"dataset.num_labels={args.num_labels}", f"trainer.max_steps={args.steps}",
           f"trainer.eval_every={args.steps}", f"trainer.num_threads={args.num_threads}",
           "trainer.progress_bar=false", f"hydra.run.dir={run}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.num_threads)
    run = args.run or train(args)
    onnx_path = args.out / "model.onnx"
    if export_app.main([str(run), "--format", "onnx", "--output", str(onnx_path), "--overwrite", "--device", "cpu",
                        "--check-images", str(args.root / "test")]) != 0:
        raise SystemExit("ssl-export failed")

    model = load_model(run, device="cpu", precision="fp32")  # the reference onnxruntime (float32) must match
    runtimes = {"PyTorch": model, "onnxruntime": OnnxRuntimeModel(onnx_path, args.num_threads)}
    files, labels = labeled_files(list_class_folders(args.root / "test"), model.class_names, args.root / "test")
    if args.limit and args.limit < len(files):
        every = len(files) / args.limit
        keep = [int(i * every) for i in range(args.limit)]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    labels = torch.tensor(labels)

    images, kept, bad = decode_images(files, model.channels, model.image_size, model.resize)
    assert not bad, bad[:3]
    decode_s = best_time(lambda: decode_images(files, model.channels, model.image_size, model.resize), args.repeats)
    rows, probabilities = [], {}
    for name, m in runtimes.items():
        with torch.no_grad():
            probabilities[name] = m.probabilities(images, args.batch_size)
            model_s = best_time(lambda: m.probabilities(images, args.batch_size), args.repeats)
            end_to_end_s = best_time(lambda: predict_files(m, files, args.batch_size, progress=False), args.repeats)
        accuracy = (probabilities[name].argmax(1) == labels).double().mean().item()
        rows.append({"runtime": name, "images": len(files), "end_to_end_images_per_s": len(files) / end_to_end_s,
                     "model_only_images_per_s": len(files) / model_s, "accuracy": accuracy})
    max_diff = (probabilities["PyTorch"] - probabilities["onnxruntime"]).abs().max().item()
    summary = run_summary(model) or {}
    run_accuracy = (summary.get("final") or {}).get("test/accuracy")
    results = {
        "run": str(run), "onnx": str(onnx_path), "images": len(files), "batch_size": args.batch_size,
        "num_threads": args.num_threads, "decode_images_per_s": len(files) / decode_s, "runtimes": rows,
        "max_abs_diff": max_diff, "run_test_accuracy": run_accuracy,
        "predict_accuracy_equals_run": (rows[0]["accuracy"] == run_accuracy) if args.limit is None else None,
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "torch": torch.__version__},
    }
    table = markdown_table(
        ["runtime", "images", "end to end (img/s)", "model only (img/s)", "accuracy"],
        [[r["runtime"], r["images"], f"{r['end_to_end_images_per_s']:.0f}", f"{r['model_only_images_per_s']:.0f}",
          f"{r['accuracy']:.4f}"] for r in rows])
    notes = (f"decoding alone: {results['decode_images_per_s']:.0f} img/s; largest |p_onnxruntime - p_pytorch| "
             f"{max_diff:.2e}; run's summary test accuracy {run_accuracy}; {args.num_threads} threads, "
             f"batch {args.batch_size}, load average {results['machine']['load_average']}")
    print(table)
    print(notes)
    (args.json or args.out / "predict_benchmark.json").write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + notes + "\n")
    return results


if __name__ == "__main__":
    main()

"""ssl-export: a trained model as ONNX or TorchScript, with a JSON sidecar, checked against PyTorch.

    ssl-export outputs/<date>/<run> --format onnx --output model.onnx --check-images data/test

The exported graph takes uint8 images [N, C, H, W] (0..255, N free) and returns class probabilities
[N, classes]: the normalisation is inside, so a caller only decodes the image, converts it to the
model's channels, resizes the shorter side to the input size and centre-crops (as ssl-predict does).
The sidecar (model.onnx.json beside model.onnx) holds the class names, input size, channels, mean/std,
opset, preprocessing, the source run and its test accuracy, and the largest difference the self-check
found between the export (onnxruntime, or the TorchScript module) and PyTorch on a batch of images.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch

from ssl_cli.core.errors import UserError
from ssl_cli.data.files import decode_images, list_image_files
from ssl_cli.engine.inference import (export_onnx, export_torchscript, onnxruntime_probabilities, require_module,
                                      run_summary, torchscript_probabilities)
from ssl_cli.apps.model_cli import OneLineParser, add_model_arguments, open_model, run_command

PROG = "ssl-export"
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # largest absolute difference in probability the self-check accepts
CHECK_IMAGES = 64
DEFAULT_OPSET = 18


def parse_args(argv: Optional[List[str]]):
    p = OneLineParser(prog=PROG, description="Export a trained model (uint8 images in, probabilities out).")
    add_model_arguments(p)
    p.add_argument("--format", choices=sorted(FORMATS), default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--output", "-o", type=Path, default=None, help="the model file (default model.onnx / model.pt)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--check-images", nargs="+", default=None, metavar="PATHS",
                   help=f"images for the self-check (files, folders, globs; the first {CHECK_IMAGES} readable); "
                        f"default: random uint8 images")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p.parse_args(argv)


def check_batch(model, paths, seed: int = 0):
    """(uint8 batch, where it came from) for the self-check."""
    if paths:
        files = list_image_files(paths)[:4 * CHECK_IMAGES]
        images, kept, _ = decode_images(files, model.channels, model.image_size, model.resize)
        if len(kept) == 0:
            raise UserError(f"--check-images: no readable image in {' '.join(paths)}")
        return images[:CHECK_IMAGES], f"{min(len(kept), CHECK_IMAGES)} images from {' '.join(paths)}"
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (16, model.channels, *model.image_size), generator=g, dtype=torch.uint8)
    return images, "16 random uint8 images"


def export(args) -> int:
    if args.format == "onnx":  # the extra is checked before anything else happens
        for name in ("onnx", "onnxscript", "onnxruntime"):
            require_module(name, "export", "--format onnx")
        if not 7 <= args.opset <= 23:
            raise UserError(f"--opset must be in 7..23, got {args.opset}")
    output = args.output or Path("model" + FORMATS[args.format])
    sidecar = output.with_name(output.name + ".json")
    for path in (output, sidecar):
        if path.exists() and not args.overwrite:
            raise UserError(f"{path} exists; choose another --output or pass --overwrite")
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: folder {output.parent} does not exist")
    model = open_model(args, precision="fp32")  # exports are float32, and so is the reference they must match
    images, source = check_batch(model, args.check_images)
    expected = model.probabilities(images).cpu()
    model = model.cpu()
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    opset = None
    try:
        if args.format == "onnx":
            opset = export_onnx(model, tmp, args.opset)
            got = onnxruntime_probabilities(tmp, images)
        else:
            export_torchscript(model, tmp)
            got = torchscript_probabilities(tmp, images)
    except UserError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # an operator the exporter cannot translate, an opset it does not support, ...
        tmp.unlink(missing_ok=True)
        other = "torchscript" if args.format == "onnx" else "onnx"
        raise UserError(f"could not export backbone {model.card.get('backbone')} as {args.format} "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); try --format {other}"
                        + (" or another --opset" if args.format == "onnx" else "")) from None
    max_diff = float((got - expected).abs().max()) if len(images) else 0.0
    os.replace(tmp, output)
    summary = run_summary(model) or {}
    h, w = model.image_size
    meta = {
        "format": args.format, "file": output.name,
        "opset": opset,
        "class_names": model.class_names,
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "shape": ["N", model.channels, h, w],
                  "channels": model.channels, "image_size": [h, w], "range": [0, 255], "resize": model.resize},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", len(model.class_names)]},
        "mean": model.card["mean"], "std": model.card["std"],
        "preprocessing": ("inside the graph: (x / 255 - mean) / std then softmax; before it: decode, apply EXIF "
                          f"orientation, convert to {'L' if model.channels == 1 else 'RGB'}, bring it to "
                          f"{h}x{w} by the run's resize policy '{model.resize}' (crop: shorter side, then the "
                          "centre; ssl_cli.data.images.load_image)"),
        "source": str(model.source), "backbone": model.card.get("backbone"), "method": model.card.get("method"),
        "evaluated_weights": model.card.get("evaluated_weights"),
        "run_test_accuracy": (summary.get("final") or {}).get("test/accuracy"),
        "self_check": {"images": source, "runtime": "onnxruntime" if args.format == "onnx" else "torch.jit",
                       "max_abs_diff": max_diff, "tolerance": TOLERANCE},
    }
    tmp_json = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_json, sidecar)
    runtime = meta["self_check"]["runtime"]
    print(f"written {output} and {sidecar}")
    print(f"self-check on {source}: largest absolute difference {runtime} vs PyTorch {max_diff:.3g} "
          f"(tolerance {TOLERANCE:g})")
    if not max_diff < TOLERANCE:
        print(f"{PROG}: the export differs from PyTorch by more than {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_command(PROG, lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())

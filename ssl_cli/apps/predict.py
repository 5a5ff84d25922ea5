"""ssl-predict: class predictions of a trained model for image files, folders and globs.

    ssl-predict outputs/<date>/<run> photos/ extra/*.jpg --output predictions.csv --topk 3

It writes one row per readable image (path, predicted class, confidence, the top-k classes with their
probabilities) as CSV (default) or JSON lines (an --output ending in .jsonl). Unreadable files are
listed at the end and do not stop the job. The weights and preprocessing are the run's, read from the
checkpoint (EMA weights where the run kept an EMA).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

from ssl_cli.core.errors import UserError
from ssl_cli.data.files import IMAGE_SUFFIXES, list_image_files
from ssl_cli.engine.inference import Predictions, predict_files, top_k
from ssl_cli.apps.model_cli import OneLineParser, add_model_arguments, add_precision_argument, open_model, positive, run_command

PROG = "ssl-predict"
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def parse_args(argv: Optional[List[str]]):
    p = OneLineParser(prog=PROG, description="Predict the classes of images with a trained model.")
    add_model_arguments(p)
    add_precision_argument(p)
    p.add_argument("paths", nargs="+", metavar="PATHS", help="image files, folders (searched recursively) or globs")
    p.add_argument("--output", "-o", type=Path, default=Path("predictions.csv"),
                   help="where to write: .csv (default predictions.csv) or .jsonl")
    p.add_argument("--topk", type=int, default=3, help="how many of the most probable classes to list (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and classified at once (default 256)")
    p.add_argument("--min-confidence", type=float, default=0.5,
                   help="the summary gives the share of predictions below this confidence (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return p.parse_args(argv)


def check_args(args) -> str:
    """The output format; every argument is checked before the model is loaded or anything written."""
    positive("topk", args.topk)
    positive("batch-size", args.batch_size)
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    fmt = FORMATS.get(args.output.suffix.lower())
    if fmt is None:
        raise UserError(f"--output {args.output}: unknown format {args.output.suffix or '(no suffix)'!r}; "
                        f"allowed: {', '.join(FORMATS)}")
    if args.output.is_dir():
        raise UserError(f"--output {args.output} is a folder; give a file name ending in .csv or .jsonl")
    if args.output.exists() and not args.overwrite:
        raise UserError(f"--output {args.output} exists; choose another name or pass --overwrite")
    if not args.output.parent.is_dir():
        raise UserError(f"--output {args.output}: folder {args.output.parent} does not exist")
    return fmt


def write_predictions(path: Path, fmt: str, predictions: Predictions, class_names, k: int) -> None:
    """Writes next to `path`, then renames: an interrupted job never leaves half a file under that name."""
    tops = top_k(predictions.probabilities, class_names, k)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        if fmt == "csv":
            writer = csv.writer(f)
            header = ["path", "prediction", "confidence"]
            for i in range(1, len(tops[0]) + 1 if tops else k + 1):
                header += [f"top{i}", f"top{i}_probability"]
            writer.writerow(header)
            for p, top in zip(predictions.paths, tops):
                row = [p, top[0][0], f"{top[0][1]:.6f}"]
                for name, prob in top:
                    row += [name, f"{prob:.6f}"]
                writer.writerow(row)
        else:
            for p, top in zip(predictions.paths, tops):
                f.write(json.dumps({"path": p, "prediction": top[0][0], "confidence": top[0][1],
                                    "topk": [{"class": n, "probability": q} for n, q in top]}) + "\n")
    os.replace(tmp, path)


def summarize(predictions: Predictions, class_names, min_confidence: float) -> List[str]:
    n = len(predictions.paths)
    lines = [f"{n} image(s) classified, {len(predictions.unreadable)} unreadable"]
    if n:
        confidence, index = predictions.probabilities.max(dim=1)
        counts = Counter(class_names[i] for i in index.tolist())
        lines.append("predicted classes: " + ", ".join(f"{c} {counts[c]}" for c in class_names if counts[c]))
        below = int((confidence < min_confidence).sum())
        lines.append(f"below confidence {min_confidence:g}: {below} of {n} ({below / n:.1%})")
    for path, why in predictions.unreadable[:20]:
        lines.append(f"unreadable: {path} ({why})")
    if len(predictions.unreadable) > 20:
        lines.append(f"... and {len(predictions.unreadable) - 20} more unreadable file(s)")
    return lines


def predict(args) -> int:
    fmt = check_args(args)
    model = open_model(args)
    files = list_image_files(args.paths)
    if not files:
        raise UserError(f"no image files found in {' '.join(args.paths)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    predictions = predict_files(model, files, args.batch_size)
    if not predictions.paths:
        raise UserError(f"none of the {len(files)} file(s) is a readable image (e.g. {predictions.unreadable[0][0]}: "
                        f"{predictions.unreadable[0][1]}); nothing written")
    write_predictions(args.output, fmt, predictions, model.class_names, args.topk)
    for line in summarize(predictions, model.class_names, args.min_confidence):
        print(line)
    print(f"written {args.output}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_command(PROG, lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())

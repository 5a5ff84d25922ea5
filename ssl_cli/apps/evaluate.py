"""ssl-evaluate: a trained model's metrics on a labeled folder `<folder>/<class>/<image>`.

    ssl-evaluate outputs/<date>/<run> data/test --output-dir eval_test

Class folders are matched to the model's classes by name (a folder the model does not know is an
error; a class with no folder is reported with support 0). It reports what a run reports (accuracy,
per-class precision / recall / F1, macro-F1, the confusion matrix), computed as ssl-train computes
them, plus the expected calibration error (15 equal-width bins), and writes evaluation.json,
confusion_matrix.png and reliability.png.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console
from rich.table import Table

from ssl_cli.core.errors import UserError
from ssl_cli.data.files import list_class_folders
from ssl_cli.engine.inference import ECE_BINS, evaluate_files, labeled_files, run_summary
from ssl_cli.engine.plots import plot_confusion_matrix, plot_reliability
from ssl_cli.apps.model_cli import OneLineParser, add_model_arguments, add_precision_argument, open_model, positive, run_command

PROG = "ssl-evaluate"
EVALUATION, CONFUSION_PNG, RELIABILITY_PNG = "evaluation.json", "confusion_matrix.png", "reliability.png"


def parse_args(argv: Optional[List[str]]):
    p = OneLineParser(prog=PROG, description="Evaluate a trained model on a labeled image folder.")
    add_model_arguments(p)
    add_precision_argument(p)
    p.add_argument("folder", metavar="FOLDER", help="a labeled folder: FOLDER/<class>/<image>")
    p.add_argument("--output-dir", type=Path, default=Path("evaluation"),
                   help="where evaluation.json and the two PNGs go (default ./evaluation)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and classified at once (default 256)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --output-dir")
    return p.parse_args(argv)


def print_report(report: dict) -> None:
    console = Console()
    table = Table(title=f"{report['num_images']} images of {report['folder']}")
    for column in ("class", "precision", "recall", "F1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in report["per_class"].items():
        table.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"]))
    console.print(table)
    print(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
          f"ECE ({ECE_BINS} bins) {report['calibration']['ece']:.4f}")
    for bad in report["unreadable"][:20]:
        print(f"unreadable: {bad['path']} ({bad['error']})")


def evaluate(args) -> int:
    positive("batch-size", args.batch_size)
    out = args.output_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file; give a folder")
    if (out / EVALUATION).exists() and not args.overwrite:
        raise UserError(f"{out / EVALUATION} exists; choose another --output-dir or pass --overwrite")
    model = open_model(args)
    class_folders = list_class_folders(args.folder)
    files, labels = labeled_files(class_folders, model.class_names, args.folder)
    report = {"checkpoint": str(model.source), "folder": str(args.folder)}
    report.update(evaluate_files(model, files, labels, args.batch_size))
    if report["num_images"] == 0:
        raise UserError(f"none of the {len(files)} file(s) in {args.folder} is a readable image; nothing written")
    summary = run_summary(model)
    if summary and summary.get("final"):
        report["run_test_accuracy"] = summary["final"].get("test/accuracy")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EVALUATION}.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / EVALUATION)
    cm = report["confusion_matrix"]
    plot_confusion_matrix(cm["matrix"], cm["class_names"], out / CONFUSION_PNG,
                          title=f"{Path(args.folder).name}: accuracy {report['accuracy']:.4f}")
    plot_reliability(report["calibration"]["bins"], report["calibration"]["ece"], out / RELIABILITY_PNG)
    print_report(report)
    print(f"written {out / EVALUATION}, {out / CONFUSION_PNG}, {out / RELIABILITY_PNG}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_command(PROG, lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())

"""The selection benchmark's table: final test accuracy per (strategy, label count), the gain over random.

Reads every job of a `sweep=selection` directory: its summary.json (final test accuracy of the EMA
weights) and labeled_indices.json (strategy, ProbCover's delta and coverage). "classes" is how many
classes the labeled set holds, counted afterwards from the true labels: the selectors never read them.

    python scripts/selection_table.py bench/select_digits/sweep [--markdown bench/select_digits.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from ssl_cli.core.options import defaults, from_config
from ssl_cli.core.tables import markdown_table
from ssl_cli.data import DATASETS, load_dataset


def job_rows(sweep: Path):
    for summary_path in sorted(sweep.glob("*/summary.json")):
        job = summary_path.parent
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed":
            continue
        split = json.loads((job / "labeled_indices.json").read_text())
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        selection = split.get("selection") or {"strategy": "random"}
        yield {"strategy": selection["strategy"], "labels": int(summary["num_labels"]), "seed": summary["seed"],
               "accuracy": 100 * summary["final"]["test/accuracy"], "selection": selection,
               "dataset": config["dataset"], "labeled": split["labeled"]}


def classes_held(rows) -> dict:
    """Classes in each job's labeled set, from the true training labels (loaded once per data set)."""
    labels = {}
    out = {}
    for i, r in enumerate(rows):
        d = r["dataset"]
        key = json.dumps(d, sort_keys=True, default=str)
        if key not in labels:
            cls = DATASETS.options(d["name"])
            labels[key] = load_dataset(d["name"], from_config(cls, {**defaults(cls), **d}, "dataset")).train_labels
        out[i] = len(set(labels[key][r["labeled"]].tolist()))
    return out


def mean_std(values):
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path)
    p.add_argument("--markdown", type=Path, default=None)
    a = p.parse_args()
    rows = list(job_rows(a.sweep))
    if not rows:
        raise SystemExit(f"selection_table: no completed jobs under {a.sweep}")
    held = classes_held(rows)
    cells = defaultdict(list)
    for i, r in enumerate(rows):
        cells[(r["labels"], r["strategy"])].append((r, held[i]))
    order = ["random", "uniform", "typiclust", "probcover", "kcenter", "margin", "entropy"]
    table = []
    for (n, strategy) in sorted(cells, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99)):
        jobs = sorted(cells[(n, strategy)], key=lambda j: j[0]["seed"])
        accuracy = [j[0]["accuracy"] for j in jobs]
        base = cells.get((n, "random"))
        gain = ""
        if base and strategy != "random":
            gain = f"{statistics.fmean(accuracy) - statistics.fmean(j[0]['accuracy'] for j in base):+.1f}"
        extra = ""
        if strategy == "probcover":
            extra = ", ".join(f"δ {j[0]['selection']['delta']:.3f} / {100 * j[0]['selection']['coverage']:.0f} %"
                              for j in jobs)
        table.append([str(n), strategy, mean_std(accuracy), ", ".join(f"{x:.1f}" for x in accuracy), gain,
                      ", ".join(str(j[1]) for j in jobs), extra])
    header = ["labels", "strategy", "test accuracy %", "per seed", "vs random", "classes labeled (per seed)",
              "ProbCover δ / coverage (per seed)"]
    text = markdown_table(header, table)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()

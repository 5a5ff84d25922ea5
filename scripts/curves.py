"""Print one metric of several runs at each evaluation, as a markdown table (rows: runs, columns: steps).

    python scripts/curves.py bench/c10_val/fixmatch_r2_t0.6_6000 bench/c10_val/supervised_6000
    python scripts/curves.py --metric val/accuracy --every 1000 RUN_DIR ...

Reads each run's metrics.jsonl (one row per evaluation); accuracies and rates are shown in %.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssl_cli.core.tables import markdown_table


def read_metrics(run_dir: Path) -> dict:
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--metric", action="append", help="metric key(s), e.g. test/accuracy (default: "
                                                           "val/accuracy and test/accuracy)")
    parser.add_argument("--every", type=int, default=0, help="only steps that are multiples of this (and the last)")
    args = parser.parse_args(argv)
    metrics = args.metric or ["val/accuracy", "test/accuracy"]
    runs = {run: read_metrics(run) for run in args.runs}
    steps = sorted({s for rows in runs.values() for s in rows})
    last = steps[-1] if steps else 0
    if args.every:
        steps = [s for s in steps if s % args.every == 0 or s == last]
    table = []
    for run, rows in runs.items():
        for metric in metrics:
            cells = []
            for s in steps:
                value = rows.get(s, {}).get(metric)
                cells.append("" if value is None else f"{100 * value:.1f}")
            if any(cells):
                table.append([run.name, metric, *cells])
    print(markdown_table(["run", "metric", *map(str, steps)], table, align="ll" + "r" * len(steps)), end="")


if __name__ == "__main__":
    main()

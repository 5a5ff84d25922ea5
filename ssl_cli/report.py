"""Printing results: one run's summary, and a sweep's comparison of methods against the supervised baseline.

The comparison reads only `summary.json` files, so it works on any directory of runs and on partial
sweeps. It reports the FINAL test accuracy of each run; nothing here selects on the test set.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table

console = Console()


def print_run_summary(summary: dict) -> None:
    final = summary["final"]
    table = Table(title=f"{summary['method']} on {summary['dataset']}: {summary['num_labels']} labels, "
                        f"seed {summary['seed']}", show_header=False)
    table.add_row("status", summary["status"])
    table.add_row("steps", f"{summary['step']} / {summary['max_steps']}")
    table.add_row("test accuracy (final, EMA)", f"{final['test/accuracy']:.4f}")
    table.add_row("test macro-F1", f"{final['test/macro_f1']:.4f}")
    if final.get("val/accuracy") is not None:
        table.add_row("validation accuracy", f"{final['val/accuracy']:.4f}")
    best = summary.get("best") or {}
    if best.get("selected_by") == "val/accuracy":
        table.add_row("best on validation", f"step {best['step']}: val {best['val/accuracy']:.4f}, "
                                            f"test {best['test/accuracy']:.4f}")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s on {summary['device']}")
    table.add_row("run directory", summary["run_dir"])
    console.print(table)


def load_summaries(root: Path) -> List[dict]:
    out = []
    for path in sorted(Path(root).rglob("summary.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare_methods(summaries: List[dict]) -> Dict[Tuple[int, str], dict]:
    """(num_labels, method) -> mean/std of final test accuracy over the completed runs (seeds)."""
    groups: Dict[Tuple[int, str], List[float]] = defaultdict(list)
    for s in summaries:
        if s.get("status") == "completed":
            groups[(s["num_labels"], s["method"])].append(s["final"]["test/accuracy"])
    return {key: dict(zip(("mean", "std"), _mean_std(v)), n=len(v)) for key, v in groups.items()}


def print_comparison(summaries: List[dict], title: str = "Final test accuracy") -> None:
    stats = compare_methods(summaries)
    failed = [s for s in summaries if s.get("status") != "completed"]
    table = Table(title=title)
    for col in ("labels", "method", "test accuracy (mean ± std)", "runs", "vs supervised"):
        table.add_column(col)
    for (labels, method), st in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][1] != "supervised", kv[0][1])):
        base = stats.get((labels, "supervised"))
        delta = "" if base is None or method == "supervised" else f"{100 * (st['mean'] - base['mean']):+.1f} points"
        table.add_row(str(labels), method, f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f} %", str(st["n"]), delta)
    console.print(table)
    for s in failed:
        console.print(f"[yellow]not completed[/]: {s.get('run_dir')} ({s.get('status')}: {s.get('error', '')})")


class SweepReport(Callback):
    """Hydra callback: when a multirun ends, print how each method compares with the supervised baseline."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summaries = load_summaries(sweep_dir)
        if summaries:
            print_comparison(summaries, title=f"Final test accuracy, {sweep_dir}")

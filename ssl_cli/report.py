"""Results: one run's summary, and the label-efficiency report of a sweep.

The report reads only the `summary.json` files under a directory, so it works on any folder of runs,
on sweeps still running and on sweeps with failed jobs. It reports the FINAL test accuracy of each
run (or, with `--accuracy best_val`, the test accuracy of the checkpoint chosen on the validation
split); nothing here selects on the test set.

    ssl-report multirun/2026-11-23/12-00-00
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rich.console import Console
from rich.table import Table

console = Console()

ACCURACY_KINDS = {
    "final": "final test accuracy (EMA weights after the last step)",
    "best_val": "test accuracy of the checkpoint with the best validation accuracy",
}


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


# --------------------------------------------------------------------------- collecting runs


def load_summaries(root: Path) -> Tuple[List[dict], List[Path]]:
    """Summaries under `root`, and the job directories (with Hydra's .hydra/) that have none yet."""
    root = Path(root)
    summaries, pending = [], []
    for hydra_dir in sorted(set(root.rglob(".hydra")) | {p.parent / ".hydra" for p in root.rglob("summary.json")}):
        job = hydra_dir.parent
        path = job / "summary.json"
        if not path.exists():
            pending.append(job)
            continue
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pending.append(job)
    return summaries, pending


def run_accuracy(summary: dict, kind: str) -> Optional[float]:
    if summary.get("status") != "completed" or not summary.get("final"):
        return None
    if kind == "final":
        return summary["final"]["test/accuracy"]
    best = summary.get("best") or {}
    return best.get("test/accuracy") if best.get("selected_by") == "val/accuracy" else None


@dataclass
class Cell:
    """All seeds of one (method, label count)."""

    accuracies: List[float] = field(default_factory=list)
    mask_rates: List[float] = field(default_factory=list)
    pl_accuracies: List[float] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def _mean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def build_cells(summaries: List[dict], kind: str) -> Dict[Tuple[str, int], Cell]:
    cells: Dict[Tuple[str, int], Cell] = defaultdict(Cell)
    for s in summaries:
        acc = run_accuracy(s, kind)
        if acc is None:
            continue
        cell = cells[(s["method"], int(s["num_labels"]))]
        cell.accuracies.append(acc)
        cell.seeds.append(s.get("seed"))
        train = s.get("train") or {}
        cell.mask_rates.append(train.get("mask_rate"))
        cell.pl_accuracies.append(train.get("pseudo_label_acc"))
    return dict(cells)


def missing_jobs(summaries: List[dict]) -> List[str]:
    """Combinations of the sweep's methods x label counts x seeds with no completed run."""
    done = {(s["method"], int(s["num_labels"]), s.get("seed")) for s in summaries if s.get("status") == "completed"}
    seen = [s for s in summaries if s.get("num_labels") is not None]
    methods = sorted({s["method"] for s in seen})
    labels = sorted({int(s["num_labels"]) for s in seen})
    seeds = sorted({s.get("seed") for s in seen}, key=str)
    return [f"{m} / {n} labels / seed {seed}" for m, n, seed in itertools.product(methods, labels, seeds)
            if (m, n, seed) not in done]


# --------------------------------------------------------------------------- labels needed


def labels_needed(curve: List[Tuple[int, float]], target: float) -> Tuple[Optional[float], str]:
    """Smallest label count at which the curve reaches `target`, interpolated on a log axis.

    Returns (labels, note): note is "" for an interpolated value, "<=" when the smallest count in the
    sweep already reaches it, and "not reached" (labels None) when no count does.
    """
    curve = sorted(curve)
    for i, (n, acc) in enumerate(curve):
        if acc >= target:
            if i == 0:
                return float(n), "<="
            n0, a0 = curve[i - 1]
            frac = (target - a0) / (acc - a0)
            return math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0))), ""
    return None, "not reached"


@dataclass
class Report:
    kind: str
    cells: Dict[Tuple[str, int], Cell]
    missing: List[str]
    failed: List[dict]
    pending: List[Path]

    @property
    def methods(self) -> List[str]:
        names = sorted({m for m, _ in self.cells})
        return sorted(names, key=lambda m: (m != "supervised", m))

    @property
    def label_counts(self) -> List[int]:
        return sorted({n for _, n in self.cells})

    def labels_needed(self) -> Dict[str, dict]:
        """For each SSL method: labels to match supervised at the sweep's largest label count."""
        sup = {n: c.mean for (m, n), c in self.cells.items() if m == "supervised"}
        if not sup:
            return {}
        top = max(sup)
        target = sup[top]
        out = {}
        for method in self.methods:
            if method == "supervised":
                continue
            curve = [(n, c.mean) for (m, n), c in self.cells.items() if m == method]
            labels, note = labels_needed(curve, target)
            out[method] = {"target_accuracy": target, "supervised_labels": top, "labels_needed": labels,
                           "note": note, "labeling_saved": None if labels is None else 1 - labels / top}
        return out

    def rows(self) -> List[dict]:
        sup = {n: c.mean for (m, n), c in self.cells.items() if m == "supervised"}
        rows = []
        for n in self.label_counts:
            for m in self.methods:
                c = self.cells.get((m, n))
                if c is None:
                    continue
                rows.append({
                    "method": m, "num_labels": n, "runs": len(c.accuracies),
                    "accuracy_mean": c.mean, "accuracy_std": c.std,
                    "vs_supervised": None if m == "supervised" or n not in sup else c.mean - sup[n],
                    "mask_rate": _mean(c.mask_rates), "pseudo_label_acc": _mean(c.pl_accuracies),
                })
        return rows


def make_report(root: Path, kind: str = "final") -> Report:
    summaries, pending = load_summaries(root)
    failed = [s for s in summaries if s.get("status") != "completed"]
    return Report(kind, build_cells(summaries, kind), missing_jobs(summaries), failed, pending)


# --------------------------------------------------------------------------- output


def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def print_report(report: Report, title: str) -> None:
    table = Table(title=title, caption=f"accuracy: {ACCURACY_KINDS[report.kind]}, %")
    for col in ("labels", "method", "accuracy (mean ± std)", "runs", "vs supervised", "mask rate", "pseudo-label acc"):
        table.add_column(col, justify="left" if col in ("method",) else "right")
    for r in report.rows():
        delta = "" if r["vs_supervised"] is None else f"{100 * r['vs_supervised']:+.1f}"
        table.add_row(str(r["num_labels"]), r["method"], f"{_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])}",
                      str(r["runs"]), delta, _pct(r["mask_rate"]), _pct(r["pseudo_label_acc"]))
    console.print(table)
    for line in labels_needed_lines(report):
        console.print(line)
    for s in report.failed:
        console.print(f"[yellow]{s.get('status')}[/]: {s.get('run_dir')}: {s.get('error', '')}")
    for job in report.pending:
        console.print(f"[yellow]no summary yet (running or killed)[/]: {job}")
    if report.missing:
        console.print(f"[yellow]missing {len(report.missing)} job(s)[/]: " + "; ".join(report.missing))


def labels_needed_lines(report: Report) -> List[str]:
    lines = []
    for method, r in report.labels_needed().items():
        goal = f"supervised's {100 * r['target_accuracy']:.1f} % at {r['supervised_labels']} labels"
        if r["labels_needed"] is None:
            lines.append(f"labels needed: {method} does not reach {goal} in this sweep")
        else:
            prefix = "at most " if r["note"] == "<=" else "about "
            lines.append(f"labels needed: {method} reaches {goal} with {prefix}{r['labels_needed']:.0f} labels "
                         f"({100 * r['labeling_saved']:.0f} % less labeling)")
    return lines


def write_files(report: Report, out_dir: Path) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    csv_path, md_path = out_dir / "report.csv", out_dir / "report.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Accuracy: {ACCURACY_KINDS[report.kind]}, mean ± std over seeds, %.", "",
             "| labels | method | accuracy | runs | vs supervised | mask rate | pseudo-label acc |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = "" if r["vs_supervised"] is None else f"{100 * r['vs_supervised']:+.1f}"
        lines.append(f"| {r['num_labels']} | {r['method']} | {_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])} | "
                     f"{r['runs']} | {delta} | {_pct(r['mask_rate'])} | {_pct(r['pseudo_label_acc'])} |")
    lines += [""] + [f"- {line}" for line in labels_needed_lines(report)]
    if report.failed or report.pending or report.missing:
        lines += ["", f"Incomplete: {len(report.failed)} failed, {len(report.pending)} without summary, "
                      f"{len(report.missing)} missing."]
    md_path.write_text("\n".join(lines) + "\n")
    written = [csv_path, md_path]
    png = plot_label_efficiency(report, out_dir / "label_efficiency.png")
    if png is not None:
        written.append(png)
    return written


def plot_label_efficiency(report: Report, path: Path) -> Optional[Path]:
    if not report.cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in report.methods:
        points = sorted((n, c.mean, c.std) for (m, n), c in report.cells.items() if m == method)
        ns, means, stds = zip(*points)
        ax.errorbar(ns, [100 * m for m in means], yerr=[100 * s for s in stds], marker="o", capsize=3, label=method)
    needed = report.labels_needed()
    if needed:
        target = next(iter(needed.values()))
        ax.axhline(100 * target["target_accuracy"], color="grey", linestyle=":", linewidth=1,
                   label=f"supervised @ {target['supervised_labels']} labels")
    ax.set_xscale("log")
    ax.set_xticks(report.label_counts)
    ax.set_xticklabels([str(n) for n in report.label_counts])
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Label efficiency ({report.kind} accuracy)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_dir(root: Path, kind: str = "final", write: bool = True) -> Report:
    report = make_report(root, kind)
    print_report(report, title=f"{root}")
    if write:
        for p in write_files(report, Path(root)):
            console.print(f"wrote {p}")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="ssl-report", description="Label-efficiency report of a sweep directory.")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--accuracy", choices=sorted(ACCURACY_KINDS), default="final",
                        help="final: final test accuracy; best_val: test accuracy of the checkpoint chosen on validation")
    parser.add_argument("--no-files", action="store_true", help="print only; do not write report.* files")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"ssl-report: error: {args.sweep_dir} is not a directory", file=sys.stderr)
        sys.exit(2)
    report = report_dir(args.sweep_dir, args.accuracy, write=not args.no_files)
    if not report.cells:
        print(f"ssl-report: error: no completed runs under {args.sweep_dir}", file=sys.stderr)
        sys.exit(2)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepReport(Callback):
    """Hydra callback: when a multirun ends, report it (table, report.csv/md, label_efficiency.png)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if any(sweep_dir.rglob("summary.json")):
            report_dir(sweep_dir)


if __name__ == "__main__":
    main()

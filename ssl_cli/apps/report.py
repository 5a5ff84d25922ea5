"""Results: one run's summary, and the label-efficiency report of a sweep.

The report reads only the `summary.json` files under a directory (and, when there, Hydra's
`multirun.yaml` and each job's `.hydra/overrides.yaml`), so it works on any folder of runs, on sweeps
still running and on sweeps with failed jobs, and names the jobs without a completed run. It reports
the FINAL test accuracy of each run (or, with `--accuracy best_val`, the test accuracy of the
checkpoint chosen on the validation split), as mean ± sample standard deviation over seeds per
method x label count; nothing here selects on the test set. Jobs that differ in any other override
(optim.lr, a search trial's parameters, ...) are kept apart as variants, never averaged as seeds.

    ssl-report multirun/2026-11-23/12-00-00
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssl_cli.core.tables import markdown_table
from ssl_cli.engine.outputs import METRICS
from ssl_cli.engine.plots import plot_mean_std_curves, read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

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

# Overrides that make up the report's axes (or say nothing about the model); any other override that
# differs between jobs (optim.lr, backbone, a trial's parameters, ...) splits a method into variants,
# so that runs with different settings are never averaged as if they were seeds.
AXIS_KEYS = ("method", "dataset.num_labels", "dataset.label_fraction", "seed", "resume")


def _job_dirs(root: Path) -> List[Path]:
    """Job directories (with summary.json or Hydra's .hydra/) under `root`, outermost only.

    A multi-stage run (method=selfsup) keeps one summary.json per stage in sub-directories; its own
    summary.json reports all of them, so the nested ones are not separate jobs.
    """
    found = {p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(d for d in found if not any(parent in found for parent in d.parents))


def _read_overrides(job: Path) -> Optional[List[str]]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]
    except Exception:  # an unreadable file only costs the variant column
        return None


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def load_summaries(root: Path) -> Tuple[List[dict], List[Path]]:
    """Summaries under `root`, and the job directories (with Hydra's .hydra/) that have none yet.

    Each summary gets `_job_dir` and `_overrides` (the job's command-line overrides, when Hydra saved them).
    """
    summaries, pending = [], []
    for job in _job_dirs(Path(root)):
        path = job / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet (running or killed), or cut short
            pending.append(job)
            continue
        if not isinstance(summary, dict) or "method" not in summary:
            pending.append(job)
            continue
        summary["_job_dir"] = str(job)
        summary["_overrides"] = _read_overrides(job)
        summaries.append(summary)
    _assign_variants(summaries)
    return summaries, pending


def _assign_variants(summaries: List[dict]) -> None:
    """Sets each summary's `_variant`: its values of the non-axis overrides that differ between jobs."""
    per_job = []
    for s in summaries:
        overrides = {}
        for o in s.get("_overrides") or []:
            key = _override_key(o)
            if key not in AXIS_KEYS and not key.startswith("hydra"):
                overrides[key] = o.split("=", 1)[1] if "=" in o else ""
        per_job.append(overrides)
    keys = sorted({k for o in per_job for k in o})
    varying = [k for k in keys if len({o.get(k) for o in per_job}) > 1]
    for s, overrides in zip(summaries, per_job):
        s["_variant"] = " ".join(f"{k}={overrides[k]}" for k in varying if k in overrides)


def run_accuracy(summary: dict, kind: str) -> Optional[float]:
    if summary.get("status") != "completed" or not summary.get("final"):
        return None
    if kind == "final":
        return summary["final"]["test/accuracy"]
    best = summary.get("best") or {}
    return best.get("test/accuracy") if best.get("selected_by") == "val/accuracy" else None


def display_name(method: str, variant: str) -> str:
    return f"{method} [{variant}]" if variant else method


@dataclass
class Cell:
    """All seeds of one (method, variant, label count)."""

    method: str = ""
    variant: str = ""
    accuracies: List[float] = field(default_factory=list)
    val_accuracies: List[Optional[float]] = field(default_factory=list)
    mask_rates: List[Optional[float]] = field(default_factory=list)
    pl_accuracies: List[Optional[float]] = field(default_factory=list)
    wall_times: List[Optional[float]] = field(default_factory=list)  # seconds per run (summary's wall_time_s)
    seeds: List[int] = field(default_factory=list)
    curves: List[List[Tuple[int, float]]] = field(default_factory=list)  # (step, test accuracy) of each run

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); 0 for a single run."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def repeated_seeds(self) -> List[int]:
        return sorted({s for s in self.seeds if self.seeds.count(s) > 1}, key=str)


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def build_cells(summaries: List[dict], kind: str) -> Dict[Tuple[str, int], Cell]:
    """Cells keyed by (display name, label count); the display name is the method plus its variant."""
    cells: Dict[Tuple[str, int], Cell] = {}
    for s in summaries:
        acc = run_accuracy(s, kind)
        if acc is None:
            continue
        method, variant = s["method"], s.get("_variant", "")
        cell = cells.setdefault((display_name(method, variant), int(s["num_labels"])), Cell(method, variant))
        cell.accuracies.append(acc)
        cell.seeds.append(s.get("seed"))
        cell.val_accuracies.append((s.get("final") or {}).get("val/accuracy"))
        train = s.get("train") or {}
        cell.mask_rates.append(train.get("mask_rate"))
        cell.pl_accuracies.append(train.get("pseudo_label_acc"))
        cell.wall_times.append(s.get("wall_time_s"))
        curve = accuracy_curve(s)
        if curve:
            cell.curves.append(curve)
    return cells


def accuracy_curve(summary: dict) -> List[Tuple[int, float]]:
    """(step, test accuracy) at each evaluation of a run (its last stage's, for a run made of stages)."""
    job = Path(summary.get("_job_dir") or summary.get("run_dir") or ".")
    stages = list(summary.get("stages") or {})
    path = job / stages[-1] / METRICS if stages else job / METRICS
    return [(r["step"], r["test/accuracy"]) for r in read_metrics(path)
            if isinstance(r.get("test/accuracy"), (int, float))]


def _job_label(s: dict) -> str:
    return f"{display_name(s['method'], s.get('_variant', ''))} / {s.get('num_labels')} labels / seed {s.get('seed')}"


def missing_jobs(summaries: List[dict]) -> List[str]:
    """Combinations of the sweep's methods x label counts x seeds with no completed run.

    Built from the runs found, so a value none of whose jobs has started yet goes unnoticed; a
    Hydra sweep directory is checked against its own job list instead (see `expected_jobs`).
    """
    done = {(display_name(s["method"], s.get("_variant", "")), int(s["num_labels"]), s.get("seed"))
            for s in summaries if s.get("status") == "completed"}
    seen = [s for s in summaries if s.get("num_labels") is not None]
    methods = sorted({display_name(s["method"], s.get("_variant", "")) for s in seen})
    labels = sorted({int(s["num_labels"]) for s in seen})
    seeds = sorted({s.get("seed") for s in seen}, key=lambda x: (not isinstance(x, int), x if isinstance(x, int) else str(x)))
    return [f"{m} / {n} labels / seed {seed}" for m, n, seed in itertools.product(methods, labels, seeds)
            if (m, n, seed) not in done]


def expected_jobs(root: Path) -> Optional[List[List[str]]]:
    """Every job's overrides of the Hydra grid sweep in `root` (from its multirun.yaml), or None.

    Only Hydra's basic sweeper has a fixed job list (and saves multirun.yaml); others return None.
    """
    path = Path(root) / "multirun.yaml"
    if not path.exists():
        return None
    try:
        cfg = OmegaConf.load(path)
        if not str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
            return None
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        args = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in cfg.hydra.overrides.task]
        return grid_jobs(OverridesParser.create().parse_overrides(args))
    except Exception:  # a hand-edited or foreign multirun.yaml: fall back to the runs found
        return None


def grid_jobs(overrides) -> List[List[str]]:
    """The jobs of a grid sweep, as Hydra's basic sweeper forms them: the product of every key's values,
    keys in the order they first appear, a later override of a key replacing its values."""
    values: Dict[str, List[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            values[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            values[key] = [o.input_line]
    return [list(job) for job in itertools.product(*values.values())]


def missing_from_sweep(expected: List[List[str]], summaries: List[dict]) -> List[str]:
    """The sweep's jobs with no completed run, named by their swept overrides."""
    done = {frozenset(map(_canonical_override, s["_overrides"])) for s in summaries
            if s.get("status") == "completed" and s.get("_overrides") is not None}
    keys = [_override_key(o) for o in expected[0]] if expected else []
    swept = {k for i, k in enumerate(keys) if len({job[i] for job in expected}) > 1}
    return [" ".join(o for o in job if _override_key(o) in swept) or " ".join(job)
            for job in expected if frozenset(map(_canonical_override, job)) not in done]


def _canonical_override(override: str) -> str:
    """`key=value` with booleans in one spelling: the command line says `false`, while a job's saved
    overrides can say `False` (Hydra writes a sweep job's values back from the parsed Python value)."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{value.lower()}" if value.lower() in ("true", "false") else override


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
    skipped: List[dict] = field(default_factory=list)  # completed, but without the requested accuracy

    @property
    def methods(self) -> List[str]:
        """Display names (method plus variant), supervised ones first."""
        names = {m for m, _ in self.cells}
        return sorted(names, key=lambda m: (self._method_of(m) != "supervised", m))

    def _method_of(self, name: str) -> str:
        return next(c.method for (m, _), c in self.cells.items() if m == name)

    def _variant_of(self, name: str) -> str:
        return next(c.variant for (m, _), c in self.cells.items() if m == name)

    @property
    def label_counts(self) -> List[int]:
        return sorted({n for _, n in self.cells})

    def baseline(self, name: str) -> Optional[str]:
        """The supervised row a method is compared with: the same variant, else plain supervised."""
        names = set(self.methods)
        for candidate in (display_name("supervised", self._variant_of(name)), "supervised"):
            if candidate in names:
                return candidate
        return None

    def labels_needed(self) -> Dict[str, dict]:
        """For each SSL method: labels to match supervised at the sweep's largest label count.

        Only for methods with runs at fewer labels than that count (otherwise there is nothing to save).
        """
        out = {}
        for name in self.methods:
            base = self.baseline(name)
            if base is None or self._method_of(name) == "supervised":
                continue
            sup = {n: c.mean for (m, n), c in self.cells.items() if m == base}
            top = max(sup)
            target = sup[top]
            curve = [(n, c.mean) for (m, n), c in self.cells.items() if m == name]
            if min(n for n, _ in curve) >= top:
                continue
            labels, note = labels_needed(curve, target)
            out[name] = {"target_accuracy": target, "baseline": base, "supervised_labels": top,
                         "labels_needed": labels, "note": note,
                         "labeling_saved": None if labels is None else 1 - labels / top}
        return out

    def rows(self) -> List[dict]:
        rows = []
        for n in self.label_counts:
            for name in self.methods:
                c = self.cells.get((name, n))
                if c is None:
                    continue
                base = self.baseline(name)
                sup = self.cells.get((base, n)) if base is not None and base != name else None
                rows.append({
                    "method": c.method, "variant": c.variant, "num_labels": n, "runs": len(c.accuracies),
                    "seeds": " ".join(str(s) for s in sorted(c.seeds, key=str)),
                    "accuracy_mean": c.mean, "accuracy_std": c.std,
                    "vs_supervised": None if sup is None else c.mean - sup.mean,
                    "val_accuracy_mean": _mean(c.val_accuracies),
                    "mask_rate": _mean(c.mask_rates), "pseudo_label_acc": _mean(c.pl_accuracies),
                    "wall_time_s": _mean(c.wall_times),
                    "accuracy_kind": self.kind,
                })
        ranks = self.ranks()
        for r in rows:
            r["rank"] = ranks.get((display_name(r["method"], r["variant"]), r["num_labels"]))
        return rows

    def ranks(self) -> Dict[Tuple[str, int], int]:
        """Each method's rank among all methods at the same label count: 1 = best mean test accuracy.

        Competition ranking: methods whose means are equal (to 0.05 points, the table's precision) share
        a rank and the next rank is skipped, so a tie is never shown as an order.
        """
        out = {}
        for n in self.label_counts:
            means = {m: c.mean for (m, k), c in self.cells.items() if k == n}
            for name, mean in means.items():
                out[(name, n)] = 1 + sum(1 for other in means.values() if other > mean + 5e-4)
        return out

    def warnings(self) -> List[str]:
        """Plain-text lines about everything that is not a complete, clean sweep."""
        lines = []
        for s in self.failed:
            lines.append(f"{s.get('status')}: {_job_label(s)}: {s.get('error', '')} ({s.get('_job_dir', s.get('run_dir'))})")
        for job in self.pending:
            lines.append(f"no summary yet (running or killed): {job}")
        if self.skipped:
            lines.append(f"{len(self.skipped)} completed run(s) left out: no validation split, so no "
                         f"validation-selected checkpoint (use --accuracy final)")
        for (name, n), c in sorted(self.cells.items()):
            if c.repeated_seeds:
                lines.append(f"{name} / {n} labels has several runs with seed(s) {c.repeated_seeds}: "
                             f"this directory holds more than one sweep")
        return lines


def make_report(root: Path, kind: str = "final") -> Report:
    summaries, pending = load_summaries(root)
    failed = [s for s in summaries if s.get("status") != "completed"]
    skipped = [s for s in summaries if s.get("status") == "completed" and run_accuracy(s, kind) is None]
    expected = expected_jobs(root)
    missing = missing_jobs(summaries) if expected is None else missing_from_sweep(expected, summaries)
    return Report(kind, build_cells(summaries, kind), missing, failed, pending, skipped)


# --------------------------------------------------------------------------- output


def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _mean_std(row: dict) -> str:
    """'mean ± std' in %; a single run has no spread to show."""
    if row["runs"] < 2:
        return _pct(row["accuracy_mean"])
    return f"{_pct(row['accuracy_mean'])} ± {_pct(row['accuracy_std'])}"


def _seconds(x: Optional[float]) -> str:
    if x is None:
        return ""
    return f"{x:.0f} s" if x < 600 else f"{x / 60:.1f} min"


def _delta(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:+.1f}"


STD_NOTE = "mean ± sample standard deviation over seeds"
MAX_LISTED = 20


def print_report(report: Report, title: str) -> None:
    rows = report.rows()
    with_val = any(r["val_accuracy_mean"] is not None for r in rows)
    table = Table(title=title, caption=f"test accuracy (%): {ACCURACY_KINDS[report.kind]}; {STD_NOTE}. "
                                            f"PL acc: pseudo-label accuracy on the unlabeled images")
    columns = ["labels", "rank", "method", "test acc", "runs", "vs sup."]
    columns += ["val acc"] if with_val else []
    with_time = any(r["wall_time_s"] is not None for r in rows)
    columns += ["mask rate", "PL acc"] + (["time/run"] if with_time else [])
    for col in columns:
        if col == "method":  # a variant's settings must stay readable in a narrow terminal: wrap, never cut
            table.add_column(col, justify="left", overflow="fold")
        else:
            table.add_column(col, justify="right")
    for r in rows:
        cells = [str(r["num_labels"]), str(r["rank"]), escape(display_name(r["method"], r["variant"])), _mean_std(r),
                 str(r["runs"]),
                 _delta(r["vs_supervised"])]
        cells += [_pct(r["val_accuracy_mean"])] if with_val else []
        cells += [_pct(r["mask_rate"]), _pct(r["pseudo_label_acc"])] + ([_seconds(r["wall_time_s"])] if with_time else [])
        table.add_row(*cells)
    console.print(table)
    for line in labels_needed_lines(report):
        console.print(line, markup=False, highlight=False)
    for line in report.warnings():
        console.print(f"[yellow]warning[/]: {escape(line)}")
    if report.missing:
        shown = "; ".join(report.missing[:MAX_LISTED])
        more = f"; ... ({len(report.missing) - MAX_LISTED} more in report.md)" if len(report.missing) > MAX_LISTED else ""
        console.print(f"[yellow]missing {len(report.missing)} job(s) without a completed run[/]: {escape(shown + more)}")


def labels_needed_lines(report: Report) -> List[str]:
    lines = []
    for method, r in report.labels_needed().items():
        goal = f"{r['baseline']}'s {100 * r['target_accuracy']:.1f} % at {r['supervised_labels']} labels"
        if r["labels_needed"] is None:
            lines.append(f"labels needed: {method} does not reach {goal} in this sweep")
            continue
        saved = r["labeling_saved"]
        amount = f"{100 * abs(saved):.0f} % {'less' if saved >= 0 else 'more'} labeling"
        if r["note"] == "<=":  # already reached at the smallest count in the sweep: an upper bound
            lines.append(f"labels needed: {method} reaches {goal} with at most {r['labels_needed']:.0f} labels "
                         f"(the fewest in this sweep; at least {amount})")
        else:
            lines.append(f"labels needed: {method} reaches {goal} with about {r['labels_needed']:.0f} labels "
                         f"(interpolated on a log scale; {amount})")
    return lines


def write_files(report: Report, out_dir: Path) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    csv_path, md_path = out_dir / "report.csv", out_dir / "report.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    with_val = any(r["val_accuracy_mean"] is not None for r in rows)
    header = ["labels", "rank", "method", "test accuracy", "runs", "vs supervised"] + (["val accuracy"] if with_val else [])
    with_time = any(r["wall_time_s"] is not None for r in rows)
    header += ["mask rate", "pseudo-label acc"] + (["wall time per run"] if with_time else [])
    table = [[str(r["num_labels"]), str(r["rank"]), display_name(r["method"], r["variant"]), _mean_std(r), str(r["runs"]),
              _delta(r["vs_supervised"])] + ([_pct(r["val_accuracy_mean"])] if with_val else [])
             + [_pct(r["mask_rate"]), _pct(r["pseudo_label_acc"])]
             + ([_seconds(r["wall_time_s"])] if with_time else []) for r in rows]
    lines = [f"Test accuracy (%): {ACCURACY_KINDS[report.kind]}; {STD_NOTE}. "
             f"Nothing is selected on the test set.", "",
             markdown_table(header, table, align="".join("l" if h == "method" else "r" for h in header)).rstrip()]
    lines += [""] + [f"- {line}" for line in labels_needed_lines(report)]
    if report.failed or report.pending or report.missing or report.skipped:
        lines += ["", f"Incomplete: {len(report.failed)} failed, {len(report.pending)} without summary, "
                      f"{len(report.missing)} without a completed run.", ""]
        lines += [f"- {line}" for line in report.warnings() if "several runs" not in line]
        lines += [f"- missing: {job}" for job in report.missing]
    repeated = [line for line in report.warnings() if "several runs" in line]
    if repeated:
        lines += [""] + [f"- warning: {line}" for line in repeated]
    md_path.write_text("\n".join(lines) + "\n")
    written = [csv_path, md_path]
    png = plot_label_efficiency(report, out_dir / "label_efficiency.png")
    if png is not None:
        written.append(png)
    png = plot_accuracy_curves(report, out_dir / "accuracy_curves.png")
    if png is not None:
        written.append(png)
    return written


def plot_accuracy_curves(report: Report, path: Path) -> Optional[Path]:
    """Test accuracy against step, one line per method and label count: mean ± std over its seeds."""
    curves = {f"{name}, {n} labels": cell.curves for (name, n), cell in sorted(report.cells.items()) if cell.curves}
    if not curves:
        return None
    return plot_mean_std_curves(curves, path, title="Test accuracy during training (mean ± std over seeds)")


def plot_label_efficiency(report: Report, path: Path) -> Optional[Path]:
    if not report.cells:
        return None
    many = len(report.methods) > 8  # beyond matplotlib's default colours: a wider figure, the legend outside
    fig, ax = plt.subplots(figsize=(10, 5) if many else (6, 4), dpi=120)
    colours = plt.get_cmap("tab20").colors
    markers = "osD^v<>pP*Xh"
    for i, method in enumerate(report.methods):
        points = sorted((n, c.mean, c.std) for (m, n), c in report.cells.items() if m == method)
        ns, means, stds = zip(*points)
        ax.errorbar(ns, [100 * m for m in means], yerr=[100 * s for s in stds], marker=markers[i % len(markers)],
                    color=colours[i % len(colours)], capsize=3, label=method)
    targets = {(r["baseline"], r["supervised_labels"], r["target_accuracy"]) for r in report.labels_needed().values()}
    for base, top, target in sorted(targets):
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1, label=f"{base} @ {top} labels")
    ax.set_xscale("log")
    ax.set_xticks(report.label_counts)
    ax.set_xticklabels([str(n) for n in report.label_counts])
    ax.minorticks_off()
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"Label efficiency ({'final' if report.kind == 'final' else 'validation-selected'} test accuracy)")
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_dir(root: Path, kind: str = "final", write: bool = True) -> Report:
    report = make_report(root, kind)
    print_report(report, title=f"{root}")
    if write:
        for p in write_files(report, Path(root)):
            console.print(f"wrote {p}", markup=False, highlight=False)
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


class SweepReport(Callback):
    """Hydra callback: when a multirun ends, report it (table, report.csv/md, label_efficiency.png)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not any(sweep_dir.rglob("summary.json")):
            return
        try:
            report_dir(sweep_dir)
        except Exception:  # the jobs' results are on disk; `ssl-report` can be run again by hand
            logging.getLogger("ssl_cli").exception("the sweep report failed; run ssl-report %s", sweep_dir)


if __name__ == "__main__":
    main()

"""Digits, 40 labels: supervised vs pseudo-label vs FixMatch, learning rate chosen on validation.

1. For each method, train with each learning rate in --lrs on seed 0 and keep the one with the best
   FINAL validation accuracy (200 training images held out; ties go to the smaller rate).
   The test set plays no part in the choice.
2. Train each method with its chosen rate on --seeds, same splits and steps for every method.
3. Print (and with --markdown, write) final test accuracy mean ± std per method.

    python scripts/digits_benchmark.py --out bench/digits --markdown bench/digits.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssl_cli.core.tables import markdown_table

METHODS = ("supervised", "pseudolabel", "fixmatch")


def ssl_train(args, run_dir: Path) -> dict:
    exe = Path(sys.executable).with_name("ssl-train")
    cmd = [str(exe), *args, f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/digits"))
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-labels", type=int, default=40)
    p.add_argument("--num-validation", type=int, default=200)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--markdown", type=Path, default=None)
    a = p.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    common = ["dataset=digits", f"dataset.num_labels={a.num_labels}", f"dataset.num_validation={a.num_validation}",
              f"trainer.max_steps={a.steps}", "trainer.device=cpu", "trainer.progress_bar=false"]

    chosen, tuning = {}, []
    for method in METHODS:
        scores = []
        for lr in a.lrs:
            s = ssl_train([*common, f"method={method}", f"optim.lr={lr}", "seed=0"], a.out / "tune" / f"{method}_lr{lr}")
            scores.append((s["final"]["val/accuracy"], -lr, lr))
            tuning.append((method, lr, s["final"]["val/accuracy"], s["wall_time_s"]))
            print(f"tune {method:12s} lr {lr:<6} val {s['final']['val/accuracy']:.4f}", flush=True)
        chosen[method] = max(scores)[2]

    results = {m: [] for m in METHODS}
    for seed in a.seeds:
        for method in METHODS:
            s = ssl_train([*common, f"method={method}", f"optim.lr={chosen[method]}", f"seed={seed}"],
                          a.out / "final" / f"{method}_seed{seed}")
            results[method].append(s)
            print(f"final {method:12s} seed {seed} test {s['final']['test/accuracy']:.4f} "
                  f"({s['wall_time_s']:.1f} s)", flush=True)

    final = []
    for method in METHODS:
        accs = [100 * s["final"]["test/accuracy"] for s in results[method]]
        times = [s["wall_time_s"] for s in results[method]]
        final.append([method, chosen[method], f"{statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f} %",
                      ", ".join(f"{x:.1f}" for x in accs), f"{min(times):.0f}–{max(times):.0f} s"])
    table = (markdown_table(["method", "lr (chosen on validation)", "final test accuracy, mean ± std", "per seed",
                             "wall time per run"], final)
             + "\nValidation accuracy of the learning-rate candidates (seed 0):\n\n"
             + markdown_table(["method", "lr", "final validation accuracy", "wall time"],
                              [[m, lr, f"{100 * v:.1f} %", f"{t:.0f} s"] for m, lr, v, t in tuning])).rstrip()
    print(table)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total wall time {time.time() - t0:.0f} s")

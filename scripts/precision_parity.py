"""Accuracy parity of bf16 autocast and fp32: the same runs, once in each precision.

Digits with 40 labels (200 held out for validation), seeds 0, 1, 2, methods supervised / pseudolabel /
fixmatch at the learning rates docs/benchmarks.md chose on validation, 1,500 steps, one thread per run.
Every (method, seed) pair runs with trainer.precision=fp32 and =bf16 on identical splits; the table
gives final test accuracy mean ± std per method and precision, and whether bf16 lies within one
standard deviation (of the fp32 runs) of fp32. The precision each run really used is read back from its
summary.json (bf16 forced on a CPU without native bf16 still runs, emulated).

    python scripts/precision_parity.py --out bench/precision_digits --markdown bench/precision_digits.md
    python scripts/precision_parity.py --out bench/precision_digits --collect   # the table of the runs done so far
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ssl_cli.core.tables import markdown_table

LEARNING_RATES = {"supervised": 0.03, "pseudolabel": 0.03, "fixmatch": 0.1}  # chosen on validation
PRECISIONS = ("fp32", "bf16")


def ssl_train(args, run_dir: Path) -> dict:
    exe = Path(sys.executable).with_name("ssl-train")
    subprocess.run([str(exe), *args, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/precision_digits"))
    p.add_argument("--methods", nargs="+", default=list(LEARNING_RATES), choices=list(LEARNING_RATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one thread)")
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--collect", action="store_true",
                   help="run nothing: the table of the (method, seed) pairs already finished in --out")
    p.add_argument("extra", nargs="*", help="more ssl-train overrides for every run (e.g. dataset.num_validation=0)")
    a = p.parse_args()
    if a.out.exists() and not a.collect:
        shutil.rmtree(a.out)
    common = ["dataset=digits", "dataset.num_labels=40", "dataset.num_validation=200", f"trainer.max_steps={a.steps}",
              "trainer.device=cpu", "trainer.progress_bar=false", "trainer.num_threads=1", *a.extra]
    jobs = [(m, seed, prec) for m in a.methods for seed in a.seeds for prec in PRECISIONS]

    def run(job):
        method, seed, prec = job
        s = ssl_train([*common, f"method={method}", f"optim.lr={LEARNING_RATES[method]}", f"seed={seed}",
                       f"trainer.precision={prec}"], a.out / f"{method}_seed{seed}_{prec}")
        print(f"{method:12s} seed {seed} {s['precision']}: test {s['final']['test/accuracy']:.4f} "
              f"({s['wall_time_s']:.1f} s)", flush=True)
        return job, s

    if a.collect:
        done = {job: a.out / f"{job[0]}_seed{job[1]}_{job[2]}" / "summary.json" for job in jobs}
        results = {job: json.loads(path.read_text()) for job, path in done.items() if path.exists()}
        results = {job: s for job, s in results.items() if s.get("status") == "completed"}
    else:
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            results = dict(pool.map(run, jobs))

    rows = []
    for method in a.methods:
        seeds = [s for s in a.seeds if all((method, s, prec) in results for prec in PRECISIONS)]
        if not seeds:
            continue
        accs = {prec: [100 * results[(method, s, prec)]["final"]["test/accuracy"] for s in seeds]
                for prec in PRECISIONS}
        ran = sorted({results[(method, s, "bf16")]["precision"] for s in seeds})
        (m32, sd32), (m16, sd16) = mean_std(accs["fp32"]), mean_std(accs["bf16"])
        rows.append([method, f"{m32:.1f} ± {sd32:.1f} %", f"{m16:.1f} ± {sd16:.1f} %", f"{m16 - m32:+.1f}",
                     "yes" if abs(m16 - m32) <= sd32 else "no",
                     ", ".join(f"{x:.1f}" for x in accs["fp32"]), ", ".join(f"{x:.1f}" for x in accs["bf16"]),
                     "/".join(ran)])
        rows[-1].insert(1, ", ".join(map(str, seeds)))
    table = markdown_table(["method", "seeds", "fp32", "bf16", "bf16 - fp32", "within 1 std of fp32",
                            "fp32 per seed", "bf16 per seed", "bf16 runs ran as"], rows).rstrip()
    print(table)
    (a.out / "parity.json").write_text(json.dumps({f"{m}_seed{s}_{p}": r["final"]["test/accuracy"]
                                                   for (m, s, p), r in results.items()}, indent=2))
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total wall time {time.time() - t0:.0f} s")

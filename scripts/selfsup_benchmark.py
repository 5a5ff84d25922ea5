"""Self-supervised pretraining against random initialisation, and selfsup against supervised.

For each seed (same labeled images for every method, chosen by the seed):
1. kNN accuracy (k=200, cosine, temperature 0.1; memory bank = the labeled images only) of the
   randomly initialised backbone, measured by the same evaluation code a run uses;
2. `method=selfsup` (pretraining, then fine-tuning): the pretraining stage's final kNN accuracy and
   linear-probe accuracy, and the fine-tuned final test accuracy;
3. `method=supervised` from scratch with the same labels and fine-tuning steps.
Nothing is chosen on the test set: every setting is fixed on the command line before the runs.

    python scripts/selfsup_benchmark.py --out bench/selfsup_digits --markdown bench/selfsup_digits.md
    python scripts/selfsup_benchmark.py --out bench/selfsup_cifar10 --seeds 0 \\
        --common dataset=cifar10 dataset.root=../shared/data/cifar10 dataset.num_labels=250 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ssl_cli.core.tables import markdown_table
from ssl_cli.engine.config import check_config, compose
from ssl_cli.engine.trainer import Trainer


def ssl_train(args, run_dir: Path) -> dict:
    exe = Path(sys.executable).with_name("ssl-train")
    subprocess.run([str(exe), *args, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def random_init_knn(overrides) -> float:
    """kNN test accuracy of the untrained backbone, through Trainer.evaluate like any run."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Trainer(check_config(compose(list(overrides))), Path(tmp)).evaluate()
    return results["test"]["knn_accuracy"]


def mean_std(values):
    values = [100 * v for v in values]
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/selfsup_digits"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--common", nargs="*", default=["dataset=digits", "dataset.num_labels=40"],
                   help="overrides shared by every run")
    p.add_argument("--selfsup", nargs="*", default=["method.pretrain=simclr", "method.finetune=supervised"],
                   help="extra overrides of the selfsup run")
    p.add_argument("--markdown", type=Path, default=None)
    a = p.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    common = [*a.common, "trainer.device=cpu", "trainer.progress_bar=false"]
    rows = []
    for seed in a.seeds:
        knn0 = random_init_knn([*common, "method=supervised", f"seed={seed}"])
        ss = ssl_train([*common, "method=selfsup", *a.selfsup, f"seed={seed}"], a.out / f"selfsup_seed{seed}")
        sup = ssl_train([*common, "method=supervised", f"seed={seed}"], a.out / f"supervised_seed{seed}")
        pre = ss["stages"]["pretrain"]
        rows.append({"seed": seed, "random_knn": knn0, "pretrained_knn": pre["final"]["test/knn_accuracy"],
                     "pretrained_probe": pre["final"]["test/accuracy"], "selfsup": ss["final"]["test/accuracy"],
                     "supervised": sup["final"]["test/accuracy"], "pretrain_s": pre["wall_time_s"],
                     "selfsup_s": ss["wall_time_s"], "supervised_s": sup["wall_time_s"]})
        print(json.dumps(rows[-1]), flush=True)

    keys = ("random_knn", "pretrained_knn", "pretrained_probe", "selfsup", "supervised")
    body = [[r["seed"], *(f"{100 * r[k]:.1f}" for k in keys), f"{r['selfsup_s']:.0f} s / {r['supervised_s']:.0f} s"]
            for r in rows]
    body.append(["mean ± std", *(mean_std([r[k] for r in rows]) for k in keys), ""])
    table = markdown_table(["seed", "kNN, random init", "kNN, pretrained", "linear probe, pretrained",
                            "selfsup (fine-tuned)", "supervised", "wall time selfsup / supervised"], body).rstrip()
    print(table)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total wall time {time.time() - t0:.0f} s")

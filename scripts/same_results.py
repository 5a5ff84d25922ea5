"""Deterministic reference runs: do supervised, pseudolabel, fixmatch, simclr and selfsup still give the
same numbers? Runs each on digits (40 labels, seed 0, 300 steps, trainer.deterministic=true) through the
`ssl-train` command, writes their final test accuracy and training loss to a JSON file, and with
`--compare OLD.json` prints a before/after table and exits 1 if any figure differs.

    python scripts/same_results.py --out bench/same_results --json bench/same_results.json
    python scripts/same_results.py --out bench/same_results_new --json new.json --compare bench/same_results.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ssl_cli.core.tables import markdown_table

METHODS = {
    "supervised": ["method=supervised"],
    "pseudolabel": ["method=pseudolabel"],
    "fixmatch": ["method=fixmatch"],
    "simclr": ["method=simclr"],
    "selfsup": ["method=selfsup", "method.pretrain_steps=300"],
}
COMMON = ["dataset=digits", "dataset.num_labels=40", "seed=0", "trainer.max_steps=300", "trainer.deterministic=true",
          "trainer.device=cpu", "trainer.progress_bar=false"]


def figures(summary: dict) -> dict:
    final = summary["final"]
    return {"test/accuracy": final["test/accuracy"], "test/macro_f1": final["test/macro_f1"],
            "train/loss": summary["train"].get("loss")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/same_results"))
    p.add_argument("--json", type=Path, default=None, help="where to write the figures (default: OUT/figures.json)")
    p.add_argument("--compare", type=Path, default=None, help="figures of an earlier run of this script")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    a = p.parse_args()
    exe = shutil.which("ssl-train") or str(Path(sys.executable).with_name("ssl-train"))
    results = {}
    for name in a.methods:
        run_dir = a.out / name
        if not (run_dir / "summary.json").exists():
            subprocess.run([exe, *METHODS[name], *COMMON, f"hydra.run.dir={run_dir}"], check=True)
        results[name] = figures(json.loads((run_dir / "summary.json").read_text()))
    out = a.json or a.out / "figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if a.compare is None:
        print(json.dumps(results, indent=2))
        return 0
    old = json.loads(a.compare.read_text())
    rows = [[name, key, repr(old.get(name, {}).get(key)), repr(value), "yes" if old.get(name, {}).get(key) == value
             else "NO"] for name, now in results.items() for key, value in now.items()]
    print(markdown_table(["method", "figure", "before", "after", "same"], rows, align="llrrl"), end="")
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

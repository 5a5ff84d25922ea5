"""Digits, 40 labels, FixMatch: real unlabeled folders vs today's hidden-label split (issue 12, must-show 3).

For each seed, the hidden-label run is `ssl-train dataset=digits seed=S` (every training image keeps its
label; the split hides all but 40). The own-data run gets the same images as a folder written with PIL:
the 40 images that seed labels in train/<class>/, every other training image in unlabeled/ (no label
on disk at all) and the test images in test/<class>/, then `ssl-train dataset=imagefolder`. Same seed,
same steps, same labeled images; only the data path differs. Final test accuracy, mean ± std:

    python scripts/own_data_digits.py --out bench/own_data_digits --markdown bench/own_data_digits.md

Seeds can run as separate processes (--seeds 1 --out bench/odd_s1, ...); --collect DIR... then builds the
table from their run directories without training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from ssl_cli.core.tables import markdown_table
from ssl_cli.data import load_dataset
from ssl_cli.data.datasets import DigitsOptions
from ssl_cli.data.split import make_split


def ssl_train(args, run_dir: Path) -> dict:
    exe = Path(sys.executable).with_name("ssl-train")
    subprocess.run([str(exe), *args, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def write_digits_folder(root: Path, seed: int, num_labels: int) -> int:
    """digits as PNG files: the labeled images of `seed` in train/<class>/, the rest in unlabeled/, test/."""
    data = load_dataset("digits", DigitsOptions())
    labels = data.train_labels.numpy()
    labeled = set(make_split(labels, data.num_classes, seed, num_labels=num_labels).labeled.tolist())
    for i, (image, label) in enumerate(zip(data.train_images, labels)):
        folder = root / "train" / data.class_names[label] if i in labeled else root / "unlabeled" / f"{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i:04d}.png")
    for i, (image, label) in enumerate(zip(data.test_images, data.test_labels.tolist())):
        folder = root / "test" / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i:04d}.png")
    return len(labeled)


HIDDEN, FOLDER = "hidden labels (dataset=digits)", "unlabeled/ folder (dataset=imagefolder)"


def collect(outs: List[Path]) -> Dict[str, Dict[int, dict]]:
    """The summaries of every finished run under `outs`: {data path: {seed: summary}}."""
    found: Dict[str, Dict[int, dict]] = {HIDDEN: {}, FOLDER: {}}
    for out in outs:
        for name, pattern in ((HIDDEN, "hidden_seed*"), (FOLDER, "folder_run_seed*")):
            for run in out.glob(pattern):
                if (run / "summary.json").is_file():
                    found[name][int(run.name.rsplit("seed", 1)[1])] = json.loads((run / "summary.json").read_text())
    return found


def report(found: Dict[str, Dict[int, dict]]) -> str:
    seeds = sorted(set(found[HIDDEN]) & set(found[FOLDER]))
    acc = {name: [found[name][s]["final"]["test/accuracy"] for s in seeds] for name in found}
    steps = {found[name][s]["max_steps"] for name in found for s in seeds}
    rows = []
    for name, accs in acc.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append([name, " / ".join(f"{100 * x:.1f}" for x in accs),
                     f"{100 * statistics.mean(accs):.1f} ± {100 * std:.1f}"])
    diffs = np.array(acc[FOLDER]) - np.array(acc[HIDDEN])
    table = markdown_table(["data path", "final test accuracy per seed (%)", "mean ± std (%)"], rows)
    return (f"{table}\n\nFolder minus hidden-label, per seed: {', '.join(f'{100 * d:+.1f}' for d in diffs)} "
            f"points (FixMatch, seeds {', '.join(map(str, seeds))}, steps {', '.join(map(str, sorted(steps)))}).\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/own_data_digits"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-labels", type=int, default=40)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--collect", type=Path, nargs="+", default=None, help="only build the table from these outs")
    a = p.parse_args()
    if a.collect is None:
        if a.out.exists():
            shutil.rmtree(a.out)
        common = ["method=fixmatch", f"dataset.num_labels={a.num_labels}", f"trainer.max_steps={a.steps}",
                  "trainer.device=cpu", "trainer.progress_bar=false", "trainer.num_threads=1"]
        for seed in a.seeds:
            folder = a.out / f"folder_seed{seed}"
            write_digits_folder(folder, seed, a.num_labels)
            hidden = ssl_train([*common, "dataset=digits", f"seed={seed}"], a.out / f"hidden_seed{seed}")
            own = ssl_train([*common, "dataset=imagefolder", f"dataset.root={folder}", "dataset.allow_flip=false",
                             f"dataset.cache_dir={a.out / 'cache'}", f"seed={seed}"], a.out / f"folder_run_seed{seed}")
            print(f"seed {seed}: hidden {hidden['final']['test/accuracy']:.4f}  "
                  f"folder {own['final']['test/accuracy']:.4f}", flush=True)
    text = report(collect(a.collect or [a.out]))
    print(text)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(text)


if __name__ == "__main__":
    main()

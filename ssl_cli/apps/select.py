"""ssl-select: which images to label next, from a trained run's model and features.

    ssl-select RUN --budget 20 [--strategy typiclust] [--pool FOLDER_OR_CSV] [--out DIR]

The pool is a folder of images (searched recursively), a CSV with a `path` column (paths relative to
the CSV's folder), or, without --pool, the run's own unlabeled training images (its labeled images
count as labeled already). Writes into --out (default: selection_<strategy>_<budget>/ beside the
run's checkpoint):

- to_label.csv: rank, the image (path, or index into the run's training set), the model's current
  guess and its confidence, and the cluster it was chosen from (typiclust; blank otherwise);
- to_label.png: a contact sheet of the chosen images in rank order, to see what is to be labeled;
- selection.json: strategy, run, seed and what the selector reports (delta and coverage for probcover).

Bad input ends with one line on stderr and exit code 2; an existing output folder is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssl_cli.core.errors import EXIT_USER_ERROR, UserError, one_line
from ssl_cli.core.options import defaults, from_config
from ssl_cli.data import DATASETS, load_dataset
from ssl_cli.data.folders import list_files
from ssl_cli.data.split import SPLIT_FILE
from ssl_cli.data.stream import decode_file
from ssl_cli.engine.checkpoint import find_checkpoint, load_checkpoint
from ssl_cli.engine.model_io import TrainedModel
from ssl_cli.engine.selection import feature_model, pool_outputs
from ssl_cli.selection import l2_normalize, select, strategy_names

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHEET_TILE = 96  # pixels per image on the contact sheet (small images are scaled up to be seen)
SHEET_COLUMNS = 10


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage text
        raise UserError(f"{message} (see ssl-select --help)")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = _Parser(prog="ssl-select", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run", help="a run directory (or checkpoint) whose model gives features and guesses")
    p.add_argument("--budget", type=int, required=True, help="how many images to label next")
    p.add_argument("--strategy", default="typiclust", help=f"one of: {', '.join(strategy_names())}")
    p.add_argument("--pool", default=None, help="a folder of images or a CSV with a path column "
                                                 "(default: the run's own unlabeled training images)")
    p.add_argument("--out", type=Path, default=None, help="output folder (must not exist yet)")
    p.add_argument("--seed", type=int, default=0, help="seeds k-means and random choices")
    p.add_argument("--delta", type=float, default=None, help="ProbCover's ball radius on L2-normalised features, "
                                                             "in (0, 2] (default: the label-free purity heuristic)")
    return p.parse_args(argv)


def pool_from_files(source: Path, model: TrainedModel) -> Tuple[List[str], torch.Tensor]:
    """The pool's image paths and their uint8 images at the model's input size."""
    if source.is_dir():
        paths = [p for p in list_files(source) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise UserError(f"--pool {source}: a CSV pool needs a 'path' column (one image per row)")
        paths = [source.parent / r["path"] for r in rows]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"--pool {source}: {len(missing)} listed image(s) do not exist, e.g. {missing[0]}")
    else:
        raise UserError(f"--pool {source}: no such folder or .csv file")
    if not paths:
        raise UserError(f"--pool {source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for p in paths:
        try:
            images.append(decode_file(str(p), model.channels, model.image_size, resize=True))
        except Exception as e:  # a broken file: say which, rather than choose around it silently
            raise UserError(f"--pool: cannot read image {p}: {one_line(e)}") from None
    return [str(p) for p in paths], torch.stack(images)


def pool_from_run(run_source: str) -> Tuple[List[str], torch.Tensor, np.ndarray, np.ndarray]:
    """The run's training images: names (training-set indices), images, the candidate positions
    (unlabeled, outside validation) and the already labeled positions."""
    checkpoint = find_checkpoint(run_source, stage="finetune")
    saved = dict(load_checkpoint(checkpoint)["config"]["dataset"])
    name = saved.get("name")
    if name not in DATASETS:
        raise UserError(f"{run_source}: its data set {name!r} is not one this ssl-cli reads; give --pool")
    # Keys added to the data set's options after the run was made take their defaults.
    options = from_config(DATASETS.options(name), {**defaults(DATASETS.options(name)), **saved}, f"dataset={name}")
    split_file = checkpoint.parent / SPLIT_FILE
    if not split_file.is_file():
        raise UserError(f"{run_source}: no {SPLIT_FILE} next to {checkpoint.name}; give --pool")
    split = json.loads(split_file.read_text())
    data = load_dataset(name, options)
    if not isinstance(data.train_images, torch.Tensor):
        raise UserError(f"{run_source} streams its images from files; give the folder with --pool")
    labeled = np.asarray(split["labeled"], dtype=np.int64)
    candidates = np.setdiff1d(np.asarray(split["unlabeled"], dtype=np.int64), labeled)
    return [str(i) for i in range(len(data.train_images))], data.train_images, candidates, labeled


def contact_sheet(images: torch.Tensor, captions: List[str], path: Path) -> None:
    """One PNG of the images in a grid, each scaled to SHEET_TILE pixels with its caption."""
    rows = math.ceil(len(images) / SHEET_COLUMNS)
    columns = min(SHEET_COLUMNS, len(images))
    sheet = Image.new("RGB", (columns * SHEET_TILE, rows * (SHEET_TILE + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(zip(images, captions)):
        array = img.permute(1, 2, 0).numpy()
        tile = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")
        tile = tile.resize((SHEET_TILE, SHEET_TILE), Image.NEAREST)
        x, y = (i % SHEET_COLUMNS) * SHEET_TILE, (i // SHEET_COLUMNS) * (SHEET_TILE + 14)
        sheet.paste(tile, (x, y))
        draw.text((x + 2, y + SHEET_TILE), caption[:18], fill="black")
    sheet.save(path)


def run_select(args: argparse.Namespace) -> Path:
    if args.strategy not in strategy_names():
        raise UserError(f"--strategy {args.strategy}: unknown; choose one of: {', '.join(strategy_names())}")
    if args.budget < 1:
        raise UserError(f"--budget must be at least 1, got {args.budget}")
    if args.delta is not None and not 0 < args.delta <= 2:
        raise UserError(f"--delta {args.delta}: a radius between unit vectors; allowed: 0 < delta <= 2")
    model = feature_model(args.run)
    out = args.out or model.source.parent / f"selection_{args.strategy}_{args.budget}"
    if out.exists():
        raise UserError(f"--out {out} exists already; give another folder (nothing is overwritten)")
    if args.pool is None:
        names, images, candidates, labeled = pool_from_run(args.run)
    else:
        names, images = pool_from_files(Path(args.pool).expanduser(), model)
        candidates, labeled = np.arange(len(names)), np.zeros(0, dtype=np.int64)
    # The selector sees the candidates and the labeled images (counted as labeled), nothing else.
    positions = np.concatenate([candidates, labeled])
    if args.budget > len(candidates):
        raise UserError(f"--budget {args.budget} is more than the {len(candidates)} images in the pool; "
                        f"allowed: 1..{len(candidates)}")
    features, probabilities = pool_outputs(model, images[torch.from_numpy(positions)])
    chosen = select(args.strategy, l2_normalize(features), args.budget,
                    already=np.arange(len(candidates), len(positions)), seed=args.seed,
                    probabilities=probabilities, num_classes=len(model.class_names), delta=args.delta,
                    label="--strategy")
    picked = positions[chosen.indices]
    confidence = probabilities[chosen.indices].max(axis=1)
    guess = probabilities[chosen.indices].argmax(axis=1)

    out.mkdir(parents=True)
    with open(out / "to_label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "path" if args.pool else "index", "guess", "confidence", "cluster"])
        for rank, i in enumerate(picked):
            cluster = "" if chosen.cluster is None else int(chosen.cluster[rank])
            writer.writerow([rank + 1, names[i], model.class_names[guess[rank]], f"{confidence[rank]:.3f}", cluster])
    contact_sheet(images[torch.from_numpy(picked)],
                  [f"#{r + 1}: {model.class_names[g]}?" for r, g in enumerate(guess)], out / "to_label.png")
    record = {"strategy": args.strategy, "run": str(model.source), "pool": args.pool or "the run's own data",
              "seed": args.seed, "budget": args.budget, "pool_size": int(len(candidates)),
              "already_labeled": int(len(labeled)), **chosen.info}
    (out / "selection.json").write_text(json.dumps(record, indent=1))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    try:
        out = run_select(parse_args(argv))
    except UserError as e:
        print(f"ssl-select: error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(f"wrote {out / 'to_label.csv'}, {out / 'to_label.png'} and {out / 'selection.json'}")


if __name__ == "__main__":
    main()

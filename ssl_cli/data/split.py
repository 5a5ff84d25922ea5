"""Which training images are labeled, which are unlabeled, and which are held out for validation.

The split depends only on the labels, the requested sizes and `seed`, so every method run with the
same seed and label count sees the same labeled images. It is saved as JSON in the run directory and
can be loaded back with `dataset.labeled_indices=<file or run dir>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ssl_cli.core.errors import UserError

SPLIT_FILE = "labeled_indices.json"


@dataclass
class Split:
    labeled: np.ndarray  # indices into the training images
    unlabeled: np.ndarray
    validation: np.ndarray

    def to_json(self, dataset: str, num_train: int) -> dict:
        return {
            "dataset": dataset,
            "num_train": int(num_train),
            "labeled": self.labeled.tolist(),
            "validation": self.validation.tolist(),
            "unlabeled": self.unlabeled.tolist(),
        }


def _balanced_counts(class_sizes: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Splits `total` as evenly as possible over classes, never asking a class for more than it has."""
    counts = np.zeros_like(class_sizes)
    remaining = total
    open_classes = np.flatnonzero(class_sizes > counts)
    while remaining > 0 and len(open_classes):
        share, extra = divmod(remaining, len(open_classes))
        give = np.full(len(open_classes), share)
        give[rng.permutation(len(open_classes))[:extra]] += 1  # the remainder goes to random classes
        room = class_sizes[open_classes] - counts[open_classes]
        give = np.minimum(give, room)
        counts[open_classes] += give
        remaining -= int(give.sum())
        open_classes = np.flatnonzero(class_sizes > counts)
    return counts


def make_split(
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    num_labels: Optional[int] = None,
    label_fraction: Optional[float] = None,
    num_validation: int = 0,
    unlabeled_includes_labeled: bool = True,
) -> Split:
    """Draws a class-balanced labeled set (and a class-balanced validation set before it).

    The sizes' types and ranges are checked where they are declared (ssl_cli.data.base.DatasetOptions);
    what depends on the data (enough images per class) is checked here.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_validation > n - num_classes:
        raise UserError(f"dataset.num_validation={num_validation} leaves too few training images (there are {n})")
    rng = np.random.default_rng(seed)
    class_index = [np.flatnonzero(labels == c) for c in range(num_classes)]
    for idx in class_index:
        rng.shuffle(idx)

    val_counts = _balanced_counts(np.array([len(i) for i in class_index]), num_validation, rng)
    validation = np.concatenate([idx[:k] for idx, k in zip(class_index, val_counts)]).astype(np.int64)
    pool = [idx[k:] for idx, k in zip(class_index, val_counts)]
    pool_size = sum(len(p) for p in pool)

    if label_fraction is not None:
        num_labels = max(num_classes, int(round(label_fraction * pool_size)))
    assert num_labels is not None
    if num_labels < num_classes:
        raise UserError(f"dataset.num_labels={num_labels} is below the number of classes ({num_classes}); "
                        f"allowed: {num_classes}..{pool_size}")
    if num_labels > pool_size:
        raise UserError(f"dataset.num_labels={num_labels} exceeds the {pool_size} training images available; "
                        f"allowed: {num_classes}..{pool_size}")
    if any(len(p) == 0 for p in pool):
        missing = [c for c, p in enumerate(pool) if len(p) == 0]
        raise UserError(f"classes {missing} have no training images left to label")
    label_counts = _balanced_counts(np.array([len(p) for p in pool]), num_labels, rng)
    labeled = np.concatenate([p[:k] for p, k in zip(pool, label_counts)]).astype(np.int64)
    rest = np.concatenate([p[k:] for p, k in zip(pool, label_counts)]).astype(np.int64)
    unlabeled = np.concatenate([labeled, rest]) if unlabeled_includes_labeled else rest
    return Split(np.sort(labeled), np.sort(unlabeled), np.sort(validation))


def save_split(split: Split, path: Path, dataset: str, num_train: int) -> None:
    path.write_text(json.dumps(split.to_json(dataset, num_train)))


def load_split(path_like: str, dataset: str, num_train: int, num_classes: int, labels: np.ndarray) -> Split:
    """Loads a split written by an earlier run (its file, or the run directory holding it)."""
    path = Path(path_like).expanduser()
    if path.is_dir():
        path = path / SPLIT_FILE
    if not path.is_file():
        raise UserError(f"dataset.labeled_indices: no file {path} (give a {SPLIT_FILE} or a run directory)")
    try:
        raw = json.loads(path.read_text())
        labeled = np.asarray(raw["labeled"], dtype=np.int64)
        validation = np.asarray(raw.get("validation", []), dtype=np.int64)
        unlabeled = np.asarray(raw["unlabeled"], dtype=np.int64)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"dataset.labeled_indices: {path} is not a split file written by ssl-train") from None
    if raw.get("dataset") != dataset or raw.get("num_train") != num_train:
        raise UserError(f"dataset.labeled_indices: {path} was made for {raw.get('dataset')} with "
                        f"{raw.get('num_train')} training images, this run uses {dataset} with {num_train}")
    for name, idx in (("labeled", labeled), ("validation", validation), ("unlabeled", unlabeled)):
        if len(idx) and (idx.min() < 0 or idx.max() >= num_train):
            raise UserError(f"dataset.labeled_indices: {name} indices in {path} are out of range 0..{num_train - 1}")
    if len(np.unique(labels[labeled])) < num_classes:
        raise UserError(f"dataset.labeled_indices: {path} does not label every class")
    return Split(labeled, unlabeled, validation)

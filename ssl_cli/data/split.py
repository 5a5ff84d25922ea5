"""Which training images are labeled, which are unlabeled, and which are held out for validation.

The split depends only on the labels, the requested sizes and `seed`, so every method run with the
same seed and label count sees the same labeled images. A selector (ssl_cli.selection) may choose the
labeled set instead, from `selection_pool`; `make_split(..., labeled=...)` then takes it as given. It is saved as JSON in the run directory and
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
    # How the labeled set was chosen, where a selector chose it (strategy, feature run, delta, coverage...)
    selection: Optional[dict] = None

    def to_json(self, dataset: str, num_train: int) -> dict:
        out = {
            "dataset": dataset,
            "num_train": int(num_train),
            "labeled": self.labeled.tolist(),
            "validation": self.validation.tolist(),
            "unlabeled": self.unlabeled.tolist(),
        }
        if self.selection is not None:
            out["selection"] = self.selection
        return out


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


def _validation_first(labels: np.ndarray, num_classes: int, seed: int, num_validation: int):
    """The seed's generator, the class-balanced validation split, and the rest of each class, shuffled."""
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
    return rng, validation, pool


def label_budget(pool_size: int, num_classes: int, num_labels: Optional[int] = None,
                 label_fraction: Optional[float] = None) -> int:
    """How many images to label, from dataset.num_labels or dataset.label_fraction, checked against the pool."""
    if label_fraction is not None:
        num_labels = max(num_classes, int(round(label_fraction * pool_size)))
    assert num_labels is not None
    if num_labels < num_classes:
        raise UserError(f"dataset.num_labels={num_labels} is below the number of classes ({num_classes}); "
                        f"allowed: {num_classes}..{pool_size}")
    if num_labels > pool_size:
        raise UserError(f"dataset.num_labels={num_labels} exceeds the {pool_size} training images available; "
                        f"allowed: {num_classes}..{pool_size}")
    return num_labels


def selection_pool(labels: np.ndarray, num_classes: int, seed: int, num_validation: int = 0) -> np.ndarray:
    """The training images a selector may choose from: all but the validation split `make_split` draws
    for this seed (the validation split is drawn class-balanced, as for every run, to keep runs comparable)."""
    _, _, pool = _validation_first(np.asarray(labels), num_classes, seed, num_validation)
    return np.sort(np.concatenate(pool)).astype(np.int64)


def make_split(
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    num_labels: Optional[int] = None,
    label_fraction: Optional[float] = None,
    num_validation: int = 0,
    unlabeled_includes_labeled: bool = True,
    labeled: Optional[np.ndarray] = None,
    selection: Optional[dict] = None,
) -> Split:
    """Draws a class-balanced labeled set (and a class-balanced validation set before it).

    With `labeled` (indices chosen by a selector from `selection_pool`), that set is the labeled one
    instead, as given: it need not cover every class. `selection` says how it was chosen (recorded
    in labeled_indices.json).
    The sizes' types and ranges are checked where they are declared (ssl_cli.data.base.DatasetOptions);
    what depends on the data (enough images per class) is checked here.
    """
    labels = np.asarray(labels)
    rng, validation, pool = _validation_first(labels, num_classes, seed, num_validation)
    pool_size = sum(len(p) for p in pool)
    if labeled is not None:
        labeled = np.unique(np.asarray(labeled, dtype=np.int64))
        if np.isin(labeled, validation).any() or len(labeled) and (labeled.min() < 0 or labeled.max() >= len(labels)):
            raise UserError("the given labeled images must be training images outside the validation split")
        rest = np.setdiff1d(np.concatenate(pool), labeled).astype(np.int64)
    else:
        num_labels = label_budget(pool_size, num_classes, num_labels, label_fraction)
        if any(len(p) == 0 for p in pool):
            missing = [c for c, p in enumerate(pool) if len(p) == 0]
            raise UserError(f"classes {missing} have no training images left to label")
        label_counts = _balanced_counts(np.array([len(p) for p in pool]), num_labels, rng)
        labeled = np.concatenate([p[:k] for p, k in zip(pool, label_counts)]).astype(np.int64)
        rest = np.concatenate([p[k:] for p, k in zip(pool, label_counts)]).astype(np.int64)
    unlabeled = np.concatenate([labeled, rest]) if unlabeled_includes_labeled else rest
    return Split(np.sort(labeled), np.sort(unlabeled), np.sort(validation), selection)


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
    selection = raw.get("selection")
    if selection is None and len(np.unique(labels[labeled])) < num_classes:  # a selector's set may miss classes
        raise UserError(f"dataset.labeled_indices: {path} does not label every class")
    return Split(labeled, unlabeled, validation, selection)

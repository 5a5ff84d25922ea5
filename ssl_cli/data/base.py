"""What every data set gives the runner: `ImageData`, uint8 [N, C, H, W] images with int64 labels.

The runner moves these onto the training device once; augmentation then happens there in batches.
`DatasetOptions` declares the keys every data set has (how many images to label, the validation split,
whether flips are allowed); each loader adds its own in a subclass and registers both in `DATASETS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, option
from ssl_cli.core.registry import Registry

DATASETS: Registry = Registry("dataset", "dataset")
# dataset.labeled_selection's choices: "random" plus the selectors of ssl_cli.selection (a test keeps them equal)
SELECTION_STRATEGIES = ("random", "uniform", "typiclust", "probcover", "kcenter", "margin", "entropy")
# The two that need no feature run: random (class-balanced: it reads the labels) and uniform (label-free chance).
WITHOUT_FEATURES = ("random", "uniform")


@dataclass
class DatasetOptions(Options):
    """Keys of every data set: the label split (ssl_cli.data.split) and what augmentation may do."""

    group = "dataset"
    num_labels: Optional[int] = option(40, "labeled images in total, class-balanced (or use label_fraction)")
    label_fraction: Optional[float] = option(None, "share of the training images to label; exactly one of "
                                                   "this and num_labels", above=0, high=1)
    num_validation: int = option(0, "labeled images held out of training for model selection (never the "
                                    "test set)", low=0)
    unlabeled_includes_labeled: bool = option(True, "the unlabeled pool contains the labeled images too "
                                                    "(as FixMatch)")
    labeled_indices: Optional[str] = option(None, "a labeled_indices.json (or run directory) of an earlier "
                                                  "run, to reuse its split exactly")
    labeled_selection: str = option("random", "how the labeled images are chosen: random (class-balanced, "
                                              "which needs the labels), uniform (by chance, label-free) or a "
                                              "selector that never reads labels, on the features of "
                                              "dataset.selection_features (ssl_cli.selection)",
                                    choices=SELECTION_STRATEGIES)
    selection_features: Optional[str] = option(None, "the run (directory or checkpoint) whose model gives the "
                                                     "features (or predictions) a selector chooses with")
    probcover_delta: Optional[float] = option(None, "ProbCover's ball radius on L2-normalised features; null: "
                                                    "chosen without labels by the purity heuristic (other "
                                                    "selectors ignore it)", above=0, high=2)
    allow_flip: bool = option(True, "whether augmentation may mirror images (false for digits)")

    def check(self) -> None:
        if self.labeled_indices is None and (self.num_labels is None) == (self.label_fraction is None):
            raise UserError("set exactly one of dataset.num_labels and dataset.label_fraction "
                            "(e.g. dataset.num_labels=40 dataset.label_fraction=null)")
        if self.labeled_selection != "random":
            if self.labeled_indices is not None:
                raise UserError(f"dataset.labeled_selection={self.labeled_selection} and dataset.labeled_indices "
                                f"both choose the labeled images; set only one of them")
            if self.selection_features is None and self.labeled_selection not in WITHOUT_FEATURES:
                raise UserError(f"dataset.labeled_selection={self.labeled_selection} needs "
                                f"dataset.selection_features=<run dir> (a SimCLR/BYOL run, or any ssl-train run)")
        if self.selection_features is not None and not Path(self.selection_features).expanduser().exists():
            raise UserError(f"dataset.selection_features={self.selection_features}: no such run directory or "
                            f"checkpoint")


@dataclass
class ImageData:
    name: str
    train_images: torch.Tensor  # uint8 [N, C, H, W] (or ssl_cli.data.stream.FileImages)
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    # Extra unlabeled images with no labels at all (STL-10's 100k split, an image folder's unlabeled/);
    # uint8 [M, C, H, W] or None. They join the unlabeled pool with hidden label -1 (unknown).
    extra_unlabeled: Optional[torch.Tensor] = None
    # A validation split given as such (an image folder's val/, dataset.val_csv), else None: then
    # dataset.num_validation training images are held out instead (ssl_cli.data.split).
    validation_images: Optional[torch.Tensor] = None
    validation_labels: Optional[torch.Tensor] = None
    notes: Dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> Tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def channel_stats(self) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std of the training images, labeled or not, in [0, 1] units.

        Extra unlabeled images count too: an image folder with 40 labeled images in train/ and the rest in
        unlabeled/ is normalised as the same images with hidden labels are."""
        extra = self.extra_unlabeled
        if not isinstance(self.train_images, torch.Tensor):  # streamed from files: a sample
            return (self.train_images if extra is None else self.train_images.cat(extra)).channel_stats()
        x = self.train_images[:20000] if extra is None else torch.cat([self.train_images[:20000], extra[:20000]])
        x = x.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


def load_dataset(name: str, options: DatasetOptions) -> ImageData:
    data = DATASETS.get(name)(options)
    if data.train_images.dtype != torch.uint8 or data.train_images.ndim != 4:
        raise AssertionError(f"loader for {name} must return uint8 [N, C, H, W] images")
    return data


def nchw(array: np.ndarray) -> torch.Tensor:
    """Numpy images in NHW or NHWC layout -> contiguous uint8 NCHW tensor."""
    t = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.uint8)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def held_out_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A class-stratified train/test split that depends only on `seed` (fixed per data set, not per run)."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def require_root(root: Optional[str], name: str, layouts: str) -> Path:
    """dataset.root as a path, or a one-line error saying what the folder should hold."""
    if root in (None, ""):
        raise UserError(f"dataset={name} needs dataset.root (a folder holding {layouts})")
    return Path(os.path.expanduser(str(root)))

"""The built-in data sets: synthetic blobs, scikit-learn's digits, and torchvision's MNIST, CIFAR, SVHN, STL-10.

Each loader takes its `Options` (declared next to it) and returns an `ImageData`. Image folders
(and the image-folder copies of CIFAR) are in ssl_cli.data.folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import option
from ssl_cli.data.base import DATASETS, DatasetOptions, ImageData, held_out_split, nchw, require_root
from ssl_cli.data.folders import FolderOptions, load_image_folder

# --------------------------------------------------------------------------- synthetic and digits


@dataclass
class SyntheticOptions(DatasetOptions):
    num_classes: int = option(4, "number of classes", low=2)
    num_train: int = option(256, "training images", low=1)
    num_test: int = option(128, "test images", low=1)
    channels: int = option(3, "1 (grey) or 3 (RGB)", choices=(1, 3))
    image_size: int = option(16, "height and width", low=4, high=4096)
    seed: int = option(0, "seed of the generated images (fixed per data set, not per run)", low=0)

    def check(self) -> None:
        super().check()
        if self.num_train < self.num_classes:
            raise UserError(f"dataset.num_train={self.num_train} is below dataset.num_classes={self.num_classes}; "
                            f"every class needs a training image")


@DATASETS.register("synthetic", SyntheticOptions)
def load_synthetic(o: SyntheticOptions) -> ImageData:
    """Tiny, learnable images made in memory: each class is a coloured blob at its own position."""
    g = torch.Generator().manual_seed(o.seed)
    n, size = o.num_train + o.num_test, o.image_size
    labels = torch.arange(n) % o.num_classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angle = 2 * torch.pi * labels.float() / o.num_classes
    cy = size / 2 + size / 4 * torch.sin(angle) + torch.randn(n, generator=g)
    cx = size / 2 + size / 4 * torch.cos(angle) + torch.randn(n, generator=g)
    dist2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = torch.exp(-dist2 / (2 * (size / 8) ** 2))
    colour = 0.5 + 0.5 * torch.rand(n, o.channels, 1, 1, generator=g)
    images = blob[:, None] * colour + 0.15 * torch.rand(n, o.channels, size, size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(
        name="synthetic",
        train_images=images[:o.num_train].contiguous(),
        train_labels=labels[:o.num_train].long(),
        test_images=images[o.num_train:].contiguous(),
        test_labels=labels[o.num_train:].long(),
        class_names=[f"class_{i}" for i in range(o.num_classes)],
    )


@dataclass
class DigitsOptions(DatasetOptions):
    test_fraction: float = option(0.2, "share held out as the fixed, stratified test split", above=0, below=1)
    split_seed: int = option(0, "seed of that train/test split (the run's seed picks the labeled images)", low=0)


@DATASETS.register("digits", DigitsOptions)
def load_digits(o: DigitsOptions) -> ImageData:
    """scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn, no download).

    There is no official test split, so a fixed stratified 20 % is held out (the same for every run).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = held_out_split(labels, o.test_fraction, o.split_seed)
    return ImageData(
        name="digits",
        train_images=nchw(images[train_idx]),
        train_labels=torch.as_tensor(labels[train_idx]),
        test_images=nchw(images[test_idx]),
        test_labels=torch.as_tensor(labels[test_idx]),
        class_names=[str(d) for d in range(10)],
    )


# --------------------------------------------------------------------------- torchvision data sets


@dataclass
class TorchvisionOptions(DatasetOptions):
    root: Optional[str] = option(None, "the data set's folder (default $SSL_CLI_DATA/<name>, else data/<name>)")
    download: bool = option(False, "download into root where the network is reachable")


def _torchvision_call(name: str, root: Path, download: bool, layouts: str, make: Callable[[], object]):
    """Builds a torchvision data set, turning 'not found' into a one-line UserError."""
    if not download and not root.exists():
        raise UserError(f"dataset folder {root} does not exist; expected {layouts} "
                        f"(or set dataset.download=true where the network is reachable)")
    try:
        return make()
    except RuntimeError as e:  # torchvision raises RuntimeError("Dataset not found or corrupted...")
        raise UserError(f"{name} not found under {root}: expected {layouts} ({str(e).splitlines()[0]})") from None
    except OSError as e:  # no network while downloading, unreadable file, ...
        raise UserError(f"could not read or download {name} into {root}: {e}") from None


@DATASETS.register("mnist", TorchvisionOptions)
def load_mnist(o: TorchvisionOptions) -> ImageData:
    """MNIST through torchvision."""
    from torchvision import datasets

    layouts = "torchvision's MNIST/raw files"
    path = require_root(o.root, "mnist", layouts)
    train = _torchvision_call("MNIST", path, o.download, layouts, lambda: datasets.MNIST(str(path), True, download=o.download))
    test = _torchvision_call("MNIST", path, o.download, layouts, lambda: datasets.MNIST(str(path), False, download=o.download))
    return ImageData("mnist", nchw(train.data.numpy()), train.targets.long(), nchw(test.data.numpy()),
                     test.targets.long(), [str(d) for d in range(10)])


@dataclass
class CifarOptions(TorchvisionOptions, FolderOptions):
    pass


def _load_cifar(name: str, cls_name: str, o: CifarOptions) -> ImageData:
    layouts = f"torchvision's {name} python batches, or an image folder <root>/train/<class>/*.jpg (+ <root>/test/)"
    path = require_root(o.root, name, layouts)
    if (path / "train").is_dir():  # an ImageFolder copy such as ../shared/data/cifar10
        data = load_image_folder(str(path), o)
        data.name = name
        return data
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    train = _torchvision_call(name, path, o.download, layouts, lambda: cls(str(path), train=True, download=o.download))
    test = _torchvision_call(name, path, o.download, layouts, lambda: cls(str(path), train=False, download=o.download))
    return ImageData(name, nchw(train.data), torch.as_tensor(train.targets).long(), nchw(test.data),
                     torch.as_tensor(test.targets).long(), list(train.classes))


@DATASETS.register("cifar10", CifarOptions)
def load_cifar10(o: CifarOptions) -> ImageData:
    """CIFAR-10: torchvision's batches or an image-folder copy."""
    return _load_cifar("cifar10", "CIFAR10", o)


@DATASETS.register("cifar100", CifarOptions)
def load_cifar100(o: CifarOptions) -> ImageData:
    """CIFAR-100: torchvision's batches or an image-folder copy."""
    return _load_cifar("cifar100", "CIFAR100", o)


@DATASETS.register("svhn", TorchvisionOptions)
def load_svhn(o: TorchvisionOptions) -> ImageData:
    """SVHN through torchvision (train_32x32.mat, test_32x32.mat)."""
    from torchvision import datasets

    layouts = "torchvision's SVHN files train_32x32.mat and test_32x32.mat"
    path = require_root(o.root, "svhn", layouts)
    train = _torchvision_call("SVHN", path, o.download, layouts, lambda: datasets.SVHN(str(path), "train", download=o.download))
    test = _torchvision_call("SVHN", path, o.download, layouts, lambda: datasets.SVHN(str(path), "test", download=o.download))
    return ImageData("svhn", nchw(train.data), torch.as_tensor(train.labels).long(), nchw(test.data),
                     torch.as_tensor(test.labels).long(), [str(d) for d in range(10)])


@dataclass
class STL10Options(TorchvisionOptions):
    use_unlabeled_split: bool = option(True, "its 100k unlabeled images join the unlabeled pool")


@DATASETS.register("stl10", STL10Options)
def load_stl10(o: STL10Options) -> ImageData:
    """STL-10: 5k labeled train, 8k test and (as the unlabeled pool) its 100k unlabeled split."""
    from torchvision import datasets

    layouts = "torchvision's stl10_binary folder"
    path = require_root(o.root, "stl10", layouts)
    make = lambda split: _torchvision_call("STL10", path, o.download, layouts,  # noqa: E731
                                           lambda: datasets.STL10(str(path), split, download=o.download))
    train, test = make("train"), make("test")
    extra = nchw(make("unlabeled").data) if o.use_unlabeled_split else None
    return ImageData("stl10", nchw(train.data), torch.as_tensor(train.labels).long(), nchw(test.data),
                     torch.as_tensor(test.labels).long(), list(train.classes), extra_unlabeled=extra)

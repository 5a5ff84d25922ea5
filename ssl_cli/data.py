"""Data sets as in-memory uint8 tensors.

Every loader returns an `ImageData`: train and test images as uint8 [N, C, H, W] tensors with int64
labels. The runner moves these onto the training device once; augmentation then happens there in
batches. Decoding image folders is slow, so decoded arrays are cached on disk (`dataset.cache_dir`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ssl_cli.errors import UserError
from ssl_cli.registry import Registry

DATASETS: Registry[Callable[..., "ImageData"]] = Registry("dataset")



@dataclass
class ImageData:
    name: str
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    # Extra unlabeled images with no labels at all (STL-10's 100k split); uint8 [M, C, H, W] or None.
    extra_unlabeled: Optional[torch.Tensor] = None
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
        """Per-channel mean and std of the training images, in [0, 1] units."""
        if not isinstance(self.train_images, torch.Tensor):  # streamed from files (ssl_cli.stream): a sample
            return self.train_images.channel_stats()
        x = self.train_images[:20000].float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


def load_dataset(name: str, **options) -> ImageData:
    loader = DATASETS.get(name)
    allowed = [p for p in inspect.signature(loader).parameters]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"dataset={name} has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    data = loader(**options)
    if data.train_images.dtype != torch.uint8 or data.train_images.ndim != 4:
        raise AssertionError(f"loader for {name} must return uint8 [N, C, H, W] images")
    return data


def _nchw(array: np.ndarray) -> torch.Tensor:
    """Numpy images in NHW or NHWC layout -> contiguous uint8 NCHW tensor."""
    t = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.uint8)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def _held_out_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- synthetic and digits


@DATASETS.register("synthetic")
def load_synthetic(
    num_classes: int = 4,
    num_train: int = 256,
    num_test: int = 128,
    channels: int = 3,
    image_size: int = 16,
    seed: int = 0,
) -> ImageData:
    """Tiny, learnable images made in memory: each class is a coloured blob at its own position."""
    if num_classes < 2 or num_train < num_classes or num_test < 1 or image_size < 4:
        raise UserError("dataset=synthetic needs num_classes >= 2, num_train >= num_classes, num_test >= 1, image_size >= 4")
    g = torch.Generator().manual_seed(seed)
    n = num_train + num_test
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    angle = 2 * torch.pi * labels.float() / num_classes
    cy = image_size / 2 + image_size / 4 * torch.sin(angle) + torch.randn(n, generator=g)
    cx = image_size / 2 + image_size / 4 * torch.cos(angle) + torch.randn(n, generator=g)
    dist2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = torch.exp(-dist2 / (2 * (image_size / 8) ** 2))
    colour = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)
    images = blob[:, None] * colour + 0.15 * torch.rand(n, channels, image_size, image_size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(
        name="synthetic",
        train_images=images[:num_train].contiguous(),
        train_labels=labels[:num_train].long(),
        test_images=images[num_train:].contiguous(),
        test_labels=labels[num_train:].long(),
        class_names=[f"class_{i}" for i in range(num_classes)],
    )


@DATASETS.register("digits")
def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn, no download).

    There is no official test split, so a fixed stratified 20 % is held out (the same for every run).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if not 0 < test_fraction < 1:
        raise UserError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _held_out_split(labels, test_fraction, split_seed)
    return ImageData(
        name="digits",
        train_images=_nchw(images[train_idx]),
        train_labels=torch.as_tensor(labels[train_idx]),
        test_images=_nchw(images[test_idx]),
        test_labels=torch.as_tensor(labels[test_idx]),
        class_names=[str(d) for d in range(10)],
    )


# --------------------------------------------------------------------------- torchvision data sets


def _require_root(root: Optional[str], name: str, layouts: str) -> Path:
    if root in (None, ""):
        raise UserError(f"dataset={name} needs dataset.root (a folder holding {layouts})")
    return Path(os.path.expanduser(str(root)))


def _torchvision_call(name: str, root: Path, download: bool, layouts: str, make: Callable[[], object]):
    """Builds a torchvision data set, turning 'not found' into a one-line UserError."""
    if not download and not root.exists():
        raise UserError(
            f"dataset folder {root} does not exist; expected {layouts} "
            f"(or set dataset.download=true where the network is reachable)"
        )
    try:
        return make()
    except RuntimeError as e:  # torchvision raises RuntimeError("Dataset not found or corrupted...")
        raise UserError(f"{name} not found under {root}: expected {layouts} ({str(e).splitlines()[0]})") from None
    except OSError as e:  # no network while downloading, unreadable file, ...
        raise UserError(f"could not read or download {name} into {root}: {e}") from None


@DATASETS.register("mnist")
def load_mnist(root: Optional[str] = None, download: bool = False) -> ImageData:
    from torchvision import datasets

    layouts = "torchvision's MNIST/raw files"
    path = _require_root(root, "mnist", layouts)
    train = _torchvision_call("MNIST", path, download, layouts, lambda: datasets.MNIST(str(path), True, download=download))
    test = _torchvision_call("MNIST", path, download, layouts, lambda: datasets.MNIST(str(path), False, download=download))
    return ImageData("mnist", _nchw(train.data.numpy()), train.targets.long(), _nchw(test.data.numpy()),
                     test.targets.long(), [str(d) for d in range(10)])


def _load_cifar(name: str, cls_name: str, root: Optional[str], download: bool, cache_dir: Optional[str],
                bad_images: str) -> ImageData:
    layouts = f"torchvision's {name} python batches, or an image folder <root>/train/<class>/*.jpg (+ <root>/test/)"
    path = _require_root(root, name, layouts)
    if (path / "train").is_dir():  # an ImageFolder copy such as ../shared/data/cifar10
        data = load_image_folder(root=str(path), cache_dir=cache_dir, bad_images=bad_images)
        data.name = name
        return data
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    train = _torchvision_call(name, path, download, layouts, lambda: cls(str(path), train=True, download=download))
    test = _torchvision_call(name, path, download, layouts, lambda: cls(str(path), train=False, download=download))
    return ImageData(name, _nchw(train.data), torch.as_tensor(train.targets).long(), _nchw(test.data),
                     torch.as_tensor(test.targets).long(), list(train.classes))


@DATASETS.register("cifar10")
def load_cifar10(root: Optional[str] = None, download: bool = False, cache_dir: Optional[str] = None,
                 bad_images: str = "skip") -> ImageData:
    return _load_cifar("cifar10", "CIFAR10", root, download, cache_dir, bad_images)


@DATASETS.register("cifar100")
def load_cifar100(root: Optional[str] = None, download: bool = False, cache_dir: Optional[str] = None,
                  bad_images: str = "skip") -> ImageData:
    return _load_cifar("cifar100", "CIFAR100", root, download, cache_dir, bad_images)


@DATASETS.register("svhn")
def load_svhn(root: Optional[str] = None, download: bool = False) -> ImageData:
    from torchvision import datasets

    layouts = "torchvision's SVHN files train_32x32.mat and test_32x32.mat"
    path = _require_root(root, "svhn", layouts)
    train = _torchvision_call("SVHN", path, download, layouts, lambda: datasets.SVHN(str(path), "train", download=download))
    test = _torchvision_call("SVHN", path, download, layouts, lambda: datasets.SVHN(str(path), "test", download=download))
    return ImageData("svhn", _nchw(train.data), torch.as_tensor(train.labels).long(), _nchw(test.data),
                     torch.as_tensor(test.labels).long(), [str(d) for d in range(10)])


@DATASETS.register("stl10")
def load_stl10(root: Optional[str] = None, download: bool = False, use_unlabeled_split: bool = True,
               ) -> ImageData:
    """STL-10: 5k labeled train, 8k test and (as the unlabeled pool) its 100k unlabeled split."""
    from torchvision import datasets

    layouts = "torchvision's stl10_binary folder"
    path = _require_root(root, "stl10", layouts)
    train = _torchvision_call("STL10", path, download, layouts, lambda: datasets.STL10(str(path), "train", download=download))
    test = _torchvision_call("STL10", path, download, layouts, lambda: datasets.STL10(str(path), "test", download=download))
    extra = None
    if use_unlabeled_split:
        unl = _torchvision_call("STL10", path, download, layouts,
                                lambda: datasets.STL10(str(path), "unlabeled", download=download))
        extra = _nchw(unl.data)
    return ImageData("stl10", _nchw(train.data), torch.as_tensor(train.labels).long(), _nchw(test.data),
                     torch.as_tensor(test.labels).long(), list(train.classes), extra_unlabeled=extra)


# --------------------------------------------------------------------------- image folders


def _unreadable(e: OSError, path: Path) -> UserError:
    what = "permission denied" if isinstance(e, PermissionError) else (e.strerror or type(e).__name__)
    return UserError(f"cannot read {e.filename or path}: {what} (every folder and image under dataset.root "
                     f"must be readable by this user)")


def _class_names(split_dir: Path) -> List[str]:
    try:
        return sorted(d.name for d in split_dir.iterdir() if not d.name.startswith(".") and d.is_dir())
    except OSError as e:  # an unreadable folder, or one that vanished while we looked
        raise _unreadable(e, split_dir) from None


def _list_files(folder: Path) -> List[Path]:
    """Every non-hidden file under `folder`; an unreadable sub-folder is an error, not silently skipped."""
    files: List[Path] = []

    def fail(e: OSError):
        raise _unreadable(e, folder)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(p for p in files if p.is_file())


def _list_class_folder(split_dir: Path) -> Dict[str, List[Path]]:
    return {c: _list_files(split_dir / c) for c in _class_names(split_dir)}


def _decode_files(files: Sequence[Path], channels: Optional[int], size: Optional[Tuple[int, int]]) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
    """Decodes image files to uint8 CHW tensors; returns None in place of each unreadable file."""
    from PIL import Image, UnidentifiedImageError

    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    out: List[Optional[torch.Tensor]] = []
    bad: List[str] = []
    for path in files:
        try:
            with Image.open(path) as img:
                if mode is not None:
                    img = img.convert(mode)
                elif img.mode not in ("L", "RGB"):
                    img = img.convert("RGB")
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except PermissionError:
            raise UserError(f"cannot read {path}: permission denied") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            bad.append(str(path))
            out.append(None)
            continue
        tensor = torch.from_numpy(array.copy())
        out.append(tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous())
    return out, bad


def _cache_key(root: Path, files: Sequence[Path], image_size: Optional[Tuple[int, int]], channels) -> str:
    h = hashlib.sha1()
    h.update(f"{root.resolve()}|{image_size}|{channels}|v1".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSL_CLI_CACHE", Path.home() / ".cache" / "ssl-cli"))


IMAGE_FOLDER_LAYOUT = "<root>/train/<class>/<image> (and optionally <root>/test/<class>/<image>)"


def _image_folder_layout(root) -> Tuple[Path, Path, Optional[Path]]:
    """(root, root/train, root/test or None), or a one-line error saying what is missing."""
    path = _require_root(root, "imagefolder", IMAGE_FOLDER_LAYOUT)
    try:
        if not path.exists():
            raise UserError(f"dataset folder {path} does not exist; expected {IMAGE_FOLDER_LAYOUT}")
        if not path.is_dir():
            raise UserError(f"dataset.root={path} is a file, not a folder; expected {IMAGE_FOLDER_LAYOUT}")
        if not (path / "train").is_dir():
            raise UserError(f"no train/ folder in {path}; expected {IMAGE_FOLDER_LAYOUT}")
        return path, path / "train", path / "test" if (path / "test").is_dir() else None
    except OSError as e:  # e.g. a parent folder this user may not enter
        raise _unreadable(e, path) from None


def describe_image_folder(root, image_size=None, channels=None) -> Optional[dict]:
    """What a model trained on this folder looks like, without decoding it: number of classes, channels
    and image size (from the first readable image's header). None where that cannot be told cheaply."""
    try:
        path, train_dir, _ = _image_folder_layout(root)
        classes = _class_names(train_dir)
    except UserError:
        return None  # loading the folder will report what is wrong
    from PIL import Image

    shape = None
    for c in classes:
        for f in _list_files_quietly(train_dir / c):
            try:
                with Image.open(f) as img:
                    shape = (1 if img.mode == "L" else 3, img.size[1], img.size[0])
                break
            except Exception:  # unreadable files are skipped by the loader too
                continue
        if shape is not None:
            break
    if shape is None:
        return None
    in_channels = channels if channels in (1, 3) else shape[0]
    hw = [int(image_size), int(image_size)] if image_size else [shape[1], shape[2]]
    return {"num_classes": len(classes), "in_channels": in_channels, "image_size": hw}


def _list_files_quietly(folder: Path):
    try:
        yield from _list_files(folder)
    except UserError:
        return


@DATASETS.register("imagefolder")
def load_image_folder(
    root: Optional[str] = None,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    cache_dir: Optional[str] = None,
    bad_images: str = "skip",
    streaming: bool = False,
    num_workers: int = 2,
) -> ImageData:
    """Any `root/train/<class>/*` tree; `root/test/<class>/*` if present, else a seeded held-out split.

    Images are resized to `image_size` (square) when given, else all must share one size. With
    `streaming`, nothing is decoded here: the images stay in their files and `num_workers` DataLoader
    workers decode each step's batch during training (ssl_cli.stream).
    """
    path, train_dir, test_dir = _image_folder_layout(root)
    if bad_images not in ("error", "skip"):
        raise UserError(f"dataset.bad_images must be 'error' or 'skip', got {bad_images!r}")
    if channels not in (None, 1, 3):
        raise UserError(f"dataset.channels must be 1, 3 or null (as stored), got {channels!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"dataset.image_size must be a positive integer or null, got {image_size!r}")
    size = (int(image_size), int(image_size)) if image_size else None
    class_names = _class_names(train_dir)
    if not class_names:
        raise UserError(f"no class folders in {train_dir}; expected {IMAGE_FOLDER_LAYOUT}")
    if test_dir is not None:  # checked before any file is listed: a test-only class is a layout error
        extra = [c for c in _class_names(test_dir) if c not in class_names]
        if extra:
            raise UserError(f"class folder{'s' if len(extra) > 1 else ''} {', '.join(repr(c) for c in extra[:5])} "
                            f"{'are' if len(extra) > 1 else 'is'} in {test_dir} but not in {train_dir}; every "
                            f"class needs training images (classes in train/: {', '.join(class_names[:10])}"
                            f"{', ...' if len(class_names) > 10 else ''})")
    splits = {"train": _list_class_folder(train_dir)}
    if test_dir is not None:
        splits["test"] = _list_class_folder(test_dir)
    for c, files in splits["train"].items():
        if not files:
            raise UserError(f"class folder {train_dir / c} holds no images; every class needs training images "
                            f"(add images or remove the folder)")
    if streaming:
        from ssl_cli.stream import folder_image_data

        return folder_image_data(path, splits, class_names, channels, size, test_fraction, split_seed, num_workers)
    # Every file is decoded; a file that is not a readable image counts as bad (skipped or an error).
    all_files = [f for split in splits.values() for files in split.values() for f in files]

    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache_root / f"imagefolder-{_cache_key(path, all_files, size, channels)}.pt"
    payload = None
    try:
        payload = torch.load(cache_file, weights_only=True) if cache_file.is_file() else None
    except Exception:  # a damaged or unreadable cache is rebuilt, never trusted
        payload = None
    if payload is None:
        payload = _decode_splits(path, splits, class_names, channels, size, test_fraction, split_seed)
        _write_cache(cache_file, payload)
    bad = list(payload["bad_files"])
    if bad and bad_images == "error":
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"{len(bad)} unreadable image file(s) in {path}: {shown} "
                        f"(fix or remove them, or set dataset.bad_images=skip)")
    return _image_data_from_cache(payload, class_names)


def _decode_splits(path: Path, splits: Dict[str, Dict[str, List[Path]]], class_names: List[str], channels,
                   size, test_fraction: float, split_seed: int) -> dict:
    decoded: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    bad_all: List[str] = []
    for split, classes in splits.items():
        imgs, labels = [], []
        for c, files in classes.items():
            tensors, bad = _decode_files(files, channels, size)
            bad_all += bad
            good = [t for t in tensors if t is not None]
            if split == "train" and not good:
                raise UserError(f"class folder {path / split / c} holds no readable images "
                                f"({len(bad)} unreadable file(s), e.g. {bad[0]})")
            imgs += good
            labels += [class_names.index(c)] * len(good)
        if not imgs:
            raise UserError(f"no readable images in {path / split} ({len(bad_all)} unreadable)")
        shapes = {tuple(t.shape) for t in imgs}
        if len(shapes) > 1:
            raise UserError(f"images in {path / split} differ in size or channels ({sorted(shapes)[:3]} ...); "
                            f"set dataset.image_size and dataset.channels to resize them to one shape")
        decoded[split] = (torch.stack(imgs), torch.tensor(labels, dtype=torch.int64))

    if "test" not in decoded:
        x, y = decoded["train"]
        tr, te = _held_out_split(y.numpy(), test_fraction, split_seed)
        decoded = {"train": (x[tr], y[tr]), "test": (x[te], y[te])}
    elif decoded["test"][0].shape[1:] != decoded["train"][0].shape[1:]:
        raise UserError(f"test images in {path} have shape {tuple(decoded['test'][0].shape[1:])} but train images "
                        f"{tuple(decoded['train'][0].shape[1:])}; set dataset.image_size / dataset.channels")
    return {"train_images": decoded["train"][0], "train_labels": decoded["train"][1],
            "test_images": decoded["test"][0], "test_labels": decoded["test"][1], "bad_files": bad_all}


def _image_data_from_cache(payload: dict, class_names: List[str]) -> ImageData:
    return ImageData("imagefolder", payload["train_images"], payload["train_labels"], payload["test_images"],
                     payload["test_labels"], class_names, notes={"bad_files": list(payload.get("bad_files", []))})


def _write_cache(cache_file: Path, payload: dict) -> None:
    """Writes the decode cache atomically; a cache that cannot be written only costs a re-decode later."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, cache_file)
    except OSError:
        pass

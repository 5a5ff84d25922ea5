"""Image folders: `root/train/<class>/<image>` trees, decoded once and cached, or streamed from the files.

`dataset=imagefolder` reads any such tree; the image-folder copies of CIFAR (ssl_cli.data.datasets) come
through here too. Decoding is slow, so decoded arrays are cached on disk (`dataset.cache_dir`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import MISSING, option
from ssl_cli.data.base import DATASETS, DatasetOptions, ImageData, held_out_split, require_root
from ssl_cli.data.stream import FileImages




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


def list_files(folder) -> List[Path]:
    """Every non-hidden file under `folder`, sorted (the files an image folder is read from)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    return _list_files(folder)


def _list_class_folder(split_dir: Path) -> Dict[str, List[Path]]:
    return {c: _list_files(split_dir / c) for c in _class_names(split_dir)}


def _decode_files(files: Sequence[Path], channels: Optional[int], size: Optional[Tuple[int, int]]) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
    """Decodes image files to uint8 CHW tensors; returns None in place of each unreadable file."""
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
    path = require_root(root, "imagefolder", IMAGE_FOLDER_LAYOUT)
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


@dataclass
class FolderOptions(DatasetOptions):
    """Keys of every data set read from an image folder."""

    cache_dir: Optional[str] = option(None, "decoded image folders are cached here (default ~/.cache/ssl-cli "
                                            "or $SSL_CLI_CACHE)")
    bad_images: str = option("skip", "skip: leave unreadable files out (listed in the run directory); error: "
                                     "stop with the list", choices=("skip", "error"))


@dataclass
class ImageFolderOptions(FolderOptions):
    root: str = option(MISSING, "the folder: root/train/<class>/<image>, optionally root/test/<class>/<image>")
    image_size: Optional[int] = option(None, "resize to this square size (needed if sizes differ); null: as "
                                             "stored", low=1, high=4096)
    channels: Optional[int] = option(None, "1 or 3 to convert; null: as stored", choices=(None, 1, 3))
    test_fraction: float = option(0.2, "share held out as the test split when there is no root/test/",
                                  above=0, below=1)
    split_seed: int = option(0, "seed of that held-out split", low=0)
    streaming: bool = option(False, "true: nothing is decoded up front; DataLoader workers decode each "
                                    "step's batch from the files")
    num_workers: int = option(2, "streaming only: decode worker processes (0: in the training process)", low=0)


@DATASETS.register("imagefolder", ImageFolderOptions)
def load_imagefolder(o: ImageFolderOptions) -> ImageData:
    """Any folder tree root/train/<class>/<image>."""
    return load_image_folder(o.root, o, image_size=o.image_size, channels=o.channels, test_fraction=o.test_fraction,
                             split_seed=o.split_seed, streaming=o.streaming, num_workers=o.num_workers)


def load_image_folder(root: str, o: FolderOptions, image_size: Optional[int] = None, channels: Optional[int] = None,
                      test_fraction: float = 0.2, split_seed: int = 0, streaming: bool = False,
                      num_workers: int = 2) -> ImageData:
    """Any `root/train/<class>/*` tree; `root/test/<class>/*` if present, else a seeded held-out split.

    Images are resized to `image_size` (square) when given, else all must share one size. With
    `streaming`, nothing is decoded here: the images stay in their files and `num_workers` DataLoader
    workers decode each step's batch during training (ssl_cli.data.stream).
    """
    cache_dir, bad_images = o.cache_dir, o.bad_images
    path, train_dir, test_dir = _image_folder_layout(root)
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
        tr, te = held_out_split(y.numpy(), test_fraction, split_seed)
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


def folder_image_data(path: Path, splits: Dict[str, Dict[str, List[Path]]], class_names: List[str],
                      channels: Optional[int], size: Optional[Tuple[int, int]], test_fraction: float,
                      split_seed: int, num_workers: int):
    """The streaming counterpart of the image-folder loader: an ImageData whose images are FileImages."""
    listed = {}
    for split, classes in splits.items():
        files = [f for c in class_names for f in classes.get(c, [])]
        labels = [class_names.index(c) for c in class_names for _ in classes.get(c, [])]
        listed[split] = (np.array([os.fsencode(str(f)) for f in files]), np.array(labels, dtype=np.int64))
    if "test" not in listed:
        files, labels = listed["train"]
        tr, te = held_out_split(labels, test_fraction, split_seed)
        listed = {"train": (files[tr], labels[tr]), "test": (files[te], labels[te])}
    train_files = listed["train"][0]
    if len(listed["test"][0]) == 0:
        raise UserError(f"no test images in {path}: add root/test/<class>/ or raise dataset.test_fraction")
    first = os.fsdecode(train_files[0])
    try:
        with Image.open(first) as img:  # reads the header only
            mode, (width, height) = img.mode, img.size
    except Exception:
        raise UserError(f"cannot read {first}, the first training image (streaming takes the image shape "
                        f"from it; set dataset.image_size and dataset.channels, or remove the file)") from None
    ch = int(channels) if channels else (1 if mode == "L" else 3)  # as the in-memory path: L stays grey
    shape = tuple(size) if size else (height, width)
    make = lambda files: FileImages(files, ch, shape, resize=size is not None, num_workers=num_workers,  # noqa: E731
                                    root=str(path))
    return ImageData("imagefolder", make(train_files), torch.as_tensor(listed["train"][1]),
                     make(listed["test"][0]), torch.as_tensor(listed["test"][1]), class_names,
                     notes={"streaming": True, "bad_files": []})

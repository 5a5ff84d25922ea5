"""Image folders: `root/train/<class>/<image>` trees, decoded once and cached, or streamed from the files.

`dataset=imagefolder` reads any such tree; the image-folder copies of CIFAR (ssl_cli.data.datasets) come
through here too. Decoding is slow, so decoded arrays are cached on disk (`dataset.cache_dir`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import MISSING, option
from ssl_cli.data.base import DATASETS, DatasetOptions, ImageData, held_out_split, require_root
from ssl_cli.data.images import load_image, stored_channels
from ssl_cli.data.resize import RESIZE_POLICIES
from ssl_cli.data.stream import FileImages

log = logging.getLogger("ssl_cli")




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


def _decode_files(files: Sequence[Path], channels: Optional[int], size: Optional[int],
                  resize: str) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
    """Decodes image files to uint8 CHW tensors (ssl_cli.data.images); None in place of each unreadable file."""
    out: List[Optional[torch.Tensor]] = []
    bad: List[str] = []
    for path in files:
        try:
            array = load_image(path, size, resize, channels)
        except PermissionError:
            raise UserError(f"cannot read {path}: permission denied") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(str(path))
            out.append(None)
            continue
        out.append(torch.from_numpy(array))
    return out, bad


def _cache_key(listing: "Listing", size: Optional[int], channels, resize: str) -> str:
    """Names a decode: every file (path, size, mtime) with its split and label, and how it is decoded."""
    h = hashlib.sha1()
    h.update(f"{listing.root.resolve()}|{size}|{channels}|{resize}|v3".encode())
    for split, entries in listing.labeled_splits():
        for p, label in entries:
            st = p.stat()
            h.update(f"{split}|{p}|{label}|{st.st_size}|{int(st.st_mtime)}".encode())
    for p in listing.unlabeled:
        st = p.stat()
        h.update(f"unlabeled|{p}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSL_CLI_CACHE", Path.home() / ".cache" / "ssl-cli"))


IMAGE_FOLDER_LAYOUT = ("<root>/train/<class>/<image> (optionally <root>/unlabeled/..., <root>/val/<class>/ "
                       "and <root>/test/<class>/)")
VALIDATION_FOLDERS = ("val", "validation")


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
                    shape = (stored_channels(img.mode), img.size[1], img.size[0])
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
    """Keys of every data set read from image files."""

    cache_dir: Optional[str] = option(None, "decoded image folders are cached here (default ~/.cache/ssl-cli "
                                            "or $SSL_CLI_CACHE)")
    bad_images: str = option("skip", "skip: leave unreadable files out (listed in the run directory); error: "
                                     "stop with the list", choices=("skip", "error"))


@dataclass
class ListedImagesOptions(FolderOptions):
    """Keys of data sets whose images are the user's own files (dataset=imagefolder, dataset=csv)."""

    image_size: Optional[int] = option(None, "resize to this square size (needed if sizes differ); null: as "
                                             "stored", low=1, high=4096)
    resize: str = option("crop", "how images become image_size squares: crop (shorter side to image_size, "
                                 "then the centre), stretch (squash the whole image) or pad (longer side, "
                                 "black borders)", choices=RESIZE_POLICIES)
    channels: Optional[int] = option(None, "1 or 3 to convert; null: grey stays grey, everything else RGB",
                                     choices=(None, 1, 3))
    test_fraction: float = option(0.2, "share held out as the test split when no test split is given",
                                  above=0, below=1)
    split_seed: int = option(0, "seed of that held-out split", low=0)
    streaming: bool = option(False, "true: nothing is decoded up front; DataLoader workers decode each "
                                    "step's batch from the files")
    num_workers: int = option(2, "streaming only: decode worker processes (0: in the training process)", low=0)


@dataclass
class ImageFolderOptions(ListedImagesOptions):
    root: str = option(MISSING, "the folder: root/train/<class>/<image>; optionally root/unlabeled/ (any "
                                "depth, no classes), root/val/<class>/ (or validation/), root/test/<class>/")


Entries = List[Tuple[Path, int]]  # (file, class index)


@dataclass
class Listing:
    """Which files make which split, before anything is decoded (a folder tree or a CSV file gives one)."""

    root: Path  # named in messages, and part of the cache key
    class_names: List[str]
    train: Entries  # the labeled training images
    unlabeled: List[Path] = field(default_factory=list)  # no labels at all: they join the unlabeled pool
    validation: Optional[Entries] = None  # None: split off the training images by dataset.num_validation
    test: Optional[Entries] = None  # None: a seeded held-out share of the training images
    sources: Dict[str, str] = field(default_factory=dict)  # split -> where its files came from, for the log

    def labeled_splits(self) -> List[Tuple[str, Entries]]:
        return [(name, entries) for name, entries in (("train", self.train), ("validation", self.validation),
                                                      ("test", self.test)) if entries is not None]


@DATASETS.register("imagefolder", ImageFolderOptions)
def load_imagefolder(o: ImageFolderOptions) -> ImageData:
    """Any folder tree root/train/<class>/<image>, with optional unlabeled/, val/ and test/ folders."""
    return load_listing(list_image_folder(o.root), o, o)


def load_image_folder(root: str, o: FolderOptions) -> ImageData:
    """An image-folder copy of a known data set (CIFAR): its own size, as stored; train/ and test/."""
    return load_listing(list_image_folder(root), o, ListedImagesOptions())


def _labeled_folder(split_dir: Path, class_names: List[str], train_dir: Path) -> Entries:
    extra = [c for c in _class_names(split_dir) if c not in class_names]
    if extra:  # checked before any file is listed: a class the training images lack is a layout error
        raise UserError(f"class folder{'s' if len(extra) > 1 else ''} {', '.join(repr(c) for c in extra[:5])} "
                        f"{'are' if len(extra) > 1 else 'is'} in {split_dir} but not in {train_dir}; every "
                        f"class needs training images (classes in train/: {', '.join(class_names[:10])}"
                        f"{', ...' if len(class_names) > 10 else ''})")
    files = _list_class_folder(split_dir)
    return [(f, class_names.index(c)) for c in class_names for f in files.get(c, [])]


def list_image_folder(root) -> Listing:
    """The files of root/train/<class>/, root/unlabeled/ (any depth), root/val/ or validation/, root/test/."""
    path, train_dir, test_dir = _image_folder_layout(root)
    class_names = _class_names(train_dir)
    if not class_names:
        raise UserError(f"no class folders in {train_dir}; expected {IMAGE_FOLDER_LAYOUT}")
    val_dirs = [path / v for v in VALIDATION_FOLDERS if (path / v).is_dir()]
    if len(val_dirs) > 1:
        raise UserError(f"both {val_dirs[0]} and {val_dirs[1]} exist; keep one as the validation split")
    listing = Listing(path, class_names, _labeled_folder(train_dir, class_names, train_dir))
    listing.sources["train"] = f"{train_dir}/"
    for c, files in _list_class_folder(train_dir).items():
        if not files:
            raise UserError(f"class folder {train_dir / c} holds no images; every class needs training images "
                            f"(add images or remove the folder)")
    if (path / "unlabeled").is_dir():
        listing.unlabeled = _list_files(path / "unlabeled")
        listing.sources["unlabeled"] = f"{path / 'unlabeled'}/"
    if val_dirs:
        listing.validation = _labeled_folder(val_dirs[0], class_names, train_dir)
        listing.sources["validation"] = f"{val_dirs[0]}/"
    if test_dir is not None:
        listing.test = _labeled_folder(test_dir, class_names, train_dir)
        listing.sources["test"] = f"{test_dir}/"
    return listing


def _log_sources(listing: Listing, num_validation: int, test_fraction: float) -> None:
    s = listing.sources
    parts = [f"labeled training images from {s['train']} ({len(listing.train)} files, "
             f"{len(listing.class_names)} classes)"]
    if listing.unlabeled:
        parts.append(f"unlabeled pool += {s['unlabeled']} ({len(listing.unlabeled)} files)")
    parts.append(f"validation split from {s['validation']} ({len(listing.validation)} files)"
                 if listing.validation is not None else
                 f"validation split: {num_validation} of the training images" if num_validation else
                 "no validation split")
    parts.append(f"test split from {s['test']} ({len(listing.test)} files)" if listing.test is not None else
                 f"test split: {test_fraction:.0%} of the training images held out (no test split given)")
    log.info("dataset: %s", "; ".join(parts))


def load_listing(listing: Listing, o: FolderOptions, decode: ListedImagesOptions) -> ImageData:
    """The images of `listing` as an ImageData: decoded once and cached, or (decode.streaming) left in their
    files for DataLoader workers. Images are resized to `decode.image_size` squares by `decode.resize`
    when given, else all must share one size."""
    if listing.validation is not None and o.num_validation:
        raise UserError(f"dataset.num_validation={o.num_validation}, but {listing.sources['validation']} is "
                        f"already the validation split; set dataset.num_validation=0 or remove that split")
    counts = np.bincount([label for _, label in listing.train], minlength=len(listing.class_names))
    if (counts == 0).any():
        missing = [listing.class_names[c] for c in np.flatnonzero(counts == 0)]
        raise UserError(f"class{'es' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing[:5])} "
                        f"{'have' if len(missing) > 1 else 'has'} no labeled image in {listing.sources['train']}; "
                        f"every class needs at least one")
    _log_sources(listing, o.num_validation, decode.test_fraction)
    if decode.streaming:
        return streamed_image_data(listing, decode)
    cache_root = Path(o.cache_dir).expanduser() if o.cache_dir else default_cache_dir()
    cache_file = cache_root / f"images-{_cache_key(listing, decode.image_size, decode.channels, decode.resize)}.pt"
    payload = None
    try:
        payload = torch.load(cache_file, weights_only=True) if cache_file.is_file() else None
    except Exception:  # a damaged or unreadable cache is rebuilt, never trusted
        payload = None
    if payload is None:
        payload = _decode_listing(listing, decode)
        _write_cache(cache_file, payload)
    bad = list(payload["bad_files"])
    if bad and o.bad_images == "error":
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"{len(bad)} unreadable image file(s) in {listing.root}: {shown} "
                        f"(fix or remove them, or set dataset.bad_images=skip)")
    return ImageData("imagefolder", payload["train_images"], payload["train_labels"], payload["test_images"],
                     payload["test_labels"], list(listing.class_names), extra_unlabeled=payload["unlabeled_images"],
                     validation_images=payload["validation_images"], validation_labels=payload["validation_labels"],
                     notes={"bad_files": bad})


def _decode_entries(files: Sequence[Path], labels: Sequence[int], d: ListedImagesOptions, where: str,
                    bad_all: List[str]) -> Tuple[List[torch.Tensor], List[int]]:
    tensors, bad = _decode_files(files, d.channels, d.image_size, d.resize)
    bad_all += bad
    kept = [k for k, t in enumerate(tensors) if t is not None]
    if not kept:
        raise UserError(f"no readable images in {where} ({len(bad)} unreadable, e.g. {bad[0]})" if bad else
                        f"no images in {where}")
    return [tensors[k] for k in kept], [labels[k] for k in kept]


def _stack(images: List[torch.Tensor], labels: List[int], channels: int, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    # Grey images among colour ones (channels=null) become RGB as PIL would make them: the grey repeated.
    images = [t.expand(channels, -1, -1) if t.shape[0] != channels else t for t in images]
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise UserError(f"images in {where} differ in size ({sorted(shapes)[:3]} ...); set dataset.image_size "
                        f"to resize them to one square size (by dataset.resize)")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _decode_listing(listing: Listing, d: ListedImagesOptions) -> dict:
    bad_all: List[str] = []
    listed = [(split, [f for f, _ in entries], [c for _, c in entries]) for split, entries in listing.labeled_splits()]
    if listing.unlabeled:
        listed.append(("unlabeled", listing.unlabeled, [-1] * len(listing.unlabeled)))
    raw: Dict[str, Tuple[List[torch.Tensor], List[int]]] = {}
    for split, files, labels in listed:
        where = listing.sources.get(split, str(listing.root))
        raw[split] = _decode_entries(files, labels, d, where, bad_all)
        if split == "train":  # every class keeps at least one readable labeled image
            counts = np.bincount(raw[split][1], minlength=len(listing.class_names))
            for c in np.flatnonzero(counts == 0).tolist():
                raise UserError(f"class {listing.class_names[c]!r} has no readable labeled image in {where} "
                                f"(its files are unreadable: see {', '.join(bad_all[:2])})")
    # channels=null: grey stays grey only if every image is grey
    channels = d.channels or max(t.shape[0] for images, _ in raw.values() for t in images)
    decoded = {split: _stack(*raw[split], channels, listing.sources.get(split, str(listing.root))) for split in raw}
    shape = decoded["train"][0].shape[1:]
    for split, (x, _) in decoded.items():
        if x.shape[1:] != shape:
            raise UserError(f"{split} images in {listing.root} have shape {tuple(x.shape[1:])} but train images "
                            f"{tuple(shape)}; set dataset.image_size to resize every image to one size")
    if "test" not in decoded:
        x, y = decoded["train"]
        tr, te = held_out_split(y.numpy(), d.test_fraction, d.split_seed)
        decoded["train"], decoded["test"] = (x[tr], y[tr]), (x[te], y[te])
    validation = decoded.get("validation", (None, None))
    return {"train_images": decoded["train"][0], "train_labels": decoded["train"][1],
            "test_images": decoded["test"][0], "test_labels": decoded["test"][1],
            "validation_images": validation[0], "validation_labels": validation[1],
            "unlabeled_images": decoded["unlabeled"][0] if "unlabeled" in decoded else None,
            "bad_files": bad_all}


def _write_cache(cache_file: Path, payload: dict) -> None:
    """Writes the decode cache atomically; a cache that cannot be written only costs a re-decode later."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, cache_file)
    except OSError:
        pass


def _file_array(files: Sequence[Path]) -> np.ndarray:
    return np.array([os.fsencode(str(f)) for f in files])


def streamed_image_data(listing: Listing, d: ListedImagesOptions) -> ImageData:
    """The streaming counterpart of the in-memory loader: an ImageData whose images are FileImages."""
    listed = {split: (_file_array([f for f, _ in entries]), np.array([c for _, c in entries], dtype=np.int64))
              for split, entries in listing.labeled_splits()}
    if "test" not in listed:
        files, labels = listed["train"]
        tr, te = held_out_split(labels, d.test_fraction, d.split_seed)
        listed["train"], listed["test"] = (files[tr], labels[tr]), (files[te], labels[te])
    if len(listed["test"][0]) == 0:
        raise UserError(f"no test images in {listing.root}: add a test split or raise dataset.test_fraction")
    first = os.fsdecode(listed["train"][0][0])
    try:  # the shape every image must have (or is resized to): the first training image's, decoded
        ch, height, width = load_image(first, d.image_size, d.resize, d.channels).shape
    except Exception:
        raise UserError(f"cannot read {first}, the first training image (streaming takes the image shape "
                        f"from it; remove the file, or set dataset.streaming=false, which skips unreadable "
                        f"files)") from None
    size = d.image_size
    make = lambda files: FileImages(files, ch, (height, width), resize=size is not None,  # noqa: E731
                                    num_workers=d.num_workers, root=str(listing.root), policy=d.resize)
    validation = listed.get("validation")
    return ImageData("imagefolder", make(listed["train"][0]), torch.as_tensor(listed["train"][1]),
                     make(listed["test"][0]), torch.as_tensor(listed["test"][1]), list(listing.class_names),
                     extra_unlabeled=make(_file_array(listing.unlabeled)) if listing.unlabeled else None,
                     validation_images=make(validation[0]) if validation else None,
                     validation_labels=torch.as_tensor(validation[1]) if validation else None,
                     notes={"streaming": True, "bad_files": []})

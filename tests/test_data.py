"""Data loaders: shapes, the fixed test split, image folders, the decode cache and clear errors."""

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import defaults, from_config
from ssl_cli.data import DATASETS
from ssl_cli.data import load_dataset as load_with_options


def load_dataset(name, **options):
    """Data set `name` loaded with its declaration's defaults and `options` on top, as a config would give them."""
    cls = DATASETS.options(name)
    return load_with_options(name, from_config(cls, {**defaults(cls), **options}, f"dataset={name}"))


def test_digits_is_real_and_fixed():
    a = load_dataset("digits", test_fraction=0.2, split_seed=0)
    b = load_dataset("digits", test_fraction=0.2, split_seed=0)
    assert a.train_images.shape == (1438, 1, 8, 8) and a.test_images.shape == (359, 1, 8, 8)
    assert a.train_images.dtype == torch.uint8 and int(a.train_images.max()) == 255
    assert torch.equal(a.test_labels, b.test_labels)
    assert np.bincount(a.test_labels.numpy()).min() >= 34  # stratified: ~36 per class


def test_synthetic_shapes():
    d = load_dataset("synthetic", num_classes=3, num_train=30, num_test=9, channels=1, image_size=10, seed=0)
    assert d.train_images.shape == (30, 1, 10, 10) and d.num_classes == 3 and d.test_images.shape[0] == 9


def test_image_folder_with_test_split(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=6, size=10)
    d = load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"))
    assert d.class_names == ["cat", "dog", "frog"]
    assert d.train_images.shape == (18, 3, 10, 10) and d.test_images.shape == (6, 3, 10, 10)
    assert sorted(d.train_labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_image_folder_without_test_split_holds_out(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=10, size=8, test=False)
    d = load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), test_fraction=0.2)
    assert d.train_images.shape[0] == 24 and d.test_images.shape[0] == 6


def test_image_folder_cache_is_used(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=4, size=8)
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", root=str(root), cache_dir=str(cache))
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    # Alter the cached labels: a second load must come from the cache, not decode again.
    torch.save({**torch.load(files[0], weights_only=True), "train_labels": first.train_labels * 0}, files[0])
    second = load_dataset("imagefolder", root=str(root), cache_dir=str(cache))
    assert int(second.train_labels.sum()) == 0


def test_image_folder_resize_and_grey(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=3, size=12)
    d = load_dataset("imagefolder", root=str(root), image_size=8, channels=1, cache_dir=str(tmp_path / "c"))
    assert d.train_images.shape == (9, 1, 8, 8)


def test_cifar10_accepts_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "cifar", per_class=3, size=8)
    d = load_dataset("cifar10", root=str(root), cache_dir=str(tmp_path / "c"))
    assert d.name == "cifar10" and d.num_classes == 3


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder"])
def test_missing_folder_names_path_and_layouts(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as info:
        load_dataset(name, root=str(missing))
    msg = str(info.value)
    assert str(missing) in msg and "expected" in msg and "\n" not in msg


def test_empty_image_folder(tmp_path):
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    (tmp_path / "f" / "train" / "b").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        load_dataset("imagefolder", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))


def test_unreadable_image_errors_or_is_skipped(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=4, size=8)
    bad = root / "train" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="1 unreadable image file.*broken.png"):
        load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), bad_images="error")
    # The cache remembers the bad file: error mode still refuses, skip mode loads the rest.
    with pytest.raises(UserError, match="broken.png"):
        load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), bad_images="error")
    d = load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "c"))
    assert d.train_images.shape[0] == 12 and any("broken.png" in f for f in d.notes["bad_files"])


def test_unknown_loader_option():
    with pytest.raises(UserError, match="has no option colour"):
        load_dataset("digits", colour=3)


def test_every_registered_dataset_has_a_config():
    from pathlib import Path

    import ssl_cli.configs

    yamls = {p.stem for p in (Path(ssl_cli.configs.__file__).parent / "dataset").glob("*.yaml")}
    assert set(DATASETS.names()) == yamls


def test_describe_image_folder_reads_headers_only(tmp_path):
    from ssl_cli.data.folders import describe_image_folder

    root = write_image_folder(tmp_path / "f", classes=("a", "b", "c", "d"), per_class=2, size=10)
    assert describe_image_folder(str(root)) == {"num_classes": 4, "in_channels": 3, "image_size": [10, 10]}
    assert describe_image_folder(str(root), image_size=16, channels=1) == \
        {"num_classes": 4, "in_channels": 1, "image_size": [16, 16]}
    assert describe_image_folder(str(tmp_path / "missing")) is None


def test_image_folder_layout_errors_name_the_folder(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=2, size=8)
    (root / "test" / "bird").mkdir()
    with pytest.raises(UserError, match=r"'bird' is in .*test but not in .*train"):
        load_dataset("imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        load_dataset("imagefolder", root=str(afile))

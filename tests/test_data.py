"""Data loaders: shapes, the fixed test split, image folders, the decode cache and clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import defaults, from_config
from ssl_cli.data import DATASETS
from ssl_cli.data import load_dataset as load_with_options
from ssl_cli.data.images import load_image
from ssl_cli.data.resize import resize_images, resize_plan


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


# --------------------------------------------------------------------------- one resize policy, two paths


def test_resize_plan_geometry_by_hand():
    # crop: the centred region of the target's shape, cut at whole pixels, scaled to the target
    assert resize_plan(20, 40, (10, 10), "crop") == ((0, 10, 20, 20), (10, 10), (0, 0), (10, 10))
    assert resize_plan(15, 17, (10, 10), "crop").box == (0, 1, 15, 15)  # (17 - 15) // 2 = 1 column off the left
    assert resize_plan(20, 20, (10, 20), "crop").box == (5, 0, 10, 20)  # a wide target from a square
    # stretch: all of it, to the target
    assert resize_plan(20, 40, (10, 10), "stretch") == ((0, 0, 20, 40), (10, 10), (0, 0), (10, 10))
    # pad: the longer side fits (40 -> 10: x 0.25), the shorter rounded (21 x 0.25 = 5.25 -> 5), centred
    assert resize_plan(21, 40, (10, 10), "pad") == ((0, 0, 21, 40), (5, 10), (2, 0), (10, 10))
    with pytest.raises(ValueError, match="crop, stretch, pad"):
        resize_plan(20, 40, (10, 10), "fit")


def _test_card(height: int, width: int) -> np.ndarray:
    """A photo-like RGB array: smooth gradients, noise, and a white block with sharp edges."""
    y, x = np.mgrid[0:height, 0:width]
    grey = np.sin(x / 3.0) * 60 + np.cos(y / 5.0) * 60 + 128 + np.random.default_rng(0).integers(0, 40, (height, width))
    card = np.stack([grey, grey[::-1], 255 - grey], -1).clip(0, 255).astype(np.uint8)
    card[height // 3:height // 2, width // 4:width // 2] = 255
    return card


@pytest.mark.parametrize("policy", ["crop", "stretch", "pad"])
@pytest.mark.parametrize("height,width,size", [(40, 61, 32), (61, 23, 16), (30, 50, 64)],
                         ids=["wide-down", "tall-down", "wide-up"])
def test_decoding_a_file_and_resizing_the_tensor_in_memory_give_the_same_pixels(policy, height, width, size,
                                                                                tmp_path):
    """load_image (PIL, folders, streaming and predict) and resize_images (backbone.image_size on in-memory
    data) follow one plan: same crop box and offsets, antialiased bilinear on both, so at most a grey
    level or two apart (the libraries' fixed-point rounding)."""
    Image.fromarray(_test_card(height, width)).save(tmp_path / "card.png")
    decoded = load_image(tmp_path / "card.png", size, policy).astype(int)
    stored = torch.from_numpy(load_image(tmp_path / "card.png"))  # as stored: what an in-memory data set holds
    in_memory = resize_images(stored[None], (size, size), policy)[0].numpy().astype(int)
    assert decoded.shape == in_memory.shape == (3, size, size)
    diff = np.abs(decoded - in_memory)
    assert diff.max() <= 2 and diff.mean() < 0.25, (diff.max(), diff.mean())
    if policy == "pad":  # both leave the same black borders
        assert np.array_equal(decoded.sum(axis=0) == 0, in_memory.sum(axis=0) == 0)

"""Data as users have it (issue 12): every image mode, EXIF rotation, resize policies, unlabeled/, val/ and
test/ folders, dataset=csv, and a one-line message for each kind of bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli, write_image_folder
from ssl_cli.core.options import defaults, from_config
from ssl_cli.data import DATASETS
from ssl_cli.data import load_dataset as load_with_options
from ssl_cli.data.images import load_image
from ssl_cli.engine.trainer import RunningMetrics

RUN = ["method=fixmatch", "method.unlabeled_ratio=1", "trainer.max_steps=3", "trainer.eval_every=3",
       "trainer.checkpoint_every=3", "trainer.log_every=1", "trainer.batch_size=4", "trainer.device=cpu",
       "trainer.progress_bar=false", "trainer.num_threads=1", "backbone=cnn", "dataset.image_size=12"]


def load_dataset(name, **options):
    """Data set `name` with its declaration's defaults and `options` on top, as a config gives them."""
    cls = DATASETS.options(name)
    return load_with_options(name, from_config(cls, {**defaults(cls), **options}, f"dataset={name}"))


# --------------------------------------------------------------------------- one decoder, every mode


def test_grey_modes_stay_one_channel_and_colour_modes_become_rgb(tmp_path):
    Image.new("L", (5, 4), 90).save(tmp_path / "l.png")
    Image.new("RGB", (5, 4), (10, 20, 30)).save(tmp_path / "rgb.png")
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red in CMYK
    assert load_image(tmp_path / "l.png").shape == (1, 4, 5)
    assert load_image(tmp_path / "l.png", channels=3).shape == (3, 4, 5)
    assert load_image(tmp_path / "rgb.png", channels=1).shape == (1, 4, 5)
    red = load_image(tmp_path / "cmyk.jpg")[:, 2, 2].astype(int)
    assert red.shape == (3,) and red[0] > 200 and red[1] < 50 and red[2] < 50


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, opaque in the left half, transparent in the right
    rgba[:, :2, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png")
    assert x[:, 0, 0].tolist() == [255, 0, 0] and x[:, 0, 3].tolist() == [255, 255, 255]
    la = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 0, np.uint8)], axis=-1)  # black, transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").tolist() == np.full((1, 4, 4), 255).tolist()


def test_palette_images_and_their_transparency(tmp_path):
    p = Image.new("P", (3, 3), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # entry 1 is blue
    p.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[:, 1, 1].tolist() == [0, 0, 255]
    p.save(tmp_path / "pt.png", transparency=1)  # blue is the transparent entry: shown white
    assert load_image(tmp_path / "pt.png")[:, 1, 1].tolist() == [255, 255, 255]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert load_image(tmp_path / "deep.png").tolist() == [[[0, 100, 255]]]


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 30, 3), dtype=np.uint8)
    img[:, :5] = 255  # a white band on the left of the stored (landscape) pixels
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    pil.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "photo.jpg")
    assert x.shape == (3, 30, 10)  # upright: portrait
    assert x[:, :5, :].mean() > 200 and x[:, -5:, :].mean() < 50  # the band is now at the top


def test_resize_policies(tmp_path):
    img = np.zeros((20, 40), dtype=np.uint8)
    img[:, :8] = 255  # white at the left edge, outside the centre square (and its filter support)
    Image.fromarray(img, "L").save(tmp_path / "wide.png")
    crop = load_image(tmp_path / "wide.png", 10, "crop")
    stretch = load_image(tmp_path / "wide.png", 10, "stretch")
    pad = load_image(tmp_path / "wide.png", 10, "pad")
    assert crop.shape == stretch.shape == pad.shape == (1, 10, 10)
    assert crop.max() == 0  # shorter side to 10, then the centre: the left band is cut away
    assert stretch[0, :, :2].min() > 200  # squashed: the band stays, narrower
    assert pad[0, :2].max() == pad[0, 7:].max() == 0 and pad[0, 2:7, :1].min() > 200  # black above and below


def test_load_image_takes_pil_images():
    pil = Image.new("RGB", (16, 8), (1, 2, 3))
    assert load_image(pil, 4).shape == (3, 4, 4)


# --------------------------------------------------------------------------- folders as users have them


def _grey_png(path: Path, value: int, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _full_folder(tmp_path, val_name="val") -> Path:
    root = write_image_folder(tmp_path / "f", per_class=6, size=12)
    for split, n in ((val_name, 3),):
        small = write_image_folder(tmp_path / f"tmp_{split}", per_class=n, size=12, test=False, seed=1)
        (small / "train").rename(root / split)
    rng = np.random.default_rng(3)
    for i in range(10):  # nested, mixed sizes and modes: no classes, no labels
        sub = root / "unlabeled" / ("a/b" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = (12 + 4 * (i % 3), 12)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
            ["RGB", "L", "P"][i % 3]).save(sub / f"u{i}.png")
    return root


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_unlabeled_val_and_test_folders_become_their_splits(tmp_path, caplog, val_name):
    root = _full_folder(tmp_path, val_name)
    with caplog.at_level(logging.INFO, logger="ssl_cli"):
        d = load_dataset("imagefolder", root=str(root), image_size=12, cache_dir=str(tmp_path / "c"), num_validation=0)
    assert d.train_images.shape == (18, 3, 12, 12) and d.test_images.shape[0] == 6
    assert d.extra_unlabeled.shape == (10, 3, 12, 12)
    assert d.validation_images.shape == (9, 3, 12, 12) and sorted(d.validation_labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    said = caplog.text
    for folder in ("train/", "unlabeled/", f"{val_name}/", "test/"):
        assert f"{root / folder[:-1]}/" in said, said


def test_streaming_gives_the_same_pixels_as_in_memory(tmp_path):
    root = _full_folder(tmp_path)
    args = dict(root=str(root), image_size=12, cache_dir=str(tmp_path / "c"), num_workers=0)
    memory, stream = load_dataset("imagefolder", **args), load_dataset("imagefolder", streaming=True, **args)
    assert torch.equal(stream.extra_unlabeled[:], memory.extra_unlabeled)
    assert torch.equal(stream.validation_images[:], memory.validation_images)
    assert torch.equal(stream.train_images[:], memory.train_images)
    joined = stream.train_images.cat(stream.extra_unlabeled)
    assert torch.equal(joined[:], torch.cat([memory.train_images, memory.extra_unlabeled]))


@pytest.mark.parametrize("streaming", [False, True])
def test_training_on_real_unlabeled_and_val_folders(tmp_path, streaming):
    root = _full_folder(tmp_path)
    run_dir = tmp_path / "run"
    code, _, err = run_cli([*RUN, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6",
                            f"dataset.streaming={str(streaming).lower()}", "dataset.num_workers=0",
                            f"dataset.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert code == 0, err
    split = json.loads((run_dir / "labeled_indices.json").read_text())
    assert split["validation"] == list(range(18, 27))  # val/ follows the 18 training images
    assert split["num_train"] == 27 and max(split["labeled"]) < 18
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "val/accuracy" in summary["final"]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        assert "NaN" not in line, line


def test_pseudo_label_accuracy_counts_only_known_labels():
    m = RunningMetrics()
    m.add({"pseudo_label_acc": (torch.tensor(0.0), torch.tensor(0.0)), "loss": torch.tensor(2.0)})
    assert m.compute() == {"loss": 2.0}  # nothing with a known label was confident: no figure, not NaN
    m.add({"pseudo_label_acc": (torch.tensor(3.0), torch.tensor(4.0))})
    assert m.compute()["pseudo_label_acc"] == 0.75


# --------------------------------------------------------------------------- dataset=csv


def _csv_folder(tmp_path) -> Path:
    root = tmp_path / "shots"
    for i in range(4):
        _grey_png(root / "img" / f"a{i}.png", 20)
        _grey_png(root / "img" / f"b{i}.png", 220)
        _grey_png(root / "img" / f"u{i}.png", 120)
    rows = ["path,label"] + [f"img/a{i}.png,a" for i in range(3)] + [f"img/b{i}.png,b" for i in range(3)]
    rows += [f"img/u{i}.png," for i in range(4)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "test.csv").write_text("img/a3.png,a\nimg/b3.png,b\n")
    return root


def test_csv_rows_with_and_without_labels(tmp_path):
    root = _csv_folder(tmp_path)
    d = load_dataset("csv", path=str(root / "labels.csv"), test_csv=str(root / "test.csv"),
                     cache_dir=str(tmp_path / "c"), classes=["b", "a"])
    assert d.name == "csv" and d.class_names == ["b", "a"]
    assert d.train_images.shape == (6, 1, 12, 12) and d.extra_unlabeled.shape == (4, 1, 12, 12)
    assert d.test_labels.tolist() == [1, 0]
    bright = d.train_images.float().mean(dim=(1, 2, 3)) > 128
    assert torch.equal(bright, d.train_labels == 0)  # class "b" (bright) is index 0, as classes= says


def test_training_from_a_csv(tmp_path):
    root = _csv_folder(tmp_path)
    code, _, err = run_cli([*RUN, "dataset=csv", f"dataset.path={root / 'labels.csv'}", "dataset.num_labels=4",
                            f"dataset.test_csv={root / 'test.csv'}", f"dataset.cache_dir={tmp_path / 'c'}",
                            f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


# --------------------------------------------------------------------------- bad input: one line naming it


def _refused(tmp_path, *overrides):
    args = [*RUN, f"dataset.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    code, _, err = run_cli(args, tmp_path)
    return code, err


def test_csv_listed_file_missing(tmp_path):
    root = _csv_folder(tmp_path)
    (root / "img" / "b1.png").unlink()
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}")
    assert_one_line_error(code, err, f"{root / 'labels.csv'}:6", str(root / "img" / "b1.png"), "does not exist")


def test_csv_unknown_label(tmp_path):
    root = _csv_folder(tmp_path)
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}", "dataset.classes=[a,c]")
    assert_one_line_error(code, err, f"{root / 'labels.csv'}:5", "unknown label 'b'", "classes: a, c")


def test_csv_unknown_label_in_the_test_csv(tmp_path):
    root = _csv_folder(tmp_path)
    (root / "test.csv").write_text("img/a3.png,a\nimg/b3.png,zebra\n")
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}",
                         f"dataset.test_csv={root / 'test.csv'}")
    assert_one_line_error(code, err, f"{root / 'test.csv'}:2", "unknown label 'zebra'")


def test_csv_duplicate_paths(tmp_path):
    root = _csv_folder(tmp_path)
    with open(root / "labels.csv", "a") as f:
        f.write("./img/a0.png,b\n")  # the same file, spelled differently
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}")
    assert_one_line_error(code, err, f"{root / 'labels.csv'}:12", "listed twice", f"{root / 'labels.csv'}:2")


def test_csv_file_in_two_splits(tmp_path):
    root = _csv_folder(tmp_path)
    (root / "test.csv").write_text("img/a0.png,a\n")
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}",
                         f"dataset.test_csv={root / 'test.csv'}")
    assert_one_line_error(code, err, f"{root / 'test.csv'}:1", "listed twice")


def test_csv_class_with_no_labeled_image(tmp_path):
    root = _csv_folder(tmp_path)
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={root / 'labels.csv'}", "dataset.classes=[a,b,c]")
    assert_one_line_error(code, err, "class 'c' has no labeled image", str(root / "labels.csv"))


def test_csv_missing_file_option(tmp_path):
    code, err = _refused(tmp_path, "dataset=csv", f"dataset.path={tmp_path / 'nope.csv'}")
    assert_one_line_error(code, err, "dataset.path", str(tmp_path / "nope.csv"))


def test_folder_class_whose_images_are_all_corrupt(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=3, size=12)
    for f in (root / "train" / "dog").iterdir():
        f.write_bytes(b"not an image")
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=3")
    assert_one_line_error(code, err, "class 'dog' has no readable labeled image", str(root / "train"))


def test_corrupt_files_are_skipped_and_listed(tmp_path):
    root = _full_folder(tmp_path)
    (root / "unlabeled" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "train" / "cat" / "broken.png").write_bytes(b"nope")
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6")
    assert code == 0, err
    listed = (tmp_path / "run" / "bad_images.txt").read_text().split()
    assert sorted(listed) == sorted([str(root / "unlabeled" / "broken.jpg"), str(root / "train" / "cat" / "broken.png")])


def test_val_folder_together_with_num_validation(tmp_path):
    root = _full_folder(tmp_path)
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6",
                         "dataset.num_validation=3")
    assert_one_line_error(code, err, "dataset.num_validation=3", f"{root / 'val'}/")


def test_both_val_and_validation_folders(tmp_path):
    root = _full_folder(tmp_path)
    (root / "val").rename(root / "validation")
    _full_folder(tmp_path / "again")
    (tmp_path / "again" / "f" / "val").rename(root / "val")
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6")
    assert_one_line_error(code, err, str(root / "val"), str(root / "validation"))


def test_val_folder_with_a_class_train_lacks(tmp_path):
    root = _full_folder(tmp_path)
    _grey_png(root / "val" / "zebra" / "z.png", 10)
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_labels=6")
    assert_one_line_error(code, err, "'zebra'", str(root / "val"))


def test_bad_resize_policy_is_refused(tmp_path):
    root = _full_folder(tmp_path)
    code, err = _refused(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.resize=squash")
    assert_one_line_error(code, err, "dataset.resize", "crop")


@pytest.mark.slow  # writes and decodes all 1,797 digits
def test_own_data_digits_script_writes_the_hidden_split_as_folders(tmp_path):
    import importlib.util

    from ssl_cli.data.datasets import DigitsOptions
    from ssl_cli.data.split import make_split

    spec = importlib.util.spec_from_file_location("odd", Path(__file__).parents[1] / "scripts" / "own_data_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.write_digits_folder(tmp_path / "d", seed=1, num_labels=40) == 40
    folder = load_dataset("imagefolder", root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c"))
    digits = load_with_options("digits", DigitsOptions())
    labeled = make_split(digits.train_labels.numpy(), 10, 1, num_labels=40).labeled
    assert folder.train_images.shape[0] == 40 and len(folder.extra_unlabeled) == len(digits.train_labels) - 40
    # the same 40 images with the same labels, and the same test set: only the data path differs
    same = {(bytes(x.numpy()), int(y)) for x, y in zip(digits.train_images[labeled], digits.train_labels[labeled])}
    assert {(bytes(x.numpy()), int(y)) for x, y in zip(folder.train_images, folder.train_labels)} == same
    assert torch.equal(folder.test_images.float().mean(), digits.test_images.float().mean())
    assert sorted(folder.test_labels.tolist()) == sorted(digits.test_labels.tolist())

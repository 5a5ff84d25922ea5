"""Label splits: class-balanced, reproducible, saved and loaded back, with clear errors."""

import numpy as np
import pytest

from ssl_cli.core.errors import UserError
from ssl_cli.data.base import DatasetOptions
from ssl_cli.data.split import load_split, make_split, save_split

LABELS = np.repeat(np.arange(10), 50)  # 500 images, 50 per class


def test_balanced_and_reproducible():
    a = make_split(LABELS, 10, seed=3, num_labels=40)
    b = make_split(LABELS, 10, seed=3, num_labels=40)
    c = make_split(LABELS, 10, seed=4, num_labels=40)
    assert np.array_equal(a.labeled, b.labeled)
    assert not np.array_equal(a.labeled, c.labeled)
    assert np.bincount(LABELS[a.labeled], minlength=10).tolist() == [4] * 10


def test_remainder_spread_one_per_class():
    s = make_split(LABELS, 10, seed=0, num_labels=25)
    counts = np.bincount(LABELS[s.labeled], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() == 1


def test_unlabeled_pool_includes_labeled_by_default():
    s = make_split(LABELS, 10, seed=0, num_labels=40)
    assert set(s.labeled) <= set(s.unlabeled) and len(s.unlabeled) == 500
    t = make_split(LABELS, 10, seed=0, num_labels=40, unlabeled_includes_labeled=False)
    assert not set(t.labeled) & set(t.unlabeled) and len(t.unlabeled) == 460


def test_validation_is_held_out_of_everything():
    s = make_split(LABELS, 10, seed=0, num_labels=40, num_validation=100)
    assert len(s.validation) == 100
    assert np.bincount(LABELS[s.validation], minlength=10).tolist() == [10] * 10
    assert not set(s.validation) & (set(s.labeled) | set(s.unlabeled))


def test_same_seed_same_labels_whatever_else():
    """Jobs sharing label count and seed must label the same images."""
    a = make_split(LABELS, 10, seed=7, num_labels=40, unlabeled_includes_labeled=True)
    b = make_split(LABELS, 10, seed=7, num_labels=40, unlabeled_includes_labeled=False)
    assert np.array_equal(a.labeled, b.labeled)


def test_label_fraction():
    s = make_split(LABELS, 10, seed=0, label_fraction=0.1)
    assert len(s.labeled) == 50
    assert len(make_split(LABELS, 10, seed=0, label_fraction=1.0).labeled) == 500


def _escaped(message):
    return message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")


@pytest.mark.parametrize("kwargs,message", [
    ({"num_labels": 5}, "below the number of classes"),
    ({"num_labels": 501}, "exceeds"),
])
def test_bad_sizes(kwargs, message):
    """What depends on the data (enough images per class) is checked when the split is made."""
    with pytest.raises(UserError, match=_escaped(message)):
        make_split(LABELS, 10, seed=0, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_labels": None, "label_fraction": 0.0}, "(0, 1]"),
    ({"num_labels": None, "label_fraction": 1.5}, "(0, 1]"),
    ({"num_labels": None}, "exactly one"),
    ({"num_labels": 40, "label_fraction": 0.1}, "exactly one"),
    ({"num_labels": 40, "num_validation": -1}, "num_validation"),
])
def test_bad_sizes_are_refused_by_the_declaration(kwargs, message):
    """The sizes' types and ranges are checked where they are declared (DatasetOptions)."""
    with pytest.raises(UserError, match=_escaped(message)):
        DatasetOptions(**kwargs)


def test_save_and_load_round_trip(tmp_path):
    s = make_split(LABELS, 10, seed=1, num_labels=30, num_validation=20)
    save_split(s, tmp_path / "labeled_indices.json", "toy", len(LABELS))
    loaded = load_split(str(tmp_path), "toy", len(LABELS), 10, LABELS)  # a run directory works too
    assert np.array_equal(s.labeled, loaded.labeled)
    assert np.array_equal(s.validation, loaded.validation)
    assert np.array_equal(s.unlabeled, loaded.unlabeled)


def test_load_refuses_other_dataset(tmp_path):
    s = make_split(LABELS, 10, seed=1, num_labels=30)
    save_split(s, tmp_path / "labeled_indices.json", "toy", len(LABELS))
    with pytest.raises(UserError, match="was made for toy"):
        load_split(str(tmp_path), "other", len(LABELS), 10, LABELS)
    with pytest.raises(UserError, match="no file"):
        load_split(str(tmp_path / "missing.json"), "toy", len(LABELS), 10, LABELS)

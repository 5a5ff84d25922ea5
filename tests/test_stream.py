"""Streaming image folders (dataset.streaming=true): same batches as in memory, runs, resumes, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, ssl_train, write_image_folder
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import defaults, from_config
from ssl_cli.data import DATASETS
from ssl_cli.data import load_dataset as load_with_options
from ssl_cli.data.stream import FileImages
from ssl_cli.engine.config import check_config
from ssl_cli.engine.run import run
from ssl_cli.engine.trainer import Trainer

# A FixMatch batch of 4 labeled + 8 unlabeled images from 36 training images: the epochs of both samplers
# end inside a step now and then, which the schedule must handle like the in-memory path.
COMMON = ["method=fixmatch", "method.unlabeled_ratio=2", "backbone=cnn", "trainer.device=cpu",
          "trainer.batch_size=4", "trainer.progress_bar=false", "trainer.eval_batch_size=5",
          "dataset.num_labels=6"]


def folder_cfg(root: Path, tmp_path: Path, streaming: bool, *extra: str):
    return compose(["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
                    f"dataset.streaming={str(streaming).lower()}", *COMMON, *extra])


def load_dataset(name, **options):
    """Data set `name` loaded with its declaration's defaults and `options` on top, as a config would give them."""
    cls = DATASETS.options(name)
    return load_with_options(name, from_config(cls, {**defaults(cls), **options}, f"dataset={name}"))


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "folder", per_class=12, size=12)


def test_file_images_behave_like_the_in_memory_tensor(folder, tmp_path):
    memory = load_dataset("imagefolder", root=str(folder), cache_dir=str(tmp_path / "cache"))
    streamed = load_dataset("imagefolder", root=str(folder), streaming=True, num_workers=0)
    images = streamed.train_images
    assert isinstance(images, FileImages) and images.dtype == torch.uint8 and images.ndim == 4
    assert images.shape == memory.train_images.shape and streamed.image_size == memory.image_size
    assert streamed.class_names == memory.class_names
    assert torch.equal(streamed.train_labels, memory.train_labels)
    assert torch.equal(streamed.test_labels, memory.test_labels)
    # Slicing decodes; indexing with indices selects lazily; sequential slices read ahead.
    assert torch.equal(images[:], memory.train_images)
    assert torch.equal(streamed.test_images[:], memory.test_images)
    idx = torch.tensor([35, 0, 7, 7, 20])
    subset = images[idx]
    assert isinstance(subset, FileImages) and len(subset) == 5
    assert torch.equal(torch.cat([subset[0:2], subset[2:4], subset[4:5]]), memory.train_images[idx])
    assert torch.equal(subset[::2], memory.train_images[idx[::2]])
    assert images[3:3].shape == (0, 3, 12, 12)
    mean, std = streamed.channel_stats()
    ref_mean, ref_std = memory.channel_stats()
    assert np.allclose(mean, ref_mean, atol=1e-5) and np.allclose(std, ref_std, atol=1e-5)


def test_streamed_batches_equal_in_memory_batches(folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    memory = Trainer(check_config(folder_cfg(folder, tmp_path, False)), tmp_path / "a")
    streamed = Trainer(check_config(folder_cfg(folder, tmp_path, True, "dataset.num_workers=2")), tmp_path / "b")
    assert isinstance(streamed.data.images, FileImages)
    mb, sb = memory.batches, streamed.batches
    # The same indices and the same pixels, step after step (across epoch ends of both samplers) ...
    for step in range(12):
        idx = mb.data.labeled[mb.labeled_sampler(step)]
        uidx = mb.data.unlabeled[mb.unlabeled_sampler(step)]
        assert torch.equal(idx, sb.data.labeled[sb.labeled_sampler(step)])
        assert torch.equal(uidx, sb.data.unlabeled[sb.unlabeled_sampler(step)])
        assert torch.equal(sb.gather(idx, step), memory.data.images[idx])
        assert torch.equal(sb.gather(uidx, step), memory.data.images[uidx])
    # ... and the same augmented, normalised batches (normalisation statistics agree to float rounding).
    for step in (12, 13, 40, 3):  # 40: a jump ahead, 3: back (as after a resume): the loader restarts
        a, b = mb(step), sb(step)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.unlabeled_targets, b.unlabeled_targets)
        assert torch.equal(a.labeled_index, b.labeled_index) and torch.equal(a.unlabeled_index, b.unlabeled_index)
        assert len(a.labeled) == len(b.labeled) == 1 and len(a.unlabeled) == len(b.unlabeled) == 2
        for x, y in zip(a.labeled + a.unlabeled, b.labeled + b.unlabeled):
            assert torch.allclose(x, y, atol=1e-4)
    streamed.data.images.close()


@pytest.mark.slow
def test_streaming_run_completes_from_the_command_line(folder, tmp_path):
    result = ssl_train(["dataset=imagefolder", f"dataset.root={folder}", "dataset.streaming=true", *COMMON,
                        "dataset.num_validation=3", "trainer.max_steps=4", "trainer.eval_every=2",
                        "trainer.checkpoint_every=2", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["final"]["val/accuracy"] is not None
    assert not (tmp_path / ".cache").exists() or not list((tmp_path / ".cache").glob("imagefolder-*"))  # no decode cache


@pytest.mark.slow
def test_streaming_resume_gives_the_same_result_as_an_uninterrupted_run(folder, tmp_path):
    extra = ["dataset.num_workers=1", "trainer.max_steps=6", "trainer.eval_every=2", "trainer.checkpoint_every=2"]
    full = run(folder_cfg(folder, tmp_path, True, *extra), tmp_path / "full")
    part = run(folder_cfg(folder, tmp_path, True, *extra, "trainer.stop_at_step=3"), tmp_path / "part")
    assert part["status"] == "interrupted" and part["step"] == 3
    resumed = run(folder_cfg(folder, tmp_path, True, *extra, f"resume={tmp_path / 'part'}"), tmp_path / "part")
    assert resumed["status"] == "completed" and resumed["step"] == 6
    assert resumed["final"] == full["final"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = lambda d: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}  # noqa: E731
                      for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "part") == rows(tmp_path / "full")


def test_streaming_resizes_to_image_size_and_needs_it_for_mixed_sizes(folder, tmp_path):
    Image.fromarray(np.full((20, 16, 3), 200, dtype=np.uint8)).save(folder / "train" / "cat" / "big.png")
    mixed = load_dataset("imagefolder", root=str(folder), streaming=True, num_workers=0)
    with pytest.raises(UserError, match="dataset.image_size"):
        mixed.train_images[:]
    resized = load_dataset("imagefolder", root=str(folder), streaming=True, num_workers=0, image_size=8)
    memory = load_dataset("imagefolder", root=str(folder), image_size=8, cache_dir=str(tmp_path / "cache"))
    x, y = resized.train_images[:], memory.train_images
    assert x.shape == y.shape == (37, 3, 8, 8)
    # torchvision's antialiased bilinear resize against PIL's: the same image up to rounding.
    assert (x.float() - y.float()).abs().mean() < 2.0


def test_streaming_names_an_unreadable_file(folder):
    (folder / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    data = load_dataset("imagefolder", root=str(folder), streaming=True, num_workers=0)
    with pytest.raises(UserError, match="broken.png"):
        data.train_images[:]


def test_streaming_rejects_a_bad_worker_count(folder):
    with pytest.raises(UserError, match="num_workers"):
        load_dataset("imagefolder", root=str(folder), streaming=True, num_workers=-1)

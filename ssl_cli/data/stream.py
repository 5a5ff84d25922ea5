"""Image folders too large for memory: files decoded in DataLoader workers, step by step.

`dataset=imagefolder dataset.streaming=true` gives the runner (through ssl_cli.data.folders) `FileImages` in place of the uint8 image
tensors of the in-memory path. Nothing is decoded up front: the file list, the labels and the split are
made as in memory (same order, same held-out test split), the image shape comes from the first file (or
`dataset.image_size`), and the normalisation statistics from an evenly spaced sample of at most
STATS_IMAGES training images.

Training. `BatchBuilder` binds the training `FileImages` to its step schedule (`bind`). A DataLoader whose
sampler yields, from the current step on, the indices the builder will ask for at each step (computed on
the CPU with the same StepSampler seeds) lets `num_workers` processes decode them ahead of time
(ssl_cli.data.images.load_image, resized to `dataset.image_size` by `dataset.resize` when set) into one uint8 [B, C, H, W]
tensor per step. `gather(indices, step)` hands it over (pinned, copied without a sync on CUDA);
augmentation then runs batched on the training device as in memory. A batch is still a pure function of
(seed, stream, step): a resumed run restarts the loader at its step and draws the same images.

Evaluation. Test images (and the validation or labeled images an evaluation embeds) stream too: indexing
a `FileImages` with indices selects images lazily, slicing decodes them, and consecutive slices
(`x[0:b]`, `x[b:2b]`, ...) are read ahead by workers.

Pixels equal the in-memory path's: both decode with ssl_cli.data.images.load_image. Files are not
checked in advance: an unreadable file stops the run with its name (the in-memory path can skip those
instead).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_cli.core.errors import UserError
from ssl_cli.data.images import load_image
from ssl_cli.data.sampling import StepSampler

STATS_IMAGES = 2048  # training images sampled for the per-channel mean and std
STATS_BATCH = 256


class _WrongSize(Exception):
    def __init__(self, shape):
        super().__init__(str(shape))
        self.shape = shape


def decode_file(path: str, channels: int, size: Tuple[int, int], resize: bool, policy: str = "crop") -> torch.Tensor:
    """One image file -> uint8 [channels, H, W]: resized to `size` (square) by `policy` when `resize`, else it
    must be that size. ssl_cli.data.images decodes, as on the in-memory path: the same pixels either way."""
    img = torch.from_numpy(load_image(path, size[0] if resize else None, policy, channels))
    if tuple(img.shape[-2:]) != tuple(size):
        raise _WrongSize(tuple(img.shape[-2:]))
    return img


class _Decoder(Dataset):
    """Worker side: item (tag, [file positions]) -> (tag, uint8 [n, C, H, W], unreadable files, wrong size)."""

    def __init__(self, files: np.ndarray, channels: int, size: Tuple[int, int], resize: bool, policy: str):
        self.files, self.channels, self.size, self.resize, self.policy = files, channels, tuple(size), resize, policy

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        tag, positions = item
        out = torch.empty((len(positions), self.channels, *self.size), dtype=torch.uint8)
        bad: List[str] = []
        wrong = None
        for k, i in enumerate(positions):
            path = os.fsdecode(self.files[i])
            try:
                out[k] = decode_file(path, self.channels, self.size, self.resize, self.policy)
            except _WrongSize as e:
                wrong = wrong or (path, e.shape)
            except Exception:
                bad.append(path)
        return tag, out, bad, wrong


class _Requests:
    """A DataLoader sampler over generated (tag, positions) items.

    `make` must not reach back to the FileImages or loader that use it: a reference cycle would leave a
    dropped loader for the garbage collector, which may then run its shutdown inside a freshly forked
    worker of the next loader ("can only test a child process").
    """

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


class _Schedule:
    """A bound builder's step schedule on the CPU: per part (labeled, unlabeled) a StepSampler and its pool."""

    def __init__(self, parts, index: Optional[np.ndarray]):
        self.parts, self.index = parts, index

    def __call__(self, step: int) -> List[torch.Tensor]:
        return [pool[sampler(step)] for sampler, pool in self.parts]

    def positions(self, step: int) -> List[int]:
        flat = torch.cat(self(step)).numpy()
        return (flat if self.index is None else self.index[flat]).tolist()


def _step_requests(schedule: _Schedule, start: int):
    step = start
    while True:
        yield step, schedule.positions(step)
        step += 1


def _slice_requests(index: Optional[np.ndarray], n: int, start: int, count: int):
    for s in range(start, n, count):
        local = np.arange(s, min(s + count, n))
        yield s, (local if index is None else index[local]).tolist()


def _loader(decoder: _Decoder, requests: _Requests, num_workers: int, pin: bool) -> DataLoader:
    # batch_size=None: each item is already a whole batch, decoded by one worker into one tensor.
    return DataLoader(decoder, sampler=requests, batch_size=None, num_workers=num_workers, pin_memory=pin,
                      prefetch_factor=2 if num_workers > 0 else None)


@dataclass
class _StepBatch:
    step: int
    images: torch.Tensor  # on the training device
    offsets: List[int]  # where each part (labeled, unlabeled) starts in `images`
    restarted: bool  # the loader (re)started at this step
    served: int = 0  # parts handed out so far


class FileImages:
    """uint8 [N, C, H, W] images that live in files; tensor-like where the runner needs it.

    `shape`, `dtype`, `ndim`, `len()`, `device` and `.to(device)` behave as for a tensor. Indexing with
    indices (a tensor, array or list) selects images lazily (another FileImages); slicing decodes
    (a uint8 tensor on `device`). `gather(indices, step)` serves a bound BatchBuilder's training batches.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, files: np.ndarray, channels: int, size: Tuple[int, int], resize: bool, num_workers: int,
                 device=None, index: Optional[np.ndarray] = None, root: str = "", policy: str = "crop"):
        self.files = files  # bytes paths (numpy 'S'): no per-object refcounts for forked workers to copy
        self.channels, self.size, self.resize = int(channels), (int(size[0]), int(size[1])), bool(resize)
        self.policy = policy  # how a file of another size becomes `size` (ssl_cli.data.resize.resize_pil)
        self.num_workers, self.root = int(num_workers), root
        self.device = torch.device(device if device is not None else "cpu")
        self.index = index  # positions into `files`; None: all files, in order
        self._decoder = _Decoder(files, self.channels, self.size, self.resize, policy)
        self._reader: Optional["_ReadAhead"] = None
        self._schedule: Optional[_Schedule] = None  # the bound builder's schedule
        self._steps: Optional[Iterator] = None
        self._next_step: Optional[int] = None
        self._current: Optional[_StepBatch] = None

    # -- tensor-like ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files) if self.index is None else len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, *self.size))

    def _copy(self, **changes) -> "FileImages":
        args = dict(files=self.files, channels=self.channels, size=self.size, resize=self.resize,
                    num_workers=self.num_workers, device=self.device, index=self.index, root=self.root,
                    policy=self.policy)
        args.update(changes)
        return FileImages(**args)

    def to(self, device=None, *args, **kwargs) -> "FileImages":
        """The same images, decoded onto `device` (other arguments of Tensor.to are ignored)."""
        if isinstance(device, (str, torch.device)):
            return self._copy(device=torch.device(device))
        return self

    def cpu(self) -> "FileImages":
        return self.to("cpu")

    def cat(self, other: "FileImages") -> "FileImages":
        """These images followed by `other`'s (as torch.cat): e.g. the training images, then unlabeled ones."""
        if (other.channels, other.size) != (self.channels, self.size):
            raise ValueError(f"cannot join images of shape {other.shape[1:]} to {self.shape[1:]}")
        mine = self.positions(np.arange(len(self)))
        theirs = other.positions(np.arange(len(other))) + len(self.files)
        return self._copy(files=np.concatenate([self.files, other.files]), index=np.concatenate([mine, theirs]))

    def positions(self, local) -> np.ndarray:
        """Positions into `files` of the images at `local` (indices into this selection)."""
        local = np.asarray(local, dtype=np.int64).reshape(-1)
        n = len(self)
        if local.size and (local.min() < -n or local.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        local = np.where(local < 0, local + n, local)
        return local if self.index is None else self.index[local]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._read_slice(key)
        if isinstance(key, int):
            return self._read_slice(slice(key, key + 1 if key != -1 else None))[0]
        if torch.is_tensor(key):
            key = key.detach().cpu().numpy()
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self._copy(index=self.positions(key))

    # -- decoding ---------------------------------------------------------------------------------

    def _check(self, bad: Sequence[str], wrong) -> None:
        _raise_for(bad, wrong, self.root, self.size)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return _to_device(images, self.device)

    def _read_slice(self, key: slice) -> torch.Tensor:
        start, stop, stride = key.indices(len(self))
        count = len(range(start, stop, stride))
        if count == 0:
            return torch.empty((0, self.channels, *self.size), dtype=torch.uint8, device=self.device)
        if stride != 1:
            return self[np.arange(start, stop, stride)][:]
        reader = self._reader
        if reader is None or not reader.serves(start, count):
            reader = self._reader = _ReadAhead(self, start, count)
        images = reader.next()
        if reader.done:
            self._reader = None  # its workers stop
        return images

    def channel_stats(self, max_images: int = STATS_IMAGES) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std in [0, 1] units of an evenly spaced sample of at most `max_images`."""
        n = len(self)
        pick = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(np.int64))
        sample = self._copy(index=self.positions(pick), device=torch.device("cpu"))
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        for start in range(0, len(sample), STATS_BATCH):
            x = sample[start:start + STATS_BATCH].to(torch.float64).div_(255)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        count = len(sample) * self.size[0] * self.size[1]
        mean = total / count
        var = (squares - count * mean.square()) / max(count - 1, 1)
        std = var.clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist()

    # -- training: the builder's batches, prefetched step by step ---------------------------------

    def bind(self, builder) -> None:
        """Serve `builder`'s training batches: the decode workers follow its step schedule.

        The schedule is recomputed on the CPU by StepSamplers with the builder's seeds and sizes (StepSampler
        draws its permutations on the CPU, so they equal the builder's on any device): no host sync.
        """
        cpu = torch.device("cpu")
        parts = []
        for sampler_name, pool_name in (("labeled_sampler", "labeled"), ("unlabeled_sampler", "unlabeled")):
            s = getattr(builder, sampler_name, None)
            if s is not None:
                pool = getattr(builder.data, pool_name).detach().cpu()
                parts.append((StepSampler(s.n, s.batch_size, s.seed, s.stream, cpu), pool))
        self.close()
        self._schedule = _Schedule(parts, self.index)

    def schedule(self, step: int) -> List[torch.Tensor]:
        """The indices (into these images) of each part of a step's batch, on the CPU."""
        return self._schedule(step)

    def _start(self, step: int) -> None:
        self.close()
        requests = _Requests(functools.partial(_step_requests, self._schedule, step))
        self._steps = iter(_loader(self._decoder, requests, self.num_workers, pin=self.device.type == "cuda"))
        self._next_step = step

    def _fetch(self, step: int) -> _StepBatch:
        restarted = self._steps is None or self._next_step != step
        if restarted:
            self._start(step)
        tag, images, bad, wrong = next(self._steps)
        self._check(bad, wrong)
        if tag != step:
            raise RuntimeError(f"streaming loader returned step {tag} for step {step}")
        self._next_step = step + 1
        sizes = [len(p) for p in self.schedule(step)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        return _StepBatch(step, self._to_device(images), offsets, restarted)

    def gather(self, indices: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        """The uint8 images at `indices`, on the device: for a bound builder's step, its prefetched part
        (labeled, then unlabeled, in the order the builder asks); otherwise decoded now."""
        if self._schedule is None or step is None:
            return self[indices][:]
        batch = self._current
        if batch is None or batch.step != step or batch.served >= len(self._schedule.parts):
            batch = self._current = self._fetch(step)
        part = batch.served
        batch.served += 1
        # The builder's own indices must be the ones decoded. On the CPU that check is free; on CUDA it
        # costs a sync, so it runs only when the loader (re)starts (first step, resume).
        if indices.device.type == "cpu" or batch.restarted:
            expected = self.schedule(step)[part]
            if not torch.equal(indices.detach().cpu(), expected):
                raise RuntimeError(f"streaming schedule differs from the batch builder's at step {step} "
                                   f"(ssl_cli.stream.FileImages.bind must mirror BatchBuilder's samplers)")
        return batch.images[batch.offsets[part]:batch.offsets[part + 1]]

    def close(self) -> None:
        """Stops the decode workers (they restart on the next request)."""
        self._steps, self._next_step, self._current, self._reader = None, None, None, None


def _raise_for(bad: Sequence[str], wrong, root: str, size: Tuple[int, int]) -> None:
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"{len(bad)} unreadable image file(s) while streaming {root}: {shown} (streaming "
                        f"does not check files in advance: remove them, or set dataset.streaming=false, "
                        f"whose decoding skips them)")
    if wrong:
        path, (h, w) = wrong
        raise UserError(f"{path} is {h}x{w}, but the images are {size[0]}x{size[1]}; set "
                        f"dataset.image_size to resize every image to one size")


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images if device.type == "cpu" else images.to(device, non_blocking=True)  # pinned: no sync


class _ReadAhead:
    """Consecutive slices [start:start+count], [start+count:start+2*count], ... decoded ahead by workers.

    It keeps no reference to its FileImages (see _Requests): a half-read reader is freed at once."""

    def __init__(self, images: FileImages, start: int, count: int):
        self.count, self.n = count, len(images)
        self.root, self.size, self.device = images.root, images.size, images.device
        self.next_start = start
        self.done = False
        requests = _Requests(functools.partial(_slice_requests, images.index, self.n, start, count))
        self._it = iter(_loader(images._decoder, requests, images.num_workers, pin=images.device.type == "cuda"))

    def serves(self, start: int, count: int) -> bool:
        return not self.done and start == self.next_start and min(start + self.count, self.n) - start == count

    def next(self) -> torch.Tensor:
        tag, images, bad, wrong = next(self._it)
        _raise_for(bad, wrong, self.root, self.size)
        self.next_start = min(tag + self.count, self.n)
        self.done = self.next_start >= self.n
        return _to_device(images, self.device)

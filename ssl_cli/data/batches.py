"""What a training step sees: `Batch`, built on the device by `BatchBuilder` from the step number alone.

`TrainingData` holds every image on the training device as uint8; `DataInfo` describes the data to a
method (class count, pool sizes, the labeled set's class prior). Each step the builder draws indices
(ssl_cli.data.sampling), gathers the uint8 images, makes each requested view with the `augment`
callable it was given (ssl_cli.transforms) and normalises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from ssl_cli.core.errors import UserError
from ssl_cli.core.seeding import mix
from ssl_cli.data.sampling import StepSampler

# Random streams of one seed: the labeled sampler, the unlabeled sampler, the augmentation, the method's own
# draws (MixUp's λ and partners).
LABELED_STREAM, UNLABELED_STREAM, AUGMENT_STREAM, METHOD_STREAM = 1, 2, 3, 4


@dataclass
class Batch:
    """One step's images: each view a normalised float tensor of the same images, in the same order."""

    labeled: Tuple[torch.Tensor, ...] = ()  # one tensor per labeled view the method asked for
    labels: Optional[torch.Tensor] = None
    labeled_index: Optional[torch.Tensor] = None  # position of each image in the labeled pool (0..num_labeled-1)
    unlabeled: Tuple[torch.Tensor, ...] = ()  # one tensor per unlabeled view
    unlabeled_index: Optional[torch.Tensor] = None  # position in the unlabeled pool (0..num_unlabeled-1)
    unlabeled_targets: Optional[torch.Tensor] = None  # hidden true labels (-1: unknown), for monitoring only
    # A seed for the method's own randomness in this batch only (from the run seed, the micro-batch and the
    # rank): a method that draws (MixUp) seeds a generator on the device with it, so a resumed run draws the same.
    seed: int = 0


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about the data before training: sizes and the labeled set's class prior."""

    num_classes: int
    class_names: Tuple[str, ...]
    channels: int
    image_size: Tuple[int, int]
    num_labeled: int
    num_unlabeled: int
    class_prior: Tuple[float, ...]  # class frequencies of the labeled images (sums to 1)


@dataclass
class TrainingData:
    """Everything the loop samples from, already on the training device."""

    images: torch.Tensor  # uint8 [N, C, H, W]: training images, then any extra unlabeled images
    labels: torch.Tensor  # int64 [N]; -1 for images whose label is unknown
    labeled: torch.Tensor  # indices into images
    unlabeled: torch.Tensor
    validation: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]

    def info(self) -> DataInfo:
        labels = self.labels[self.labeled].cpu()
        counts = torch.bincount(labels, minlength=len(self.class_names)).double()
        return DataInfo(num_classes=len(self.class_names), class_names=tuple(self.class_names),
                        channels=int(self.images.shape[1]), image_size=(int(self.images.shape[2]), int(self.images.shape[3])),
                        num_labeled=int(len(self.labeled)), num_unlabeled=int(len(self.unlabeled)),
                        class_prior=tuple((counts / counts.sum().clamp_min(1)).tolist()))


Augment = Callable[[str, torch.Tensor, torch.Generator], torch.Tensor]


class BatchBuilder:
    """Samples indices, gathers uint8 images on the device, augments them in batches and normalises."""

    def __init__(self, data: TrainingData, labeled_views: Tuple[str, ...], unlabeled_views: Tuple[str, ...],
                 labeled_batch: int, unlabeled_batch: int, augment: Augment,
                 normalize: Callable[[torch.Tensor], torch.Tensor], seed: int, channels_last: bool,
                 needs_unlabeled_for: str = "this method", shard: Tuple[int, int] = (0, 1)):
        # shard = (rank, world): the batch sizes are GLOBAL; each rank takes its slice of the step's indices.
        self.rank, self.world = shard
        for what, size in (("trainer.batch_size", labeled_batch), ("the unlabeled batch", unlabeled_batch)):
            if size % self.world:
                raise UserError(f"{what} ({size}) must be divisible by the number of ranks ({self.world}): "
                                f"it is the global batch, split evenly across ranks")
        device = data.images.device
        self.data, self.augment, self.normalize, self.seed = data, augment, normalize, seed
        self.labeled_views, self.unlabeled_views = tuple(labeled_views), tuple(unlabeled_views)
        self.channels_last = channels_last
        self.labeled_sampler = None
        if self.labeled_views:
            self.labeled_sampler = StepSampler(len(data.labeled), labeled_batch, seed, LABELED_STREAM, device)
        self.unlabeled_sampler = None
        if self.unlabeled_views:
            if len(data.unlabeled) == 0:
                raise UserError(f"{needs_unlabeled_for} needs unlabeled images, but the unlabeled pool is empty")
            self.unlabeled_sampler = StepSampler(len(data.unlabeled), unlabeled_batch, seed, UNLABELED_STREAM, device)
        self.gen = torch.Generator(device=device)
        # The image source: the in-memory tensor, or images streamed from files (ssl_cli.data.stream.FileImages)
        # whose decode workers follow this builder's step schedule.
        self.stream = None if isinstance(data.images, torch.Tensor) else data.images
        if self.stream is not None and self.world > 1:
            raise UserError("dataset.streaming=true runs in one process; drop it or run on one rank")
        if self.stream is not None:
            self.stream.bind(self)

    def gather(self, indices: torch.Tensor, step: int) -> torch.Tensor:
        """The uint8 images at `indices` (drawn at `step`), on the device."""
        return self.data.images[indices] if self.stream is None else self.stream.gather(indices, step)

    def prepare(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the normalised float input of the model."""
        if self.channels_last:  # reorder the uint8 images (a quarter of the bytes); normalising keeps the layout
            return self.normalize(images_uint8.contiguous(memory_format=torch.channels_last)).contiguous(
                memory_format=torch.channels_last)
        return self.normalize(images_uint8)

    def views(self, names: Tuple[str, ...], raw: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.prepare(self.augment(v, raw, self.gen)) for v in names)

    def _shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the step's global indices (all of them in one process)."""
        if self.world == 1:
            return indices
        size = len(indices) // self.world
        return indices[self.rank * size:(self.rank + 1) * size]

    def augment_seed(self, step: int) -> int:
        """Augmentation randomness for this step only, and per rank: (seed, step) on rank 0, as in one
        process, and (seed, step, rank) on the others."""
        return mix(self.seed, AUGMENT_STREAM, step) if self.rank == 0 else mix(self.seed, AUGMENT_STREAM, step, self.rank)

    def method_seed(self, step: int) -> int:
        """The seed of the method's own draws at this step (`Batch.seed`), per rank like `augment_seed`."""
        return mix(self.seed, METHOD_STREAM, step) if self.rank == 0 else mix(self.seed, METHOD_STREAM, step, self.rank)

    def __call__(self, step: int) -> Batch:
        self.gen.manual_seed(self.augment_seed(step))
        d = self.data
        batch = Batch(seed=self.method_seed(step))
        if self.labeled_sampler is not None:
            batch.labeled_index = self._shard(self.labeled_sampler(step))
            idx = d.labeled[batch.labeled_index]
            batch.labeled = self.views(self.labeled_views, self.gather(idx, step))
            batch.labels = d.labels[idx]
        if self.unlabeled_sampler is not None:
            batch.unlabeled_index = self._shard(self.unlabeled_sampler(step))
            uidx = d.unlabeled[batch.unlabeled_index]
            batch.unlabeled = self.views(self.unlabeled_views, self.gather(uidx, step))
            batch.unlabeled_targets = d.labels[uidx]
        return batch


def _cat(a, b):
    """torch.cat for uint8 image tensors and for streamed FileImages alike."""
    return torch.cat([a, b]) if torch.is_tensor(a) else a.cat(b)


def training_data(data, split, device: torch.device) -> TrainingData:
    """An ImageData and its label split, on the training device.

    The images are the training images, then a validation split given as such (split.validation points
    there, ssl_cli.engine.trainer.choose_split), then extra unlabeled images, which join the unlabeled pool
    with label -1 (unknown: pseudo-label accuracy counts only images whose label is known).
    """
    images, labels = data.train_images, data.train_labels
    unlabeled = torch.as_tensor(split.unlabeled)
    if data.validation_images is not None:
        images = _cat(images, data.validation_images)
        labels = torch.cat([labels, data.validation_labels])
    if data.extra_unlabeled is not None:  # STL-10's unlabeled split, an image folder's unlabeled/
        n = len(labels)
        images = _cat(images, data.extra_unlabeled)
        labels = torch.cat([labels, torch.full((len(data.extra_unlabeled),), -1, dtype=torch.long)])
        unlabeled = torch.cat([unlabeled, torch.arange(n, n + len(data.extra_unlabeled))])
    return TrainingData(
        images=images.to(device), labels=labels.to(device),
        labeled=torch.as_tensor(split.labeled).to(device), unlabeled=unlabeled.to(device),
        validation=torch.as_tensor(split.validation).to(device),
        test_images=data.test_images.to(device), test_labels=data.test_labels.to(device),
        class_names=list(data.class_names),
    )

"""Image sets, splits and loaders for training and evaluating the zoo. The datasets themselves are
registered readers (:mod:`repan_zoo.datasets`: Fashion-MNIST from Debian's IDX files, CIFAR-10/100
and ImageFolder trees through torchvision — never downloaded here; ``register_dataset`` adds one).

Every dataset is served as **uint8 images** ``[N, C, H, W]`` plus int64 labels; the float
conversion and normalisation with the dataset's mean/std happen on the training device
(:class:`Normalize`). Training augmentation is a registered policy
(:mod:`repan_zoo.augment`: ``none``, ``flip`` — the setup of ``findings-cpu-scale.md`` —,
``crop_flip``, ``crop_flip_erase``) applied to each fetched batch as tensor ops on the images'
device, every random choice drawn per image from ``(seed, epoch)`` only, so the data a step
sees does not depend on the number of processes or on a restart (:class:`ImageSet.set_epoch`).

Splits (:func:`load_splits`): ``train`` and ``val`` are carved from the *training* files by a
fixed seeded permutation (``split_seed``), ``test`` is the official test set, used only to
report. A validation split never touches the test set.

Batches are fetched a whole list of indices at a time (``ImageSet.__getitem__(list)``), driven
by :func:`train_loader` (``DistributedSampler`` → ``BatchSampler``) and :func:`eval_loader`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from .augment import AugmentPolicy, get_augment_policy, mix_seed
from .errors import RecipeError
from .datasets import (  # noqa: F401 (the readers' public names, re-exported: their home is repan_zoo.datasets)
    DATASET_READERS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    DatasetArrays,
    dataset_key,
    get_dataset,
    load_fashion_mnist,
    read_idx,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "DataSplits",
    "ImageSet",
    "Normalize",
    "load_splits",
    "train_loader",
    "eval_loader",
    "calibration_batches",
    # re-exported from repan_zoo.datasets
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_CLASSES",
    "DatasetArrays",
    "register_dataset",
    "read_idx",
    "load_fashion_mnist",
]

#: the names of the registered datasets (a live view of :data:`repan_zoo.datasets.DATASET_READERS`:
#: a dataset registered later is listed too), in registration order.
DATASETS = DATASET_READERS.keys()


# ---------------------------------------------------------------------------------------------
# Image sets
# ---------------------------------------------------------------------------------------------
class ImageSet(Dataset):
    """Images (uint8 ``[N, C, H, W]``, in memory or loaded by ``fetch``) with labels.

    ``dataset[list_of_indices]`` returns a whole batch ``(uint8 images, int64 labels)``,
    augmented by ``augment`` (a policy or its registered name, :mod:`repan_zoo.augment`; the
    older ``flip=True`` means the ``flip`` policy) with the draws of the epoch chosen by
    :meth:`set_epoch`: functions of ``(seed, epoch, index)`` alone. In-memory images may live on
    any device (:meth:`to`); the batch ops then run there.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        images: Optional[torch.Tensor] = None,
        *,
        fetch: Optional[Callable[[int], torch.Tensor]] = None,
        indices: Optional[torch.Tensor] = None,
        flip: bool = False,
        augment: Union[None, str, AugmentPolicy] = None,
        seed: int = 0,
    ):
        if (images is None) == (fetch is None):
            raise ValueError("ImageSet needs either in-memory images or a fetch function")
        self.images = images
        self.fetch = fetch
        self.labels = labels
        self.indices = torch.arange(len(labels)) if indices is None else indices.long()
        self.augment = get_augment_policy(augment, flip=flip)
        self.seed = int(seed)
        self.epoch = 0
        self._draws: Optional[Dict[str, torch.Tensor]] = None

    @property
    def flip(self) -> bool:
        return self.augment.flip

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentation is served (a function of ``(seed, epoch)`` only)."""
        self.epoch = int(epoch)
        self._draws = None

    def draws(self) -> Dict[str, torch.Tensor]:
        """This epoch's augmentation draws for every position (:meth:`AugmentPolicy.draw`)."""
        if self._draws is None:
            shape = tuple(self._raw(torch.tensor([0]))[0].shape)
            draws = self.augment.draw(len(self), shape, seed=self.seed, epoch=self.epoch)  # type: ignore[arg-type]
            self._draws = {k: v.to(self.indices.device) for k, v in draws.items()}  # beside the images
        return self._draws

    def flip_mask(self) -> torch.Tensor:
        return self.draws()["flip"] if self.flip else torch.zeros(len(self), dtype=torch.bool)

    def subset(self, positions: torch.Tensor, *, augment: Union[None, str, AugmentPolicy] = None) -> "ImageSet":
        """The images at ``positions`` of this set (a view sharing the storage), with this set's
        augmentation unless ``augment`` is given (``"none"``: the images as they are)."""
        policy = augment if augment is not None else self.augment
        return ImageSet(self.labels, self.images, fetch=self.fetch, indices=self.indices[positions],
                        augment=policy, seed=self.seed)

    def to(self, device: Union[str, torch.device],
           moved: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]] = None) -> "ImageSet":
        """Move in-memory images, labels and the epoch's augmentation draws to ``device`` (a GPU:
        batches are then gathered and augmented there, with no per-batch host work). Sets built
        on a ``fetch`` function stay where they are. ``moved`` (tensor id → (tensor, its copy)) lets sets
        that share their images (the subsets of one set) share the copy too
        (:meth:`DataSplits.to`)."""
        if self.images is not None:
            memo = {} if moved is None else moved

            def move(t: torch.Tensor) -> torch.Tensor:
                if id(t) not in memo:  # the original is kept with its copy, so its id stays its own
                    memo[id(t)] = (t, t.to(device))
                return memo[id(t)][1]

            self.images, self.labels, self.indices = move(self.images), move(self.labels), move(self.indices)
            self._draws = None
        return self

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def _raw(self, pos: torch.Tensor) -> torch.Tensor:
        idx = self.indices[pos.to(self.indices.device)]
        if self.images is not None:
            return self.images[idx]
        assert self.fetch is not None
        return torch.stack([self.fetch(int(i)) for i in idx])

    def __getitem__(self, item: Union[int, Sequence[int], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        single = isinstance(item, int)
        pos = torch.as_tensor([item] if single else list(item) if not isinstance(item, torch.Tensor) else item).long()
        x = self._raw(pos)
        pos = pos.to(self.indices.device)
        if self.augment.active:
            x = self.augment.apply(x, self.augment.rows(self.draws(), pos))
        y = self.labels[self.indices[pos]]
        return (x[0], y[0]) if single else (x, y)

    @property
    def image_shape(self) -> Tuple[int, ...]:
        return tuple(self[0][0].shape)


class Normalize(nn.Module):
    """uint8 images → float, ``(x/255 - mean) / std`` per channel, on the batch's device, in
    ``memory_format`` (``torch.channels_last`` for a channels-last model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.memory_format = memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((x.float().div_(255.0) - mean) / std).contiguous(memory_format=self.memory_format)


@dataclass
class DataSplits:
    """``train`` (augmented), ``val`` and ``test`` image sets with what a model needs to know."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    in_chans: int
    input_size: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Tuple[str, ...] = ()
    info: Dict[str, object] = field(default_factory=dict)

    def to(self, device: Union[str, torch.device]) -> "DataSplits":
        """Move the three sets to ``device`` (:meth:`ImageSet.to`), each shared tensor once: train
        and val are subsets of one training set and keep sharing its images there."""
        moved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        for split in (self.train, self.val, self.test):
            split.to(device, moved)
        return self

    def normalizer(self, memory_format: torch.memory_format = torch.contiguous_format) -> Normalize:
        return Normalize(self.mean, self.std, memory_format)

    def describe(self) -> Dict[str, object]:
        return {
            "dataset": self.name,
            "train_size": len(self.train),
            "val_size": len(self.val),
            "test_size": len(self.test),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.train.augment.describe(),
            **self.info,
        }


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def _mean_std(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean/std of uint8 images scaled to [0, 1], exactly, from each channel's
    256-bin histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1).long(), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(round(float(mean), 6))
        stds.append(round(float(var.sqrt()), 6))
    return tuple(means), tuple(stds)


def load_splits(
    name: str = "fashion_mnist",
    data_dir: Optional[Union[str, Path]] = None,
    *,
    val_size: int = 5000,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    split_seed: int = 0,
    seed: int = 0,
    flip: bool = True,
    augment: Union[None, str, AugmentPolicy] = None,
    img_size: int = 224,
) -> DataSplits:
    """Train / validation / test splits of the registered dataset ``name`` (:mod:`repan_zoo.datasets`).

    ``val_size`` images are carved from the training files by a permutation seeded with
    ``split_seed`` (fixed across runs, so every seed tunes on the same validation images);
    ``train_subset`` keeps only the first that many of the remaining ones (same permutation),
    ``test_subset`` the first that many test images. The mean/std are those of all training
    files' images unless the reader gives them (ImageNet's for ``imagefolder``). ``augment`` names
    the training set's policy (:mod:`repan_zoo.augment`; default ``flip`` if ``flip`` else
    ``none``); ``seed`` drives its draws. ``img_size`` goes to readers that resize.

    Raises:
        DatasetNotFoundError: unknown ``name`` (the message lists the registered ones), or the
            reader's files are missing or unreadable.
        RecipeError: ``val_size``, ``train_subset`` or ``test_subset`` out of range (a ``ValueError``).
    """
    for option, value in (("--val-size", val_size), ("--train-subset", train_subset), ("--test-subset", test_subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RecipeError(f"{option} {value!r}: give a whole number of images")
    name = dataset_key(name)
    arrays = get_dataset(name)(data_dir, img_size=img_size)
    info: Dict[str, object] = {"split_seed": split_seed, "source": arrays.source}
    classes = tuple(arrays.classes)
    train_labels, test_labels = arrays.train_labels, arrays.test_labels
    full_train = ImageSet(train_labels, arrays.train_images, fetch=arrays.train_fetch, flip=flip, augment=augment,
                          seed=seed)
    full_test = ImageSet(test_labels, arrays.test_images, fetch=arrays.test_fetch)
    if arrays.mean is not None and arrays.std is not None:
        mean, std = tuple(arrays.mean), tuple(arrays.std)
    else:
        assert arrays.train_images is not None  # DatasetArrays checks: fetched sets come with mean/std
        mean, std = _mean_std(arrays.train_images)
    input_size = arrays.input_size or tuple(arrays.train_images.shape[1:])  # type: ignore[union-attr]

    n = len(full_train)
    if not 0 < val_size < n:
        raise RecipeError(f"--val-size {val_size} must be between 1 and {n - 1}: the training set of {name} has "
                          f"{n} images, and the validation split is carved from it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_pos, train_pos = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        if not 2 <= train_subset <= len(train_pos):
            raise RecipeError(f"--train-subset {train_subset} must be between 2 and {len(train_pos)} (the training "
                              f"images of {name} left after --val-size {val_size}), or none for all of them")
        train_pos = train_pos[:train_subset]
    test = full_test
    if test_subset is not None:
        if not 0 < test_subset <= len(full_test):
            raise RecipeError(f"--test-subset {test_subset} must be between 1 and {len(full_test)} (the test set of "
                              f"{name}), or none for all of it")
        test = full_test.subset(torch.arange(test_subset))
    return DataSplits(
        name=name,
        train=full_train.subset(train_pos),
        val=full_train.subset(val_pos, augment="none"),
        test=test,
        num_classes=int(max(int(train_labels.max()), int(test_labels.max())) + 1) if not classes else len(classes),
        in_chans=int(input_size[0]),
        input_size=tuple(int(v) for v in input_size),  # type: ignore[arg-type]
        mean=mean,
        std=std,
        classes=classes,
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def train_loader(
    dataset: ImageSet,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches of one epoch for one process: ``batch_size`` is this process's share.

    Order and augmentation are functions of ``(seed, epoch)``: ``DistributedSampler`` (also with one
    process) deals out one permutation, so the union of the ``world_size`` processes' k-th
    batches is the k-th batch of a one-process run with ``world_size × batch_size``. The
    last incomplete batch is dropped (BN needs more than one image).
    """
    dataset.set_epoch(epoch)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    batches = BatchSampler(sampler, batch_size, drop_last=True)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers, pin_memory=pin_memory)


def eval_loader(
    dataset: ImageSet, batch_size: int, *, rank: int = 0, world_size: int = 1, workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """This process's shard (every ``world_size``-th image, no padding) in fixed order."""
    positions = list(range(rank, len(dataset), world_size))
    batches = [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers, pin_memory=pin_memory)


def calibration_batches(dataset: ImageSet, num_batches: int, batch_size: int, *, seed: int, cycle: int) -> List[torch.Tensor]:
    """``num_batches`` batches of training images (uint8, no augmentation) for BN calibration
    (Algorithm 1, line 6), drawn without replacement from a permutation seeded by
    ``(seed, cycle)``: the same on every process."""
    if num_batches <= 0:
        return []
    gen = torch.Generator().manual_seed(mix_seed(seed, cycle, 0xCA1B))
    perm = torch.randperm(len(dataset), generator=gen)
    plain = dataset.subset(torch.arange(len(dataset)), augment="none")
    out = []
    for b in range(num_batches):
        pos = perm[b * batch_size:(b + 1) * batch_size]
        if len(pos) == 0:
            break
        out.append(plain[pos][0])
    return out

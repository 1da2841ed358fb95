"""Dataset readers, registered by name like the branch kinds, λ schedules and augmentation
policies: what ``--dataset NAME`` and :func:`repan_zoo.data.load_splits` read.

A reader turns a data folder into the training and test files' images and labels
(:class:`DatasetArrays`); :func:`~repan_zoo.data.load_splits` then carves the validation split,
computes the normalisation and builds the image sets. Nothing is ever downloaded here.

Registered readers (see :data:`DATASET_READERS`):

=============  ==========================================================================
name           files
=============  ==========================================================================
fashion_mnist  the four IDX files (Debian's ``dataset-fashion-mnist`` by default)
cifar10        ``cifar-10-batches-py/`` (the python version), read through torchvision
cifar100       ``cifar-100-python/``, read through torchvision
imagefolder    ``train/<class>/*`` and ``val/<class>/*`` (val is the test split), resized
               and centre-cropped to ``img_size`` when fetched, ImageNet's mean/std
=============  ==========================================================================

Adding a dataset is one function in one place (here, or in a module of your own imported
before training)::

    @register_dataset("my_set")
    def my_set(data_dir, *, img_size):
        return DatasetArrays(train_labels=..., test_labels=..., train_images=uint8 [N, C, H, W],
                             test_images=..., classes=(...), source=str(data_dir))
"""
from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .errors import DatasetNotFoundError
from .registry import add, lookup

__all__ = [
    "DatasetArrays",
    "DATASET_READERS",
    "register_dataset",
    "get_dataset",
    "dataset_key",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_CLASSES",
    "read_idx",
    "load_fashion_mnist",
]

PathArg = Optional[Union[str, Path]]


@dataclass
class DatasetArrays:
    """What a dataset reader returns: the training and test files, each either in memory
    (``*_images``) or fetched one image at a time (``*_fetch``).

    Args:
        train_labels, test_labels: int64 ``[N]`` class indices.
        train_images, test_images: uint8 ``[N, C, H, W]`` images in memory, or ``None`` with a fetch.
        train_fetch, test_fetch: ``fetch(i) -> uint8 [C, H, W]``, the i-th image, or ``None``.
        classes: the class names (``()``: unnamed; the number of classes is then
            ``max(label) + 1``).
        input_size: ``(C, H, W)`` of every image; required with a fetch (default: the in-memory
            images' shape).
        mean, std: per-channel normalisation in [0, 1] units; ``None``: the training images' own,
            computed exactly (in-memory images only).
        source: where the files came from (recorded in the run's ``final.json``).
    """

    train_labels: torch.Tensor
    test_labels: torch.Tensor
    train_images: Optional[torch.Tensor] = None
    test_images: Optional[torch.Tensor] = None
    train_fetch: Optional[Callable[[int], torch.Tensor]] = None
    test_fetch: Optional[Callable[[int], torch.Tensor]] = None
    classes: Tuple[str, ...] = ()
    input_size: Optional[Tuple[int, int, int]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            if (getattr(self, f"{split}_images") is None) == (getattr(self, f"{split}_fetch") is None):
                raise ValueError(f"DatasetArrays: give either {split}_images or {split}_fetch")
        if self.train_images is None and (self.input_size is None or self.mean is None or self.std is None):
            raise ValueError("DatasetArrays: fetched images need input_size, mean and std")


#: name → reader ``read(data_dir, *, img_size) -> DatasetArrays``; :func:`register_dataset` adds one.
DATASET_READERS: Dict[str, Callable[..., DatasetArrays]] = {}


def dataset_key(name: str) -> str:
    """The registry key of a dataset name: lower case, ``-`` as ``_`` (``Fashion-MNIST`` →
    ``fashion_mnist``); every lookup and registration goes through it."""
    return name.lower().replace("-", "_")


def register_dataset(name: str) -> Callable[[Callable[..., DatasetArrays]], Callable[..., DatasetArrays]]:
    """Decorator: make ``read(data_dir, *, img_size) -> DatasetArrays`` the dataset ``name``
    (``--dataset name``, ``load_splits(name, data_dir)``; matched by :func:`dataset_key`). ``data_dir`` is ``--data-dir`` (``None``
    when not given); ``img_size`` is ``--img-size`` (for readers that resize).

    Raises:
        ValueError: ``name`` is already registered.
    """

    return lambda read: add(DATASET_READERS, dataset_key(name), read, what="dataset")


def get_dataset(name: str) -> Callable[..., DatasetArrays]:
    """The reader of the registered dataset ``name``.

    Raises:
        DatasetNotFoundError: no such dataset; the message names the registered ones.
    """
    return lookup(DATASET_READERS, dataset_key(name), what="dataset", error=DatasetNotFoundError,
                  how="register new ones with repan_zoo.datasets.register_dataset")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# ---------------------------------------------------------------------------------------------
#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of the file's dtype and shape.

    Raises:
        DatasetNotFoundError: the file is unreadable, not IDX, truncated or corrupt (the message names it).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetNotFoundError(f"cannot read IDX file {path}: {exc}. Reinstall it (apt-get install --reinstall "
                                   "dataset-fashion-mnist) or fix --data-dir") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetNotFoundError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetNotFoundError(
            f"{path} is truncated or corrupt: header says {dims} ({expected} bytes of data), "
            f"file holds {len(data) - header}. Reinstall it (apt-get install --reinstall dataset-fashion-mnist)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


#: the last Fashion-MNIST arrays read (keyed by the files' paths, mtimes and sizes); never mutated.
_FMNIST_CACHE: Dict[tuple, Dict[str, torch.Tensor]] = {}


def _find_fmnist_file(root: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        for candidate in (root / name, root / "raw" / name, root / "FashionMNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    return None


def load_fashion_mnist(root: PathArg = None) -> Dict[str, torch.Tensor]:
    """The four Fashion-MNIST arrays as tensors: ``train_images`` uint8 ``[60000, 1, 28, 28]``,
    ``train_labels`` int64 ``[60000]``, ``test_images`` ``[10000, 1, 28, 28]``, ``test_labels``.

    ``root`` defaults to Debian's location (:data:`FASHION_MNIST_DIR`); torchvision's layout
    (``root/FashionMNIST/raw``) is found too.

    Raises:
        DatasetNotFoundError: files missing (the message names them and the install command),
            corrupt, or not belonging together.
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    found = {key: _find_fmnist_file(root, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] + ".gz" for k, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {root}: missing {', '.join(missing)}. "
            f"Install Debian's package (`apt-get install dataset-fashion-mnist`, files go to {FASHION_MNIST_DIR}) "
            "or pass --data-dir pointing at a folder with the four IDX files "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            "t10k-labels-idx1-ubyte.gz)"
        )
    cache_key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in found.values())  # type: ignore[union-attr]
    if cache_key in _FMNIST_CACHE:
        return dict(_FMNIST_CACHE[cache_key])
    out: Dict[str, torch.Tensor] = {}
    for key, path in found.items():
        arr = read_idx(path)  # type: ignore[arg-type]
        if key.endswith("images"):
            if arr.ndim != 3 or arr.shape[1:] != (28, 28):
                raise DatasetNotFoundError(f"{path}: expected images [N, 28, 28], got shape {arr.shape}")
            out[key] = torch.from_numpy(arr.copy()).unsqueeze(1)
        else:
            n = len(FASHION_MNIST_CLASSES)
            if arr.ndim != 1:
                raise DatasetNotFoundError(f"{path}: expected labels [N], got shape {arr.shape}")
            bad = arr[(arr < 0) | (arr >= n)]
            if len(bad):
                raise DatasetNotFoundError(
                    f"{path}: label {int(bad[0])} (and {len(bad) - 1} more) outside the classes 0..{n - 1}; the file "
                    "is corrupt. Reinstall it (apt-get install --reinstall dataset-fashion-mnist)")
            out[key] = torch.from_numpy(arr.astype(np.int64))
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise DatasetNotFoundError(
                f"Fashion-MNIST {split}: {len(out[f'{split}_images'])} images but {len(out[f'{split}_labels'])} "
                "labels; the files do not belong together"
            )
    if len(out["train_images"]) < len(out["test_images"]):  # 60,000 vs 10,000 in the published set
        raise DatasetNotFoundError(
            f"Fashion-MNIST in {root}: {len(out['train_images'])} training images and {len(out['test_images'])} test "
            "images: the train-* and t10k-* files look swapped (the training set is the larger); restore their names")
    _FMNIST_CACHE.clear()
    _FMNIST_CACHE[cache_key] = dict(out)
    return out


@register_dataset("fashion_mnist")
def fashion_mnist(data_dir: PathArg, *, img_size: int = 28) -> DatasetArrays:
    """Fashion-MNIST (:func:`load_fashion_mnist`), 1×28×28, 10 named classes."""
    arrays = load_fashion_mnist(data_dir)
    return DatasetArrays(classes=FASHION_MNIST_CLASSES,
                         source=str(data_dir) if data_dir else "debian:dataset-fashion-mnist", **arrays)


# ---------------------------------------------------------------------------------------------
# torchvision datasets (never downloaded)
# ---------------------------------------------------------------------------------------------
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def _cifar(name: str, root: PathArg, *, img_size: int = 32) -> DatasetArrays:
    """CIFAR-10/100 from the extracted python version in ``root``, 3×32×32."""
    if root is None:
        raise DatasetNotFoundError(
            f"{name} needs --data-dir: the folder that holds {_CIFAR_FILES[name][0]}/ (the extracted python "
            "version from https://www.cs.toronto.edu/~kriz/cifar.html). It is never downloaded here; on a machine "
            f"with internet `torchvision.datasets.{'CIFAR10' if name == 'cifar10' else 'CIFAR100'}(root, download=True)` "
            "creates it"
        )
    folder, files = _CIFAR_FILES[name]
    missing = [f"{folder}/{f}" for f in files if not (Path(root) / folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{name} not found in {root}: missing {', '.join(missing)}. Extract the python version of the "
            "dataset (https://www.cs.toronto.edu/~kriz/cifar.html) into --data-dir; it is never downloaded here"
        )
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(f"{name} in {root} is unreadable ({exc}); extract it again") from exc

    def chw(arr) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()

    return DatasetArrays(
        train_images=chw(train.data), train_labels=torch.tensor(train.targets, dtype=torch.int64),
        test_images=chw(test.data), test_labels=torch.tensor(test.targets, dtype=torch.int64),
        classes=tuple(train.classes), source=str(root),
    )


for _name in _CIFAR_FILES:
    register_dataset(_name)(partial(_cifar, _name))


@register_dataset("imagefolder")
def imagefolder(data_dir: PathArg, *, img_size: int = 224) -> DatasetArrays:
    """``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (the test split), RGB, resized to
    ``img_size / 0.875`` and centre-cropped to ``img_size`` when fetched; ImageNet's mean/std."""
    import torchvision
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms import v2

    if data_dir is None:
        raise DatasetNotFoundError("imagefolder needs --data-dir with train/<class>/*.jpg and val/<class>/*.jpg")
    root = Path(data_dir)
    splits = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetNotFoundError(
                f"imagefolder: {root / split} is missing; --data-dir must hold train/<class>/<images> and "
                "val/<class>/<images> (val is used as the test split; the validation split is carved from train)"
            )
        try:
            splits[split] = torchvision.datasets.ImageFolder(str(root / split))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DatasetNotFoundError(f"imagefolder: {root / split}: {exc}") from exc
    if splits["train"].classes != splits["val"].classes:
        raise DatasetNotFoundError(f"imagefolder: train and val class folders differ under {root}")
    resize = v2.Compose([v2.PILToTensor(), v2.Resize(int(math.floor(img_size / 0.875)), antialias=True),
                         v2.CenterCrop(img_size)])

    def fetcher(folder) -> Callable[[int], torch.Tensor]:
        def fetch(i: int) -> torch.Tensor:
            path = folder.samples[i][0]
            try:
                img = folder.loader(path).convert("RGB")
            except OSError as exc:  # PIL's UnidentifiedImageError, a truncated file
                raise DatasetNotFoundError(f"imagefolder: {path} is not a readable image ({exc}); remove or replace "
                                           "it, then run again (--resume continues a started run)") from exc
            return resize(img)
        return fetch

    return DatasetArrays(
        train_fetch=fetcher(splits["train"]), train_labels=torch.tensor(splits["train"].targets),
        test_fetch=fetcher(splits["val"]), test_labels=torch.tensor(splits["val"].targets),
        classes=tuple(splits["train"].classes), input_size=(3, img_size, img_size),
        mean=tuple(IMAGENET_DEFAULT_MEAN), std=tuple(IMAGENET_DEFAULT_STD), source=str(data_dir),
    )

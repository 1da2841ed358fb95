"""repan_zoo.data: IDX reader, Fashion-MNIST from Debian's files, splits, flips, loaders, errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from repan_zoo.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    ImageSet,
    calibration_batches,
    load_fashion_mnist,
    load_splits,
    read_idx,
    train_loader,
)
from repan_zoo.errors import DatasetNotFoundError, RecipeError

HAVE_FMNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return load_splits("fashion_mnist", val_size=5000, train_subset=1000, test_subset=2000, seed=3)


def test_read_idx_roundtrip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", np.array([1, -7, 300], dtype=np.int32), gz=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert read_idx(tmp_path / "b").tolist() == [1, -7, 300]
    raw = gzip.open(tmp_path / "a.gz").read()
    gzip.open(tmp_path / "short.gz", "wb").write(raw[:-5])
    with pytest.raises(DatasetNotFoundError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    gzip.open(tmp_path / "junk.gz", "wb").write(b"PK\x03\x04junk")
    with pytest.raises(DatasetNotFoundError, match="not an IDX file"):
        read_idx(tmp_path / "junk.gz")


@needs_fmnist
def test_fashion_mnist_from_debian_files():
    arrays = load_fashion_mnist()
    assert arrays["train_images"].shape == (60000, 1, 28, 28) and arrays["train_images"].dtype == torch.uint8
    assert arrays["test_images"].shape == (10000, 1, 28, 28)
    assert sorted(arrays["train_labels"].unique().tolist()) == list(range(10))
    assert torch.bincount(arrays["test_labels"]).tolist() == [1000] * 10


@needs_fmnist
def test_fashion_mnist_files_with_wrong_content_are_named(tmp_path):
    """Files that read as IDX but hold the wrong data: a label outside 0..9 (was: loaded, then
    cross-entropy's index error mid-training) and train/test files swapped (was: trained on the
    10,000 test images and scored on the training set)."""
    import shutil

    for name in FASHION_MNIST_FILES.values():
        shutil.copy(FASHION_MNIST_DIR / f"{name}.gz", tmp_path / f"{name}.gz")
    labels = read_idx(tmp_path / "train-labels-idx1-ubyte.gz").copy()
    labels[7] = 200
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DatasetNotFoundError, match=r"train-labels-idx1-ubyte.gz.*label 200 .*0\.\.9"):
        load_fashion_mnist(tmp_path)
    for name in FASHION_MNIST_FILES.values():
        shutil.copy(FASHION_MNIST_DIR / f"{name}.gz", tmp_path / f"{name}.gz")
    for train, test in (("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"),
                        ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")):
        (tmp_path / f"{train}.gz").rename(tmp_path / "swap.gz")
        (tmp_path / f"{test}.gz").rename(tmp_path / f"{train}.gz")
        (tmp_path / "swap.gz").rename(tmp_path / f"{test}.gz")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)10000 training images and 60000 test images.*swapped"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(val_size=100.5), dict(train_subset="100"), dict(test_subset=True)])
def test_split_sizes_must_be_whole_numbers(kwargs):
    """(was: 'slice indices must be integers' from inside the split)."""
    with pytest.raises(RecipeError, match="whole number of images"):
        load_splits("fashion_mnist", **kwargs)


def test_missing_fashion_mnist_names_files_and_apt(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("fashion_mnist", tmp_path)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_cifar_names_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py/data_batch_1.*never downloaded"):
        load_splits("cifar10", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python/train"):
        load_splits("cifar100", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="needs --data-dir"):
        load_splits("cifar100", None)


def test_splits_val_from_train_never_test(fmnist):
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (1000, 5000, 2000)
    assert fmnist.train.images is fmnist.val.images  # both carved from the training files
    assert fmnist.test.images is not fmnist.train.images
    assert not set(fmnist.train.indices.tolist()) & set(fmnist.val.indices.tolist())
    again = load_splits("fashion_mnist", val_size=5000, train_subset=1000, seed=99)
    assert torch.equal(again.val.indices, fmnist.val.indices), "the split depends on split_seed only"
    other = load_splits("fashion_mnist", val_size=5000, train_subset=1000, split_seed=1)
    assert not torch.equal(other.val.indices, fmnist.val.indices)
    assert fmnist.mean == pytest.approx((0.2860,), abs=1e-3) and fmnist.std == pytest.approx((0.3530,), abs=1e-3)
    assert (fmnist.num_classes, fmnist.in_chans, fmnist.input_size) == (10, 1, (1, 28, 28))
    x = fmnist.normalizer()(fmnist.val[list(range(512))][0])
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_flips_are_a_function_of_seed_and_epoch():
    images = torch.arange(6 * 1 * 2 * 3, dtype=torch.uint8).reshape(6, 1, 2, 3)
    labels = torch.arange(6)
    a = ImageSet(labels, images, flip=True, seed=5)
    b = ImageSet(labels, images, flip=True, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, ya = a[list(range(6))]
    assert torch.equal(xa, b[list(range(6))][0]) and torch.equal(ya, labels)
    mask = a.flip_mask()
    assert torch.equal(xa[mask], images[mask].flip(-1)) and torch.equal(xa[~mask], images[~mask])
    masks = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        masks.add(tuple(a.flip_mask().tolist()))
    assert len(masks) > 1
    assert torch.equal(ImageSet(labels, images)[[0, 1]][0], images[:2])  # no flip for eval sets


def test_two_process_batches_union_to_one_process_batch():
    n = 64
    labels = torch.arange(n)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    data = ImageSet(labels, images, flip=True, seed=1)
    one = [y for _, y in train_loader(data, 16, seed=4, epoch=3)]
    r0 = [y for _, y in train_loader(data, 8, seed=4, epoch=3, rank=0, world_size=2)]
    r1 = [y for _, y in train_loader(data, 8, seed=4, epoch=3, rank=1, world_size=2)]
    assert len(one) == len(r0) == len(r1) == 4
    for k in range(4):
        assert sorted(torch.cat([r0[k], r1[k]]).tolist()) == sorted(one[k].tolist())
    other_epoch = [y for _, y in train_loader(data, 16, seed=4, epoch=4)]
    assert not torch.equal(torch.cat(one), torch.cat(other_epoch))


def test_calibration_batches_deterministic_unflipped():
    images = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    data = ImageSet(torch.zeros(40, dtype=torch.long), images, flip=True, seed=0)
    a = calibration_batches(data, 3, 8, seed=1, cycle=2)
    b = calibration_batches(data, 3, 8, seed=1, cycle=2)
    c = calibration_batches(data, 3, 8, seed=1, cycle=3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    rows = {tuple(r.flatten().tolist()) for r in images}
    assert all(tuple(r.flatten().tolist()) in rows for r in torch.cat(a))  # unflipped originals
    assert calibration_batches(data, 0, 8, seed=1, cycle=1) == []


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    splits = load_splits("imagefolder", tmp_path, val_size=4, img_size=16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    x, y = splits.train[[0, 1, 2]]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    assert splits.classes == ("cat", "dog") and splits.num_classes == 2
    with pytest.raises(DatasetNotFoundError, match="val"):
        load_splits("imagefolder", tmp_path / "train")
    (tmp_path / "val" / "cat" / "0.png").write_bytes(b"not an image")  # was PIL's error, reported as a disk failure
    test = load_splits("imagefolder", tmp_path, val_size=4, img_size=16).test
    with pytest.raises(DatasetNotFoundError, match=r"val/cat/0.png is not a readable image.*remove or replace"):
        test[list(range(len(test)))]


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_moving_the_splits_copies_each_shared_tensor_once():
    """train and val are subsets of one training set: on the device they share one copy of its
    images (moving the sets one by one made two, 47 MB each for Fashion-MNIST)."""
    data = load_splits("fashion_mnist", val_size=500, train_subset=1000, test_subset=100)
    assert data.train.images is data.val.images
    data.to("meta")
    assert data.train.images.device.type == data.val.images.device.type == data.test.images.device.type == "meta"
    assert data.train.images is data.val.images and data.train.labels is data.val.labels
    assert data.train.indices is not data.val.indices

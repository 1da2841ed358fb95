"""Training augmentation (issue #14, point 1): batched ops, draws a function of (seed, epoch, index)."""
import pytest
import torch

from repan_zoo.augment import AUGMENT_POLICIES, AugmentPolicy, get_augment_policy, register_augment_policy
from repan_zoo.data import ImageSet
from repan_zoo.errors import RecipeError


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def _set(policy, seed=3, n=64):
    x, y = _images(n)
    return ImageSet(y, x, augment=policy, seed=seed)


def test_draws_depend_on_seed_epoch_and_index_only():
    a, b = _set("crop_flip_erase"), _set("crop_flip_erase")
    a.set_epoch(5)
    b.set_epoch(5)
    full = a[list(range(64))][0]
    # another batch composition and order serves the same augmented image for the same index
    picked = b[[40, 3, 17]][0]
    assert torch.equal(picked, full[[40, 3, 17]])
    b.set_epoch(6)
    assert not torch.equal(b[list(range(64))][0], full)
    c = _set("crop_flip_erase", seed=4)
    c.set_epoch(5)
    assert not torch.equal(c[list(range(64))][0], full)


def test_flip_policy_is_the_earlier_flip_set():
    x, y = _images()
    old, new = ImageSet(y, x, flip=True, seed=7), ImageSet(y, x, augment="flip", seed=7)
    for s in (old, new):
        s.set_epoch(2)
    out = new[list(range(64))][0]
    assert torch.equal(old[list(range(64))][0], out)
    flipped = (out != x).flatten(1).any(1)
    assert 10 < int(flipped.sum()) < 54  # about half
    assert torch.equal(out[flipped], x[flipped].flip(-1))


def test_crop_shifts_the_image_inside_zero_padding():
    pol = AugmentPolicy("t_crop", crop_pad=4)
    x, _ = _images(32)
    d = pol.draw(32, (1, 28, 28), seed=0, epoch=0)
    out = pol.apply(x, d)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(32):
        dy, dx = (int(v) - 4 for v in d["crop"][i])
        ref = torch.zeros(1, 36, 28 + 8, dtype=torch.uint8)
        ref[:, 4:32, 4:32] = x[i]
        assert torch.equal(out[i], ref[:, 4 + dy:32 + dy, 4 + dx:32 + dx])
    assert (d["crop"] != 4).any()


def test_random_erasing_follows_zhong_et_al():
    pol = AugmentPolicy("t_erase", erase_p=0.5, erase_area=(0.02, 0.4), erase_aspect=(0.3, 1 / 0.3))
    n = 4000
    d = pol.draw(n, (1, 28, 28), seed=1, epoch=0)
    top, left, h, w = d["erase"].unbind(1)
    erased = h > 0
    assert 0.45 < float(erased.float().mean()) < 0.55
    area = (h * w)[erased].float() / (28 * 28)
    assert float(area.min()) >= 0.015 and float(area.max()) <= 0.42
    assert bool(((top + h) <= 28).all() and ((left + w) <= 28).all())
    x = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    rows = {k: (v if k == "noise" else v[:8]) for k, v in d.items()}
    out = pol.apply(x, rows)
    for i in range(8):
        changed = int((out[i] != 0).sum())
        assert changed <= int(h[i] * w[i])
        if h[i] > 0:
            assert changed > 0.9 * int(h[i] * w[i])  # random values in [0, 255] (RE-R)


def test_policies_are_a_registry_with_clear_errors():
    assert {"none", "flip", "crop_flip", "crop_flip_erase"} <= set(AUGMENT_POLICIES)
    with pytest.raises(RecipeError, match="unknown policy.*crop_flip_erase"):
        get_augment_policy("bogus")
    with pytest.raises(RecipeError, match="erase_p"):
        AugmentPolicy("bad", erase_p=1.5)
    with pytest.raises(RecipeError, match="already registered"):
        register_augment_policy(AugmentPolicy("flip"))
    assert get_augment_policy(None).name == "none" and not get_augment_policy("none").active


def test_recipe_records_and_checks_the_policy():
    from repan_zoo.annealing.config import TrainConfig

    assert TrainConfig().augment_policy().name == "flip"  # recipes from before the option
    assert TrainConfig(flip=False).augment_policy().name == "none"
    assert TrainConfig(augment="crop_flip_erase").augment_policy().erase_p == 0.5
    with pytest.raises(RecipeError, match="--no-flip"):
        TrainConfig(augment="crop_flip", flip=False)
    with pytest.raises(RecipeError, match="unknown policy"):
        TrainConfig(augment="nope")

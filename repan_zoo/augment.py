"""Training augmentation as batched tensor ops on uint8 images, deterministic per ``(seed, epoch)``.

A policy (:class:`AugmentPolicy`) is a value; policies register by name in
:data:`AUGMENT_POLICIES` (``register_augment_policy``), like the branch kinds and λ schedules.
Every random choice of an epoch is drawn once for the whole training set from generators
seeded by ``(seed, epoch)`` (:meth:`AugmentPolicy.draw`), so the image a step sees does not
depend on the number of processes, the batch order or a restart; the ops then run on whatever
device the batch is on (:meth:`AugmentPolicy.apply`), before normalisation:

* horizontal flip with probability ½ (the draw of the earlier ``flip=True`` sets, unchanged);
* random crop with zero padding: pad ``crop_pad`` pixels of value 0 on each side, crop back to
  the input size at a uniformly drawn offset (the CIFAR recipe of He et al., 2016);
* random erasing (Zhong et al., *Random Erasing Data Augmentation*, AAAI 2020, Alg. 1): with
  probability ``erase_p`` a rectangle of area ``S_e ~ U(erase_area) · H·W`` and aspect
  ``r_e ~ U(erase_aspect)`` (log-uniform here, as in timm and torchvision) at a uniform position
  is filled with random pixel values in [0, 255] (the paper's RE-R); a rectangle that does not
  fit is redrawn, up to ``erase_attempts`` times, then that image is left unerased.

Built-in policies: ``none``, ``flip``, ``crop_flip`` (pad 4) and ``crop_flip_erase`` (pad 4,
the paper's p = 0.5, S_e ∈ [0.02, 0.4], r_e ∈ [0.3, 1/0.3]).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F

from .errors import RecipeError

__all__ = ["AugmentPolicy", "AUGMENT_POLICIES", "register_augment_policy", "get_augment_policy", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), for independent generator streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


#: random erasing's noise comes from this many per-epoch textures (one drawn per image)
_NOISE_BANK = 64


@dataclass(frozen=True)
class AugmentPolicy:
    """One training augmentation policy (all fields are recorded in ``final.json``).

    Args:
        name: registry name.
        flip: random horizontal flip, p = ½.
        crop_pad: zero padding (pixels per side) of the random crop; 0 = no crop.
        erase_p: probability of random erasing per image; 0 = off.
        erase_area: range of the erased fraction of the image area (Zhong et al.: s_l, s_h).
        erase_aspect: range of the erased rectangle's aspect ratio h/w (r_1, 1/r_1).
        erase_attempts: redraws of a rectangle that does not fit before giving up on the image.
    """

    name: str
    flip: bool = False
    crop_pad: int = 0
    erase_p: float = 0.0
    erase_area: Tuple[float, float] = (0.02, 0.4)
    erase_aspect: Tuple[float, float] = (0.3, 1 / 0.3)
    erase_attempts: int = 10

    def __post_init__(self) -> None:
        lo, hi = self.erase_area
        alo, ahi = self.erase_aspect
        if self.crop_pad < 0 or not 0.0 <= self.erase_p <= 1.0 or not 0.0 < lo <= hi <= 1.0 \
                or not 0.0 < alo <= ahi or self.erase_attempts < 1:
            raise RecipeError(f"augmentation policy {self.name!r}: crop_pad ≥ 0, erase_p in [0, 1], "
                              f"0 < erase_area[0] ≤ erase_area[1] ≤ 1, 0 < erase_aspect[0] ≤ erase_aspect[1] "
                              f"and erase_attempts ≥ 1 are required (got {self.describe()})")

    @property
    def active(self) -> bool:
        return self.flip or self.crop_pad > 0 or self.erase_p > 0

    def describe(self) -> Dict[str, object]:
        d = asdict(self)
        d["erase_area"], d["erase_aspect"] = list(self.erase_area), [round(v, 6) for v in self.erase_aspect]
        return d

    # ------------------------------------------------------------------ the epoch's draws
    def draw(self, n: int, image_shape: Tuple[int, int, int], *, seed: int, epoch: int) -> Dict[str, torch.Tensor]:
        """Every random choice of one epoch for ``n`` images (CPU tensors indexed by position).

        Returns a dict with (only the parts the policy uses) ``flip`` bool ``[n]``,
        ``crop`` int64 ``[n, 2]`` (row, column offset in the padded image), ``erase`` int64
        ``[n, 4]`` (top, left, height, width; height 0 = not erased), ``noise_id`` int64 ``[n]``
        and ``noise`` uint8 ``[64, C, H, W]``.
        """
        c, h, w = image_shape
        out: Dict[str, torch.Tensor] = {}
        if self.flip:  # the stream of the original flip=True sets: same seed, same draw
            out["flip"] = torch.rand(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5F1B))) < 0.5
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xA6E7))
        if self.crop_pad > 0:
            out["crop"] = torch.randint(0, 2 * self.crop_pad + 1, (n, 2), generator=gen)
        if self.erase_p > 0:
            out["erase"] = self._draw_erase(n, h, w, gen)
            out["noise_id"] = torch.randint(0, _NOISE_BANK, (n,), generator=gen)
            out["noise"] = torch.randint(0, 256, (_NOISE_BANK, c, h, w), generator=gen, dtype=torch.uint8)
        return out

    def _draw_erase(self, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        a = self.erase_attempts
        apply = torch.rand(n, generator=gen) < self.erase_p
        area = torch.empty(n, a).uniform_(*self.erase_area, generator=gen) * (h * w)
        log_r = torch.empty(n, a).uniform_(math.log(self.erase_aspect[0]), math.log(self.erase_aspect[1]),
                                           generator=gen)
        eh = torch.sqrt(area * torch.exp(log_r)).round().long()
        ew = torch.sqrt(area / torch.exp(log_r)).round().long()
        fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
        ok = apply & (first >= 0)
        pick = first.clamp(min=0).unsqueeze(1)
        eh, ew = eh.gather(1, pick).squeeze(1), ew.gather(1, pick).squeeze(1)
        u = torch.rand(n, 2, generator=gen)
        top = (u[:, 0] * (h - eh + 1).clamp(min=1)).long()
        left = (u[:, 1] * (w - ew + 1).clamp(min=1)).long()
        zero = torch.zeros_like(eh)
        return torch.stack([top, left, torch.where(ok, eh, zero), torch.where(ok, ew, zero)], 1)

    @staticmethod
    def rows(draws: Dict[str, torch.Tensor], positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The part of an epoch's :meth:`draw` that a batch uses: the rows of the images at
        ``positions`` (int64 ``[B]``, on the draws' device), and the epoch's shared noise textures
        whole — what :meth:`apply` takes for that batch."""
        return {k: (v if k == "noise" else v[positions]) for k, v in draws.items()}

    # ------------------------------------------------------------------ the batch ops
    def apply(self, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment a batch ``x`` (uint8 ``[B, C, H, W]``, any device) with the epoch's draws
        ``params`` for these images (:meth:`draw`, rows already selected for the batch).
        Returns a new uint8 tensor of the same shape, device and memory format."""
        if "flip" in params:
            mask = params["flip"].to(x.device)
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
        b, c, h, w = x.shape
        if "crop" in params:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p))
            off = params["crop"].to(x.device)
            rows = (off[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (off[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
            x = x.gather(3, cols)
        if "erase" in params:
            box = params["erase"].to(x.device)
            ys = torch.arange(h, device=x.device).view(1, h, 1)
            xs = torch.arange(w, device=x.device).view(1, 1, w)
            top, left, eh, ew = (box[:, i].view(b, 1, 1) for i in range(4))
            inside = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew)
            noise = params["noise"].to(x.device)[params["noise_id"].to(x.device)]
            x = torch.where(inside.unsqueeze(1), noise, x)
        return x.contiguous()


#: name → policy; ``register_augment_policy`` adds one (``--augment NAME`` then finds it).
AUGMENT_POLICIES: Dict[str, AugmentPolicy] = {}


def register_augment_policy(policy: AugmentPolicy, *, overwrite: bool = False) -> AugmentPolicy:
    """Add ``policy`` to :data:`AUGMENT_POLICIES` under ``policy.name`` (an existing name raises
    :class:`~repan_zoo.errors.RecipeError` unless ``overwrite``)."""
    if policy.name in AUGMENT_POLICIES and not overwrite:
        raise RecipeError(f"augmentation policy {policy.name!r} is already registered")
    AUGMENT_POLICIES[policy.name] = policy
    return policy


def get_augment_policy(name: Union[None, str, AugmentPolicy], *, flip: bool = False) -> AugmentPolicy:
    """The registered policy ``name`` (a policy is returned as is; None = the older boolean
    ``flip``: ``flip`` or ``none``); an unknown name raises :class:`~repan_zoo.errors.RecipeError`
    listing the registered ones."""
    if isinstance(name, AugmentPolicy):
        return name
    key = ("flip" if flip else "none") if name is None else str(name)
    if key not in AUGMENT_POLICIES:
        raise RecipeError(f"--augment {key!r}: unknown policy; registered: {sorted(AUGMENT_POLICIES)} "
                          "(repan_zoo.augment.register_augment_policy adds one)")
    return AUGMENT_POLICIES[key]


for _p in (
    AugmentPolicy("none"),
    AugmentPolicy("flip", flip=True),
    AugmentPolicy("crop_flip", flip=True, crop_pad=4),
    AugmentPolicy("crop_flip_erase", flip=True, crop_pad=4, erase_p=0.5),
):
    register_augment_policy(_p)

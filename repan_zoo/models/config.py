"""The architecture schema: a network is data (:class:`NetCfg`), built by one generic class
(:class:`repan_zoo.models.RepNet`), like timm's byobnet.

A network is a stem (one Rep conv + ReLU, optionally followed by a 3×3/2 max-pool), stages
of blocks, and a classifier head. A stage is ``depth`` blocks of one type (:data:`BLOCK_TYPES`);
the first block of a stage carries its stride. Which extra branches each Rep block trains
with is a :class:`BranchRule`; a kind is kept only where it fits the block's shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

from ..blocks import branch_class

__all__ = ["BLOCK_TYPES", "BranchRule", "StageCfg", "NetCfg", "FeatureLevel"]

#: ``conv``: one k×k Rep conv + ReLU (RepVGG); ``dws``: depthwise 3×3 then pointwise 1×1 Rep
#: conv, each + ReLU (MobileNet-v1, MobileOne); ``basic`` / ``bottleneck``: ResNet blocks.
BLOCK_TYPES = ("conv", "dws", "basic", "bottleneck")


@dataclass(frozen=True)
class BranchRule:
    """Extra branch kinds (besides the k×k trunk) of a family's Rep blocks.

    ``kxk``: blocks with a kernel > 1; ``pointwise``: 1×1 blocks of the body (MobileOne's
    pointwise convs; ResNet's 1×1 convs stay trunk-only so that their BN is fused away);
    ``stem``: the stem's kinds, ``None`` = same as ``kxk``. The projection shortcut of a
    residual block is always trunk-only.
    """

    kxk: Tuple[str, ...] = ()
    pointwise: Tuple[str, ...] = ()
    stem: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        for kind in (*self.kxk, *self.pointwise, *(self.stem or ())):
            branch_class(kind)  # unknown kinds fail here, naming the registered ones

    @property
    def stem_kinds(self) -> Tuple[str, ...]:
        return self.kxk if self.stem is None else self.stem


@dataclass(frozen=True)
class StageCfg:
    """``depth`` blocks of type ``block`` with ``chs`` output channels at width 1 (ResNet: planes,
    ×expansion); the first block has stride ``stride``; the last ``se`` blocks get SE."""

    block: str
    depth: int
    chs: float
    stride: int = 2
    se: int = 0

    def __post_init__(self):
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}; known: {BLOCK_TYPES}")


@dataclass(frozen=True)
class FeatureLevel:
    """One entry of timm's ``feature_info``: the last module at a given reduction."""

    module: str
    num_chs: int
    reduction: int
    stage: int

    def as_dict(self) -> dict:
        return dict(num_chs=self.num_chs, reduction=self.reduction, module=self.module, stage=self.stage)


@dataclass(frozen=True)
class NetCfg:
    """A whole network: stem, stages, branch rule and width multiplier (see module docstring)."""

    family: str
    stages: Tuple[StageCfg, ...]
    stem_chs: float
    branches: BranchRule = BranchRule()
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_pool: bool = False
    width_mult: float = 1.0
    zero_init_last: bool = False

    # -- derived shapes ---------------------------------------------------------------------
    def channels(self, base: float) -> int:
        """``base`` channels scaled by ``width_mult`` (rounded, at least 1)."""
        return max(1, int(round(base * self.width_mult)))

    @property
    def stem_out(self) -> int:
        return self.channels(self.stem_chs)

    def stage_out(self, stage: StageCfg) -> int:
        expansion = 4 if stage.block == "bottleneck" else 1
        return self.channels(stage.chs) * expansion

    def feature_levels(self) -> List[FeatureLevel]:
        """timm ``feature_info``: the stem and every stage output, keeping the last module of each
        reduction (the stem is dropped when the first stage does not downsample)."""
        levels = [FeatureLevel("stem", self.stem_out, self.stem_stride, 0)]
        reduction = self.stem_stride * (2 if self.stem_pool else 1)
        for i, stage in enumerate(self.stages):
            reduction *= stage.stride
            levels.append(FeatureLevel(f"stages.{i}", self.stage_out(stage), reduction, i + 1))
        return [lv for j, lv in enumerate(levels) if j + 1 == len(levels) or levels[j + 1].reduction != lv.reduction]

    def output_size(self, size: int) -> int:
        """Spatial size of the last feature map for a ``size``×``size`` input (every stride-s conv
        and the max-pool pad k//2, so each divides the size rounding up)."""
        strides = [self.stem_stride] + ([2] if self.stem_pool else []) + [s.stride for s in self.stages]
        for s in strides:
            size = math.ceil(size / s)
        return size

    # -- variants ---------------------------------------------------------------------------
    def with_width(self, width_mult: float) -> "NetCfg":
        return replace(self, width_mult=width_mult)

    def with_kxk_branches(self, kinds: Sequence[str]) -> "NetCfg":
        """Override the extras of every k×k Rep block (stem included); 1×1 rules stay."""
        return replace(self, branches=BranchRule(kxk=tuple(kinds), pointwise=self.branches.pointwise))

    def for_small_input(self) -> "NetCfg":
        """Layout for 28×28 / 32×32 inputs (Fashion-MNIST, CIFAR): remove the first downsampling
        after the stem. A ResNet stem (k×k/2 conv + max-pool) becomes a 3×3/1 conv without pool
        (the CIFAR ResNet); otherwise the first strided stage gets stride 1 (RepVGG: stem /2,
        stages 1, 2, 2, 2 — 28→14→14→7→4→2)."""
        if self.stem_pool:
            return replace(self, stem_kernel=3, stem_stride=1, stem_pool=False)
        stages = list(self.stages)
        for i, stage in enumerate(stages):
            if stage.stride > 1:
                stages[i] = replace(stage, stride=1)
                break
        return replace(self, stages=tuple(stages))

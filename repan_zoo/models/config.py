"""The architecture schema: a network is data (:class:`NetCfg`), built by one generic class
(:class:`repan_zoo.models.RepNet`), like timm's byobnet.

A network is a stem (one Rep conv + ReLU, optionally followed by a 3×3/2 max-pool), stages
of blocks, and a classifier head. A stage is ``depth`` blocks of one registered type
(:mod:`.stages`: ``conv``, ``dws``, ``basic``, ``bottleneck``, more with
:func:`~repan_zoo.models.register_stage_block`); the first block of a stage carries its stride.
Which extra branches each Rep block trains with is a :class:`BranchRule`; a kind is kept only
where it fits the block's shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

from ..blocks import branch_class
from .stages import STAGE_BLOCKS, get_stage_block

__all__ = ["BLOCK_TYPES", "BranchRule", "StageCfg", "NetCfg", "FeatureLevel"]

#: the names of the registered stage block types (a live view of :data:`~.stages.STAGE_BLOCKS`):
#: ``conv``: one k×k Rep conv + ReLU (RepVGG); ``dws``: depthwise 3×3 then pointwise 1×1 Rep
#: conv, each + ReLU (MobileNet-v1, MobileOne); ``basic`` / ``bottleneck``: ResNet blocks.
BLOCK_TYPES = STAGE_BLOCKS.keys()


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
    """``depth`` blocks of the registered type ``block`` (:mod:`.stages`) with ``chs`` output
    channels at width 1 (×the type's expansion: ResNet's planes); the first block has stride
    ``stride``; the last ``se`` blocks get SE. An unknown type raises
    :class:`~repan_zoo.errors.ModelConfigError` naming the registered ones."""

    block: str
    depth: int
    chs: float
    stride: int = 2
    se: int = 0

    def __post_init__(self):
        get_stage_block(self.block)


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
    #: timm's ``output_stride``: the stages past this reduction keep stride 1 and dilate instead
    output_stride: int = 32

    # -- derived shapes ---------------------------------------------------------------------
    def channels(self, base: float) -> int:
        """``base`` channels scaled by ``width_mult`` (rounded, at least 1)."""
        return max(1, int(round(base * self.width_mult)))

    @property
    def stem_out(self) -> int:
        return self.channels(self.stem_chs)

    def stage_out(self, stage: StageCfg) -> int:
        return self.channels(stage.chs) * get_stage_block(stage.block).expansion

    @property
    def has_residual_blocks(self) -> bool:
        """Whether any stage is of a residual type (one whose residual branches stochastic depth,
        ``drop_path_rate``, can drop)."""
        return any(get_stage_block(stage.block).residual for stage in self.stages)

    @property
    def stem_reduction(self) -> int:
        """Reduction after the stem (and its max-pool): the smallest possible ``output_stride``."""
        return self.stem_stride * (2 if self.stem_pool else 1)

    def stage_geometry(self) -> List[Tuple[int, int, int]]:
        """``(stride, first_dilation, dilation)`` of every stage under :attr:`output_stride`, by timm's
        rule (``timm.models.resnet.make_blocks``): a stage whose stride would take the reduction past
        ``output_stride`` gets stride 1 and multiplies the dilation by its stride instead. The first
        block of a stage keeps the previous dilation (``first_dilation``), the others use the new one."""
        reduction, dilation, out = self.stem_reduction, 1, []
        for stage in self.stages:
            first, stride = dilation, stage.stride
            if reduction * stride > self.output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            out.append((stride, first, dilation))
        return out

    def reductions(self) -> List[int]:
        """Nominal reductions (input pixels per feature pixel, ``output_stride`` 32) of the stem and of
        every stage output."""
        out = [self.stem_stride]
        reduction = self.stem_reduction
        for stage in self.stages:
            reduction *= stage.stride
            out.append(reduction)
        return out

    def feature_levels(self) -> List[FeatureLevel]:
        """timm ``feature_info``: the stem and every stage output, keeping the last module of each
        nominal reduction (the stem is dropped when the first stage does not downsample). The levels
        do not depend on ``output_stride`` (as in timm); their ``reduction`` is the actual one, capped
        at ``output_stride``."""
        nominal = self.reductions()
        levels = [FeatureLevel("stem", self.stem_out, self.stem_stride, 0)]
        for i, stage in enumerate(self.stages):
            levels.append(FeatureLevel(f"stages.{i}", self.stage_out(stage), min(nominal[i + 1], self.output_stride), i + 1))
        return [lv for j, lv in enumerate(levels) if j + 1 == len(levels) or nominal[j + 1] != nominal[j]]

    def output_size(self, size: int) -> int:
        """Spatial size of the last feature map for a ``size``×``size`` input (every stride-s conv
        and the max-pool pad k//2, so each divides the size rounding up)."""
        strides = [self.stem_stride] + ([2] if self.stem_pool else []) + [g[0] for g in self.stage_geometry()]
        for s in strides:
            size = math.ceil(size / s)
        return size

    # -- variants ---------------------------------------------------------------------------
    def with_width(self, width_mult: float) -> "NetCfg":
        return replace(self, width_mult=width_mult)

    def with_output_stride(self, output_stride: int) -> "NetCfg":
        """timm's ``output_stride`` (8, 16 for segmentation / detection): the stages past it are
        dilated instead of strided (:meth:`stage_geometry`). Allowed: any reduction the network
        reaches (from :attr:`stem_reduction` up), or anything at or above its total reduction
        (nothing dilated). Raises ``ModelConfigError`` otherwise, listing the allowed values."""
        from ..errors import ModelConfigError

        nominal = self.reductions()[1:]
        allowed = sorted({r for r in [self.stem_reduction, *nominal] if r >= self.stem_reduction})
        if not isinstance(output_stride, int) or isinstance(output_stride, bool) or not (
            output_stride in allowed or output_stride >= nominal[-1]
        ):
            raise ModelConfigError(
                f"output_stride={output_stride!r} is not a reduction this network reaches; use one of "
                f"{allowed} (the stages past it are dilated instead of strided)"
            )
        return replace(self, output_stride=output_stride)

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

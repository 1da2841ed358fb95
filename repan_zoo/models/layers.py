"""Network layers built from :class:`~repan_zoo.blocks.RepBlock` (activations stay outside the block).

* :class:`RepConvAct` — one Rep conv → optional SE → ReLU: a layer of a plain (VGG-style)
  network (RepVGG, MobileOne, MobileNet-v1, every stem).
* :class:`RepBasicBlock`, :class:`RepBottleneck` — ResNet residual blocks whose convs *and*
  the projection shortcut are Rep blocks, so that the deploy model holds no BatchNorm.

Every conv that should fuse is a Rep block, so ``reparameterize`` / ``unfold`` / RepAn
(Algorithm 1) reach all of them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, create_attn

from ..blocks import BlockSpec, RepBlock, branch_class

__all__ = ["fitting_branches", "rep_conv", "RepConvAct", "RepBasicBlock", "RepBottleneck", "zero_init_block_output"]


def fitting_branches(
    kinds: Sequence[str], in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
    dilation: int = 1,
) -> Tuple[str, ...]:
    """The branch kinds of ``kinds`` that fuse into a ``kernel_size`` conv of this shape, in order.

    "Where shapes allow": e.g. RepVGG's identity branch only where stride is 1 and
    in == out, DBB's average-pooling branch only where in == out (each kind's own
    ``unfit_reason`` decides, so the table never repeats the rules).
    """
    spec = BlockSpec(in_chs, out_chs, kernel_size, stride, groups, dilation)
    return tuple(k for k in kinds if branch_class(k).unfit_reason(spec) is None)


def rep_conv(
    in_chs: int,
    out_chs: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    branches: Sequence[str] = (),
    deploy: bool = False,
    dilation: int = 1,
    layout_stride: Optional[int] = None,
) -> RepBlock:
    """A Rep block with the kinds of ``branches`` that fit it (trunk only when none do);
    ``dilation`` spaces the taps of a k×k block (1×1 blocks ignore it). ``layout_stride`` (default
    ``stride``) is the stride the branch kinds are chosen for: a stage dilated for ``output_stride``
    keeps the branches of its nominal stride, so that it has the undilated model's state dict."""
    dilation = dilation if kernel_size > 1 else 1
    layout = stride if layout_stride is None else layout_stride
    kinds = fitting_branches(branches, in_chs, out_chs, kernel_size, layout, groups, dilation)
    kinds = fitting_branches(kinds, in_chs, out_chs, kernel_size, stride, groups, dilation)
    return RepBlock(in_chs, out_chs, kernel_size, stride, groups, branches=kinds, dilation=dilation, deploy=deploy)


@torch.no_grad()
def zero_init_block_output(block: RepBlock) -> None:
    """Zero the output BN γ of every branch of a (train-form) Rep block: the block starts as a
    constant (β) — timm's ``zero_init_last`` for the last conv of a residual branch."""
    if block.trunk is None:
        return
    for branch in [block.trunk, *block.extras]:
        bns = branch.bns()
        if bns:
            bns[-1].weight.zero_()


class RepConvAct(nn.Module):
    """``relu(attn(rep(x)))``: a Rep conv, an optional squeeze-excite (timm's ``SEModule``, as in
    MobileOne-S4) and a ReLU. The deploy form is one conv (+ SE) + ReLU. Without SE ``attn`` is
    ``None`` rather than an identity module: one module call less per layer in the deploy graph."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        branches: Sequence[str] = (),
        *,
        se: bool = False,
        dilation: int = 1,
        layout_stride: Optional[int] = None,
        deploy: bool = False,
    ):
        super().__init__()
        self.conv = rep_conv(in_chs, out_chs, kernel_size, stride, groups, branches, deploy, dilation, layout_stride)
        self.attn = create_attn("se", out_chs) if se else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.act(x)


def _shortcut(in_chs: int, out_chs: int, stride: int, deploy: bool) -> Optional[RepBlock]:
    """ResNet's projection shortcut (1×1 conv + BN, stride) as a trunk-only 1×1 Rep block."""
    if stride == 1 and in_chs == out_chs:
        return None
    return rep_conv(in_chs, out_chs, 1, stride, deploy=deploy)


class _RepResidualBlock(nn.Module):
    """The frame the ResNet blocks share: ``act(drop_path(body(x)) + shortcut(x))``. A subclass
    builds its body convs in :meth:`_body` (in forward order, so that state-dict keys and the
    random draws of initialisation follow it) and names its output activation ``out_act``; the shortcut is a trunk-only 1×1 Rep projection where shapes change."""

    expansion = 1
    out_act = "act2"

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        kxk_branches: Sequence[str] = (),
        pointwise_branches: Sequence[str] = (),
        drop_path_rate: float = 0.0,
        first_dilation: int = 1,
        dilation: int = 1,
        layout_stride: Optional[int] = None,
        deploy: bool = False,
    ):
        super().__init__()
        out_chs = planes * self.expansion
        self._body(in_chs, planes, out_chs, stride, kxk=kxk_branches, pointwise=pointwise_branches,
                   first_dilation=first_dilation, dilation=dilation, layout_stride=layout_stride, deploy=deploy)
        self.downsample = _shortcut(in_chs, out_chs, stride, deploy)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        setattr(self, self.out_act, nn.ReLU(inplace=True))

    def _body(self, in_chs: int, planes: int, out_chs: int, stride: int, **kw) -> None:
        raise NotImplementedError


class RepBasicBlock(_RepResidualBlock):
    """ResNet basic block: ``act(conv2(act(conv1(x))) + shortcut(x))`` with 3×3 Rep convs
    (``kxk_branches`` where they fit) and a trunk-only 1×1 Rep projection shortcut. As in timm,
    ``conv1`` is dilated by ``first_dilation`` and ``conv2`` by ``dilation`` (``output_stride``);
    ``layout_stride``: see :func:`rep_conv`."""

    expansion = 1
    out_act = "act2"

    def _body(self, in_chs, planes, out_chs, stride, *, kxk, pointwise, first_dilation, dilation, layout_stride,
              deploy) -> None:
        self.conv1 = rep_conv(in_chs, planes, 3, stride, branches=kxk, deploy=deploy, dilation=first_dilation,
                              layout_stride=layout_stride)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = rep_conv(planes, out_chs, 3, 1, branches=kxk, deploy=deploy, dilation=dilation)

    def zero_init_last(self) -> None:
        zero_init_block_output(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)
        x = self.act1(self.conv1(x))
        x = self.conv2(x)
        return self.act2(self.drop_path(x) + shortcut)


class RepBottleneck(_RepResidualBlock):
    """ResNet bottleneck (torchvision / timm "v1.5": stride on the 3×3): 1×1 → 3×3 → 1×1 Rep convs,
    ×4 expansion, trunk-only 1×1 Rep projection shortcut; the 3×3 is dilated by ``first_dilation``
    (timm's rule; ``dilation`` is accepted for the same signature as the basic block)."""

    expansion = 4
    out_act = "act3"

    def _body(self, in_chs, planes, out_chs, stride, *, kxk, pointwise, first_dilation, dilation, layout_stride,
              deploy) -> None:
        self.conv1 = rep_conv(in_chs, planes, 1, 1, branches=pointwise, deploy=deploy)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = rep_conv(planes, planes, 3, stride, branches=kxk, deploy=deploy, dilation=first_dilation,
                              layout_stride=layout_stride)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = rep_conv(planes, out_chs, 1, 1, branches=pointwise, deploy=deploy)

    def zero_init_last(self) -> None:
        zero_init_block_output(self.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.conv3(x)
        return self.act3(self.drop_path(x) + shortcut)

"""Branch kinds of a :class:`~repan_zoo.blocks.RepBlock`, registered by name.

Every branch answers one question: *what single convolution am I, in the trunk's
shape?* — :meth:`Branch.kernel_bias` returns ``(kernel, bias)`` with kernel shape
``[C_out, C_in/groups, k, k]`` in float64, from which Eq. (1) adds the branches up.

Registered kinds (see :data:`BRANCH_KINDS`):

============  ==============================================  ===========================
kind          module                                          fuses with
============  ==============================================  ===========================
conv_kxk      k×k conv + BN (the trunk, RepVGG, MobileOne)     Eq. 2
conv_1x1      1×1 conv + BN (RepVGG, MobileOne scale branch)   Eq. 2, centre pad
identity      BN of the input (RepVGG residual, Eq. 3 BN_res)  identity kernel, Eq. 2
avg           k×k average pool + BN (DBB)                      avg kernel, Eq. 2
1x1_kxk       1×1 conv + BN → k×k conv + BN (DBB)              sequential merge, Eq. 2
conv_kx1      k×1 conv + BN (ACNet)                            Eq. 2, centre pad
conv_1xk      1×k conv + BN (ACNet)                            Eq. 2, centre pad
============  ==============================================  ===========================

A new kind is a subclass registered with :func:`register_branch` (the contract it must keep is
on :class:`Branch`)::

    @register_branch("my_kind")
    class MyBranch(Branch):
        @classmethod
        def unfit_reason(cls, spec):                  # None: fits this block's shape
            return None if spec.kernel_size >= 3 else "needs a 3x3 window"

        def __init__(self, spec):
            super().__init__(spec)                    # checks unfit_reason, keeps ``self.spec``
            self.conv = nn.Conv2d(...)                # bias-free conv(s) ...
            self.bn = nn.BatchNorm2d(spec.out_channels)  # ... the output BN last

        def forward(self, x):
            return self.bn(self.conv(x))

        def kernel_bias(self):                        # the same function as one k×k conv
            kernel, bias = ...                        # float64, built with repan_zoo.algebra
            return KernelBias(kernel, bias)

Then ``RepBlock(..., branches=("my_kind",))``, a family's ``BranchRule`` or ``--branches my_kind``
use it; ``tests/test_blocks.py`` asks for a fusion case of every registered kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import algebra
from ..algebra import KernelBias
from ..errors import UnfusableBranchError
from .bn import bn_params, is_bn_like

__all__ = [
    "BlockSpec",
    "Branch",
    "BRANCH_KINDS",
    "register_branch",
    "branch_class",
    "create_branch",
    "bn_params",  # re-exported from .bn (its home)
    "is_bn_like",  # re-exported from .bn
]


@dataclass(frozen=True)
class BlockSpec:
    """The shape of the single conv a Rep block fuses into.

    ``dilation`` spaces the k×k taps (timm's ``output_stride`` < 32); every branch is built with
    the same tap spacing (a 1×1 kernel and the identity sit on the centre tap, a k×1/1×k kernel
    on the centre column/row, average pooling averages the dilated taps), so each still fuses
    exactly into the dilated k×k conv."""

    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    groups: int = 1
    dilation: int = 1

    @property
    def padding(self) -> int:
        """Zero padding that keeps the output centred: ``dilation · (k // 2)`` pixels per side."""
        return self.dilation * (self.kernel_size // 2)

    def __post_init__(self):
        if self.kernel_size % 2 == 0:
            raise UnfusableBranchError(
                f"kernel_size={self.kernel_size}: Rep blocks need an odd kernel so that smaller branches "
                "can be centred in it; use 1, 3, 5, ..."
            )
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise UnfusableBranchError(
                f"in_channels={self.in_channels} and out_channels={self.out_channels} must both be divisible "
                f"by groups={self.groups}"
            )
        if not isinstance(self.dilation, int) or self.dilation < 1:
            raise UnfusableBranchError(f"dilation={self.dilation!r} must be an integer ≥ 1")


def _conv_kernel_bias(conv: nn.Conv2d) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    (kernel,) = algebra.as_fusion_dtype(conv.weight.detach())
    bias = None if conv.bias is None else algebra.as_fusion_dtype(conv.bias.detach())[0]
    return kernel, bias


class Branch(nn.Module):
    """Base class: one parallel branch of a Rep block. A subclass (a *kind*, registered with
    :func:`register_branch`) keeps this contract, on which fusion, ``unfold``, RepAn's expansion
    and BN calibration rely:

    * ``__init__(spec)`` takes only the block's :class:`BlockSpec` and calls ``super().__init__(spec)``
      (which refuses a spec the kind cannot fuse into, see :meth:`unfit_reason`). Its convs carry the
      block's stride and tap spacing (``spec.dilation``) and ``spec.groups``.
    * ``forward(x)`` maps ``[N, C_in, H, W]`` to ``[N, C_out, ⌈H/stride⌉, ⌈W/stride⌉]`` and is, in
      eval mode, an affine map: convs and BatchNorms (no activation), so that it is one conv.
    * :meth:`kernel_bias` returns that conv: ``KernelBias(kernel, bias)`` in float64, kernel
      ``[C_out, C_in/groups, k, k]`` in the block's k×k window (smaller kernels centred, e.g.
      :func:`repan_zoo.algebra.pad_kernel`), bias ``[C_out]``; the block's fused conv is
      ``trunk + λ · Σ extras`` of these (Eq. 3/5). It must hold for the whole output, borders included.
    * :meth:`bns` lists the BN-like layers in forward order, **the output BN last**: a fresh branch
      (``init_branch_``) gets γ = ``branch_gamma`` on ``bns()[-1]`` (how much it adds at first),
      ``zero_init_last`` zeroes it, and :func:`repan_zoo.calibrate_bn` calibrates nested BNs depth by
      depth in this order. :meth:`convs` lists the convs that ``init_branch_`` redraws (He-normal).
    * :attr:`fresh` is ``True`` from ``init_branch_`` (expansion, ``unfold``) until the first
      :func:`repan_zoo.calibrate_bn`, whose BN statistics then come from the data instead of keeping
      the branch's function (a fresh BN has none to keep); loading a checkpoint clears it.
    * :attr:`uncalibrated` is ``True`` on a trunk whose BN statistics the Restore rule invented
      (:meth:`RepBlock.unfold` without a previous trunk BN to inherit, e.g. deploy weights loaded into
      the train form): its eval function is exact, but training mode would replace the statistics by
      batch statistics. :func:`repan_zoo.calibrate_bn`, loading a train-form state dict, or the first
      training-mode forward (which warns, :class:`~repan_zoo.errors.UncalibratedBNWarning`) clear it.
    """

    kind: str = ""
    #: set by ``init_branch_`` (``unfold``/expansion) for branches whose BNs have no function to keep
    #: yet: :func:`repan_zoo.calibrate_bn` gives them the batch statistics, then clears it.
    fresh: bool = False
    #: set by :meth:`RepBlock.unfold` on a trunk whose BN statistics no data estimated (see above)
    uncalibrated: bool = False
    #: bookkeeping that no scripted forward reads (RepBlock reads ``uncalibrated`` only outside
    #: TorchScript): TorchScript skips it (under ``from __future__ import annotations``
    #: the class annotation is the string ``'bool'``, which ``torch.jit.script`` cannot resolve for an
    #: instance attribute, so every branch ``init_branch_`` flagged made its model unscriptable)
    __jit_ignored_attributes__ = ["fresh", "uncalibrated"]

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.check(spec)
        self.spec = spec

    @classmethod
    def unfit_reason(cls, spec: BlockSpec) -> Optional[str]:
        """Why this kind cannot be fused into ``spec``'s conv, or ``None`` when it can (the model
        builders keep a kind only where this is ``None``: "where shapes allow")."""
        return None

    @classmethod
    def check(cls, spec: BlockSpec) -> None:
        """Raises:
            UnfusableBranchError: :meth:`unfit_reason` names a reason, quoted in the message."""
        reason = cls.unfit_reason(spec)
        if reason:
            raise UnfusableBranchError(f"branch {cls.kind!r} cannot be fused into {spec}: {reason}")

    def kernel_bias(self) -> KernelBias:  # pragma: no cover - abstract
        """The eval-mode function of this branch as one conv in the block's window.

        Returns:
            ``KernelBias(kernel, bias)``, float64: kernel ``[C_out, C_in/groups, k, k]``, bias ``[C_out]``.

        Raises:
            UnfusableBranchError: a layer that is not a fusable BN (:func:`bn_params`).
        """
        raise NotImplementedError

    def convs(self) -> List[nn.Conv2d]:
        """The convs of this branch, in forward order (``init_branch_`` redraws them)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def bns(self) -> List[nn.Module]:
        """The BN-like layers of this branch (:func:`is_bn_like`), in forward order: the output
        BN (the one that scales what the branch adds) last. The default, module registration
        order, is right when the submodules are assigned in forward order; override it otherwise."""
        return [m for m in self.modules() if is_bn_like(m)]


BRANCH_KINDS: Dict[str, Type[Branch]] = {}


def register_branch(kind: str) -> Callable[[Type[Branch]], Type[Branch]]:
    """Class decorator: make a :class:`Branch` subclass (keeping its contract) available by name,
    in ``RepBlock(..., branches=(kind, ...))``, ``BranchRule`` and ``--branches``.

    Raises:
        ValueError: ``kind`` is already registered.
    """

    def wrap(cls: Type[Branch]) -> Type[Branch]:
        if kind in BRANCH_KINDS:
            raise ValueError(f"branch kind {kind!r} is already registered by {BRANCH_KINDS[kind].__name__}")
        cls.kind = kind
        BRANCH_KINDS[kind] = cls
        return cls

    return wrap


def branch_class(kind: str) -> Type[Branch]:
    """The registered :class:`Branch` subclass of a kind name.

    Raises:
        UnfusableBranchError: unknown kind; the message lists the registered ones.
    """
    try:
        return BRANCH_KINDS[kind]
    except KeyError:
        raise UnfusableBranchError(
            f"unknown branch kind {kind!r}; registered kinds: {sorted(BRANCH_KINDS)} "
            "(register new ones with repan_zoo.blocks.register_branch)"
        ) from None


def create_branch(kind: str, spec: BlockSpec) -> Branch:
    """Build a branch of a registered kind for a block of shape ``spec``."""
    return branch_class(kind)(spec)


class _ConvBN(Branch):
    """kh×kw conv (no bias) + BN, centred in the block's k×k window."""

    window: Tuple[Optional[int], Optional[int]] = (None, None)  # None = the block's k

    @classmethod
    def _size(cls, spec: BlockSpec) -> Tuple[int, int]:
        kh, kw = cls.window
        return (kh or spec.kernel_size, kw or spec.kernel_size)

    @classmethod
    def unfit_reason(cls, spec: BlockSpec) -> Optional[str]:
        kh, kw = cls._size(spec)
        if kh > spec.kernel_size or kw > spec.kernel_size:
            return f"a {kh}x{kw} kernel does not fit inside the block's {spec.kernel_size}x{spec.kernel_size} kernel"
        return None

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        kh, kw = self._size(spec)
        d = spec.dilation
        self.conv = nn.Conv2d(
            spec.in_channels, spec.out_channels, (kh, kw), spec.stride, (d * (kh // 2), d * (kw // 2)),
            dilation=(d if kh > 1 else 1, d if kw > 1 else 1), groups=spec.groups, bias=False,
        )
        self.bn = nn.BatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def kernel_bias(self) -> KernelBias:
        kernel, bias = _conv_kernel_bias(self.conv)
        kernel, bias = algebra.fuse_conv_bn(kernel, bias, bn_params(self.bn))
        k = self.spec.kernel_size
        return KernelBias(algebra.pad_kernel(kernel, (k, k)), bias)


@register_branch("conv_kxk")
class ConvKxK(_ConvBN):
    """The k×k conv+BN branch (the trunk of every Rep block)."""


@register_branch("conv_1x1")
class Conv1x1(_ConvBN):
    window = (1, 1)


@register_branch("conv_kx1")
class ConvKx1(_ConvBN):
    window = (None, 1)


@register_branch("conv_1xk")
class Conv1xK(_ConvBN):
    window = (1, None)


def _same_shape_reason(spec: BlockSpec, what: str) -> Optional[str]:
    if spec.in_channels != spec.out_channels:
        return f"{what} needs in_channels == out_channels (got {spec.in_channels} -> {spec.out_channels})"
    return None


@register_branch("identity")
class IdentityBN(Branch):
    """BN of the block's input (RepVGG's identity branch, Eq. 3's BN_res)."""

    @classmethod
    def unfit_reason(cls, spec: BlockSpec) -> Optional[str]:
        if spec.stride != 1:
            return f"an identity branch needs stride 1 (got stride {spec.stride})"
        return _same_shape_reason(spec, "an identity branch")

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        self.bn = nn.BatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def kernel_bias(self) -> KernelBias:
        bn = bn_params(self.bn)
        k = self.spec.kernel_size
        kernel = algebra.identity_kernel(self.spec.out_channels, self.spec.groups, (k, k), bn.weight)
        return algebra.fuse_conv_bn(kernel, None, bn)


@register_branch("avg")
class AvgPoolBN(Branch):
    """k×k average pooling (zero padding counted, like a conv) + BN (DBB). In a dilated block
    (``spec.dilation`` > 1) the pool averages the k×k dilated taps of the trunk's window — a
    fixed depthwise conv, since ``nn.AvgPool2d`` has no dilation."""

    @classmethod
    def unfit_reason(cls, spec: BlockSpec) -> Optional[str]:
        return _same_shape_reason(spec, "an average-pooling branch")

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        k = spec.kernel_size
        if spec.dilation == 1:
            self.pool: nn.Module = nn.AvgPool2d(k, spec.stride, k // 2, count_include_pad=True)
        else:
            self.pool = DilatedAvgPool2d(k, spec.stride, spec.dilation)
        self.bn = nn.BatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))

    def kernel_bias(self) -> KernelBias:
        bn = bn_params(self.bn)
        kernel = algebra.avg_pool_kernel(self.spec.out_channels, self.spec.groups, self.spec.kernel_size, bn.weight)
        return algebra.fuse_conv_bn(kernel, None, bn)


class DilatedAvgPool2d(nn.Module):
    """Mean of the k×k taps spaced ``dilation`` apart, zero padding counted: what ``nn.AvgPool2d(k,
    stride, k // 2, count_include_pad=True)`` is for dilation 1. Computed as a fixed depthwise conv
    of ``1/k²`` (built in the input's dtype and device); [N, C, H, W] → [N, C, ⌈H/stride⌉, ⌈W/stride⌉]."""

    def __init__(self, kernel_size: int, stride: int, dilation: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        kernel = torch.full((x.shape[1], 1, k, k), 1.0 / (k * k), dtype=x.dtype, device=x.device)
        return F.conv2d(x, kernel, None, self.stride, self.dilation * (k // 2), self.dilation, x.shape[1])


class BNAndPad(nn.Module):
    """BN followed by padding with the BN's own eval-mode offset ``β - γμ/σ`` instead of zeros.

    A 1×1 conv + BN followed by a zero-padded k×k conv is *not* one k×k conv at the
    borders: the zeros would have to be the BN's offset. Padding with that offset makes
    the 1×1→k×k branch fuse exactly on the whole map (DBB's fix of a known fusion bug).
    """

    def __init__(self, channels: int, pad: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.pad > 0:
            bn = self.bn
            assert bn.running_mean is not None and bn.running_var is not None
            offset = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
            offset = offset.reshape(1, -1, 1, 1).to(y.dtype)
            # zero-pad (y - offset), add offset back: the border holds the offset, the inside is y
            y = F.pad(y - offset, [self.pad] * 4) + offset
        return y


@register_branch("1x1_kxk")
class Seq1x1KxK(Branch):
    """1×1 conv + BN → k×k conv + BN (DBB's sequential branch), with offset padding in between."""

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        mid = spec.in_channels
        k = spec.kernel_size
        self.conv1 = nn.Conv2d(spec.in_channels, mid, 1, 1, 0, groups=spec.groups, bias=False)
        self.bn_pad = BNAndPad(mid, spec.padding)
        self.conv2 = nn.Conv2d(
            mid, spec.out_channels, k, spec.stride, 0, dilation=spec.dilation, groups=spec.groups, bias=False
        )
        self.bn2 = nn.BatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn_pad(self.conv1(x))))

    def kernel_bias(self) -> KernelBias:
        k1, b1 = _conv_kernel_bias(self.conv1)
        first = algebra.fuse_conv_bn(k1, b1, bn_params(self.bn_pad.bn))
        k2, b2 = _conv_kernel_bias(self.conv2)
        second = algebra.fuse_conv_bn(k2, b2, bn_params(self.bn2))
        return algebra.fuse_1x1_kxk(first, second, self.spec.groups)

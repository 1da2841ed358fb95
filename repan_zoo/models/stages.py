"""Stage block types of a :class:`~repan_zoo.models.RepNet`, registered by name, like the branch
kinds (:mod:`repan_zoo.blocks.branches`) and the λ schedules.

A stage is ``depth`` blocks of one type (the ``block`` of a :class:`~repan_zoo.models.StageCfg`);
a type is a builder registered in :data:`STAGE_BLOCKS` with :func:`register_stage_block`, which
turns the geometry of one block (:class:`BlockArgs`) into the modules that compute it:

============  ==================================================================  =========  ========
type          modules (every conv a Rep block, activations outside it)             expansion  residual
============  ==================================================================  =========  ========
conv          one k×k Rep conv + ReLU (RepVGG)                                     1          no
dws           depthwise 3×3 then pointwise 1×1 Rep conv, each + ReLU (MobileOne)   1          no
basic         ResNet basic block (:class:`~repan_zoo.models.RepBasicBlock`)        1          yes
bottleneck    ResNet bottleneck (:class:`~repan_zoo.models.RepBottleneck`)         4          yes
============  ==================================================================  =========  ========

Adding a type (one file, plus the family that uses it in :mod:`.families`)::

    @register_stage_block("my_block", residual=True)
    def my_block(a: BlockArgs) -> List[nn.Module]:
        return [MyBlock(a.in_chs, a.out_chs, a.stride, kxk=a.branches.kxk, deploy=a.deploy,
                        drop_path_rate=a.drop_path_rate)]

The contract of a builder's modules (what :class:`RepNet` relies on):

* they map ``[N, in_chs, H, W]`` to ``[N, out_chs · expansion, ⌈H/stride⌉, ⌈W/stride⌉]``;
* every conv that should fuse is a :class:`~repan_zoo.blocks.RepBlock` (``rep_conv`` builds one
  with the branch kinds that fit), so ``reparameterize`` / ``unfold`` / RepAn reach it;
* their parameters and buffers live in ``nn.Conv2d``, BatchNorm, ``nn.Linear`` or
  :class:`~repan_zoo.blocks.RepBlock` modules (:meth:`RepNet._init_weights` writes exactly those,
  and refuses a model with anything left unwritten);
* ``build`` only constructs modules (on the ``meta`` device; no random draws): the weights are
  drawn afterwards, module by module, in ``named_modules()`` order;
* a module with a ``zero_init_last()`` method gets it called when the config asks for
  ``zero_init_last`` (timm's convention: the last BN γ of a residual branch starts at 0);
* a ``residual`` type takes ``drop_path_rate`` (stochastic depth, timm's linear rule over the
  residual blocks of the network); the others get 0 and have no residual branch to drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence, Type

import torch.nn as nn

from ..errors import ModelConfigError
from ..registry import add, lookup
from .layers import RepBasicBlock, RepBottleneck, RepConvAct

if TYPE_CHECKING:  # config imports this module (names of the types), so no import back at runtime
    from .config import BranchRule

__all__ = ["BlockArgs", "StageBlockType", "STAGE_BLOCKS", "register_stage_block", "get_stage_block"]


@dataclass(frozen=True)
class BlockArgs:
    """The geometry of one block of a stage, as its type's builder gets it.

    Args:
        in_chs: input channels.
        out_chs: the stage's width (scaled by ``width_mult``); the block outputs
            ``out_chs · expansion`` channels.
        stride: spatial stride of the block (the first of a stage: the stage's; the others 1).
        layout_stride: the stride the branch kinds are chosen for (differs from ``stride`` in a
            stage dilated for timm's ``output_stride``, so that the state dict does not change).
        first_dilation: dilation of the block's first (possibly strided) k×k conv.
        dilation: the stage's dilation (of the block's later k×k convs).
        se: squeeze-excite after the block's convs (the last ``se`` blocks of the stage).
        branches: the network's branch kinds (``kxk`` for k×k Rep convs, ``pointwise`` for 1×1).
        drop_path_rate: stochastic depth of the block's residual branch (0 for a non-residual type).
        deploy: build the fused (deploy) form of the Rep blocks.
    """

    in_chs: int
    out_chs: int
    stride: int
    layout_stride: int
    first_dilation: int
    dilation: int
    se: bool
    branches: "BranchRule"
    drop_path_rate: float
    deploy: bool


@dataclass(frozen=True)
class StageBlockType:
    """A registered stage block type (see the module docstring for the builder's contract).

    Args:
        name: registry name, the ``block`` of a :class:`~repan_zoo.models.StageCfg`.
        build: ``build(args: BlockArgs) -> Sequence[nn.Module]``, the modules of one block in order.
        expansion: output channels per unit of the stage's width (4 for a ResNet bottleneck).
        residual: the block adds its input back (a residual branch stochastic depth can drop).
    """

    name: str
    build: Callable[[BlockArgs], Sequence[nn.Module]]
    expansion: int = 1
    residual: bool = False


#: name → stage block type; :func:`register_stage_block` adds one.
STAGE_BLOCKS: Dict[str, StageBlockType] = {}


def register_stage_block(
    name: str, *, expansion: int = 1, residual: bool = False,
) -> Callable[[Callable[[BlockArgs], Sequence[nn.Module]]], Callable[[BlockArgs], Sequence[nn.Module]]]:
    """Decorator: make ``build(args: BlockArgs) -> Sequence[nn.Module]`` the stage block type
    ``name`` (then ``StageCfg(name, depth, chs)`` builds stages of it).

    Raises:
        ModelConfigError: ``name`` is already registered, or ``expansion`` < 1.
    """
    if int(expansion) < 1:
        raise ModelConfigError(f"stage block type {name!r}: expansion={expansion} must be an integer ≥ 1")

    def wrap(build: Callable[[BlockArgs], Sequence[nn.Module]]) -> Callable[[BlockArgs], Sequence[nn.Module]]:
        add(STAGE_BLOCKS, name, StageBlockType(name, build, int(expansion), bool(residual)), what="stage block type",
            error=ModelConfigError)
        return build

    return wrap


def get_stage_block(name: str) -> StageBlockType:
    """The registered stage block type ``name``.

    Raises:
        ModelConfigError: no such type; the message lists the registered ones.
    """
    return lookup(STAGE_BLOCKS, name, what="stage block type", error=ModelConfigError,
                  how="register new ones with repan_zoo.models.register_stage_block")


# -- the built-in types ---------------------------------------------------------------------------
@register_stage_block("conv")
def conv_block(a: BlockArgs) -> List[nn.Module]:
    """One k×k Rep conv (+ SE) + ReLU: a RepVGG layer."""
    return [RepConvAct(a.in_chs, a.out_chs, 3, a.stride, branches=a.branches.kxk, se=a.se, dilation=a.first_dilation,
                       layout_stride=a.layout_stride, deploy=a.deploy)]


@register_stage_block("dws")
def dws_block(a: BlockArgs) -> List[nn.Module]:
    """Depthwise 3×3 then pointwise 1×1 Rep conv, each (+ SE) + ReLU: MobileNet-v1, MobileOne."""
    return [
        RepConvAct(a.in_chs, a.in_chs, 3, a.stride, a.in_chs, a.branches.kxk, se=a.se, dilation=a.first_dilation,
                   layout_stride=a.layout_stride, deploy=a.deploy),
        RepConvAct(a.in_chs, a.out_chs, 1, 1, branches=a.branches.pointwise, se=a.se, deploy=a.deploy),
    ]


def _resnet_block(cls: Type[nn.Module]) -> Callable[[BlockArgs], List[nn.Module]]:
    def build(a: BlockArgs) -> List[nn.Module]:
        return [cls(a.in_chs, a.out_chs, a.stride, kxk_branches=a.branches.kxk, pointwise_branches=a.branches.pointwise,
                    drop_path_rate=a.drop_path_rate, first_dilation=a.first_dilation, dilation=a.dilation,
                    layout_stride=a.layout_stride, deploy=a.deploy)]

    build.__doc__ = f"One ResNet {cls.__name__} (Rep convs, Rep projection shortcut)."
    return build


register_stage_block("basic", expansion=RepBasicBlock.expansion, residual=True)(_resnet_block(RepBasicBlock))
register_stage_block("bottleneck", expansion=RepBottleneck.expansion, residual=True)(_resnet_block(RepBottleneck))

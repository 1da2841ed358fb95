"""The model families as data: every registered ``repan_*`` architecture is one row of :data:`MODELS`.

* **RepVGG** A0–B3 (Ding et al. 2021, Table 2): depths 1, 2, 4, 14, 1 (A) / 1, 4, 6, 16, 1 (B)
  — the first is the stem — widths min(64, 64a), 64a, 128a, 256a, 512b; every block a 3×3
  trunk + 1×1 conv + identity BN where shapes allow (stem included). Same widths, strides and
  depths as timm's ``repvgg_*``.
* **ResNet**-18/34/50 (torchvision / timm layout, stride on the 3×3 of the bottleneck): every
  conv is a Rep block — the 3×3 (and the 7×7 stem) with the variant's branches, the 1×1 convs
  and the projection shortcut trunk-only, so the deploy model has no BN left.
  ``_dbb``: 1×1→3×3, average-pool and 1×1 branches (Diverse Branch Block); ``_acb``: 3×1 and
  1×3 branches (ACNet). The RepAn paper's Table 1 trains ResNet-18 DBB / ACNet.
* **MobileNet-v1** (Howard et al. 2017): 3×3/2 stem (32) and 13 depthwise-separable pairs;
  plain (trunk-only) Rep blocks — RepAn's expansion gives them branches (paper Table 2).
* **MobileOne** S0–S4 (Vasu et al. 2023), as timm's ``mobileone_s*``: stages of 2, 8, 10, 1
  depthwise 3×3 + pointwise 1×1 pairs, widths 64, 128, 256, 512 × (per-variant factors),
  ``k`` over-parameterised k×k branches (k=4 for S0, 1 otherwise), a 1×1 "scale" branch on
  the 3×3s, identity BN where shapes allow; S4 has SE on its last 5 + 1 pairs.

Narrow ``_w025`` variants: width × 0.25 (the paper's CIFAR setting) in the small-input
layout (:meth:`NetCfg.for_small_input`) with a Fashion-MNIST default config (1×28×28,
10 classes); ``repan_mobileone_s0_w050`` likewise at width × 0.5 (stage widths 24, 64, 128, 512,
maps 28→14→14→7→4→2; 0.28 M deploy parameters with 10 classes). ``repan_repvgg_a1_w025`` is the
network of ``findings-cpu-scale.md``: stage widths 16, 16, 32, 64, 320, depths 1, 2, 4, 14, 1,
maps 28→14→14→7→4→2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from .config import BranchRule, NetCfg, StageCfg

__all__ = ["ModelDef", "MODELS", "REPVGG_BRANCHES", "DBB_BRANCHES", "ACB_BRANCHES"]

REPVGG_BRANCHES = ("conv_1x1", "identity")
DBB_BRANCHES = ("1x1_kxk", "avg", "conv_1x1")
ACB_BRANCHES = ("conv_kx1", "conv_1xk")


@dataclass(frozen=True)
class ModelDef:
    """A registered architecture: its network and which default config it gets
    (``small``: Fashion-MNIST 1×28×28 / 10 classes; else ImageNet 3×224×224 / 1000).
    ``timm_twin``: timm's model of the same architecture, whose weights load into this one
    (:mod:`repan_zoo.models.timm_compat`; None: no such model)."""

    cfg: NetCfg
    small: bool = False
    description: str = ""
    timm_twin: Optional[str] = None


def repvgg(depths: Sequence[int], a: float, b: float) -> NetCfg:
    widths = (64 * a, 128 * a, 256 * a, 512 * b)
    return NetCfg(
        family="repvgg",
        stages=tuple(StageCfg("conv", d, c, 2) for d, c in zip(depths, widths)),
        stem_chs=min(64, 64 * a),
        branches=BranchRule(kxk=REPVGG_BRANCHES),
    )


def resnet(block: str, depths: Sequence[int], kxk_branches: Tuple[str, ...] = ()) -> NetCfg:
    return NetCfg(
        family="resnet",
        stages=tuple(StageCfg(block, d, c, 1 if i == 0 else 2) for i, (d, c) in enumerate(zip(depths, (64, 128, 256, 512)))),
        stem_chs=64,
        stem_kernel=7,
        stem_pool=True,
        branches=BranchRule(kxk=kxk_branches),
        zero_init_last=True,
    )


def mobilenet_v1() -> NetCfg:
    # (depthwise-separable pairs, output channels, stride of the first pair)
    layout = ((1, 64, 1), (2, 128, 2), (2, 256, 2), (6, 512, 2), (2, 1024, 2))
    return NetCfg(family="mobilenet", stages=tuple(StageCfg("dws", d, c, s) for d, c, s in layout), stem_chs=32)


def mobileone(wf: Sequence[float], conv_branches: int = 1, se: Sequence[int] = (0, 0, 0, 0)) -> NetCfg:
    over = ("conv_kxk",) * (conv_branches - 1)  # the trunk is the first of the k conv branches
    widths = (64 * wf[0], 128 * wf[1], 256 * wf[2], 512 * wf[3])
    return NetCfg(
        family="mobileone",
        stages=tuple(StageCfg("dws", d, c, 2, se=n) for d, c, n in zip((2, 8, 10, 1), widths, se)),
        stem_chs=min(64, 64 * wf[0]),
        branches=BranchRule(kxk=over + ("conv_1x1", "identity"), pointwise=over + ("identity",), stem=("conv_1x1", "identity")),
    )


def _narrow(cfg: NetCfg, width: float = 0.25) -> NetCfg:
    return cfg.with_width(width).for_small_input()


_A, _B = (2, 4, 14, 1), (4, 6, 16, 1)
_REPVGG = {
    "a0": repvgg(_A, 0.75, 2.5),
    "a1": repvgg(_A, 1.0, 2.5),
    "a2": repvgg(_A, 1.5, 2.75),
    "b0": repvgg(_B, 1.0, 2.5),
    "b1": repvgg(_B, 2.0, 4.0),
    "b2": repvgg(_B, 2.5, 5.0),
    "b3": repvgg(_B, 3.0, 5.0),
}
_RESNET_DEPTHS = {"18": ("basic", (2, 2, 2, 2)), "34": ("basic", (3, 4, 6, 3)), "50": ("bottleneck", (3, 4, 6, 3))}
_RESNET_VARIANTS = {"": (), "_dbb": DBB_BRANCHES, "_acb": ACB_BRANCHES}
_MOBILEONE = {
    "s0": mobileone((0.75, 1.0, 1.0, 2.0), conv_branches=4),
    "s1": mobileone((1.5, 1.5, 2.0, 2.5)),
    "s2": mobileone((1.5, 2.0, 2.5, 4.0)),
    "s3": mobileone((2.0, 2.5, 3.0, 4.0)),
    "s4": mobileone((3.0, 3.5, 3.5, 4.0), se=(0, 0, 5, 1)),
}


def _models() -> Dict[str, ModelDef]:
    models: Dict[str, ModelDef] = {}
    for v, cfg in _REPVGG.items():
        models[f"repan_repvgg_{v}"] = ModelDef(cfg, description=f"RepVGG-{v.upper()}", timm_twin=f"repvgg_{v}")
    for v in ("a0", "a1", "b1", "b3"):  # the paper's CIFAR models (Table 1) at 0.25× width
        models[f"repan_repvgg_{v}_w025"] = ModelDef(_narrow(_REPVGG[v]), small=True, description=f"RepVGG-{v.upper()} 0.25×")
    for depth, (block, depths) in _RESNET_DEPTHS.items():
        for suffix, kinds in _RESNET_VARIANTS.items():
            models[f"repan_resnet{depth}{suffix}"] = ModelDef(  # timm's resnet weights start every variant
                resnet(block, depths, kinds), description=f"ResNet-{depth}{suffix.replace('_', ' ').upper()}",
                timm_twin=f"resnet{depth}")
    for suffix, kinds in _RESNET_VARIANTS.items():
        models[f"repan_resnet18{suffix}_w025"] = ModelDef(
            _narrow(resnet("basic", (2, 2, 2, 2), kinds)), small=True, description=f"ResNet-18{suffix.upper()} 0.25×"
        )
    models["repan_mobilenet"] = ModelDef(mobilenet_v1(), description="MobileNet-v1")
    for v, cfg in _MOBILEONE.items():
        models[f"repan_mobileone_{v}"] = ModelDef(cfg, description=f"MobileOne-{v.upper()}", timm_twin=f"mobileone_{v}")
    # half width, small-input layout: about the training step time of MobileOne-S0's ImageNet layout at
    # 28×28 (whose last 11 blocks run at 2×2 and 1×1) with a quarter of the parameters; the sweep's
    # ``layouts`` plan compares the two
    models["repan_mobileone_s0_w050"] = ModelDef(_narrow(_MOBILEONE["s0"], 0.5), small=True,
                                                 description="MobileOne-S0 0.5×")
    return models


#: every registered architecture, by timm name.
MODELS: Dict[str, ModelDef] = _models()

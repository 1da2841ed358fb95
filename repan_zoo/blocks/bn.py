"""BN-like layers: which modules normalise with fixed statistics in eval mode (and so fuse into a
conv, Eq. 2), and their parameters in the fusion dtype."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import algebra
from ..algebra import BNParams
from ..errors import UnfusableBranchError

__all__ = ["is_bn_like", "bn_params"]


def is_bn_like(module: nn.Module) -> bool:
    """Whether ``module`` normalises with per-channel running statistics in eval mode: PyTorch's
    BatchNorm family (``BatchNorm2d``, ``SyncBatchNorm``, timm's ``BatchNormAct2d``, ...) and the
    frozen BNs that hold the same tensors as buffers (torchvision's / timm's ``FrozenBatchNorm2d``,
    timm's ``FrozenBatchNormAct2d``)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    buffers = dict(module.named_buffers(recurse=False))
    return "running_mean" in buffers and "running_var" in buffers and hasattr(module, "eps")


def bn_params(bn: nn.Module) -> BNParams:
    """Eval-mode parameters ``(γ, β, μ, σ², eps)`` of a BN-like layer (:func:`is_bn_like`), as float64.

    A BN followed by an activation inside the same layer (timm's ``BatchNormAct2d`` /
    ``FrozenBatchNormAct2d`` with ``apply_act=True``) is not linear and cannot be fused: it raises
    :class:`UnfusableBranchError` naming the class, as does a layer without running statistics or one
    that is not BN-like at all (GroupNorm, LayerNorm, ...)."""
    name = type(bn).__name__
    if not is_bn_like(bn):
        raise UnfusableBranchError(
            f"{name} is not a BatchNorm with running statistics, so it cannot be fused into a conv (Eq. 2); "
            "Rep blocks fuse BatchNorm2d, SyncBatchNorm, FrozenBatchNorm2d and BatchNormAct2d without activation"
        )
    act = getattr(bn, "act", None)
    if act is not None and not isinstance(act, nn.Identity):
        raise UnfusableBranchError(
            f"{name} applies {type(act).__name__} after normalising: the branch is no longer linear and cannot be "
            f"fused into one conv; build it with apply_act=False (the block's activation stays outside it) or use "
            "BatchNorm2d / FrozenBatchNorm2d"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise UnfusableBranchError(
            f"{name} without running statistics (track_running_stats=False) cannot be fused; "
            "build the model with track_running_stats=True"
        )
    ref = bn.running_mean
    weight = bn.weight if getattr(bn, "weight", None) is not None else torch.ones_like(ref)
    bias = bn.bias if getattr(bn, "bias", None) is not None else torch.zeros_like(ref)
    weight, bias, mean, var = algebra.as_fusion_dtype(weight.detach(), bias.detach(), bn.running_mean, bn.running_var)
    return BNParams(weight, bias, mean, var, bn.eps)

"""Non-trivial weights and BatchNorm statistics, so that an exactness check has something to find.

A fresh BatchNorm (μ=0, σ²=1, γ=1, β=0) is the identity up to ε and hides fusion bugs: the
tests, ``benchmarks/exactness.py`` and ``repan verify`` (without a checkpoint) draw these first.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["randomize_bn", "randomize_convs", "randomize"]

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def randomize_bn(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm under ``module`` non-trivial eval statistics and affine parameters, in place:
    running_mean ~ N(0, 0.5²), running_var ~ U(0.3, 2.0), |γ| ~ U(0.4, 1.6) with a random sign,
    β ~ N(0, 0.5²).

    Args:
        module: any module tree.
        generator: the draws' source (reproducible).

    Returns:
        ``module``.
    """
    for bn in module.modules():
        if not isinstance(bn, _BN):
            continue
        n = bn.num_features
        ref = bn.running_mean
        def draw(fn, *args):
            return fn(*args, n, generator=generator).to(device=ref.device, dtype=ref.dtype)
        bn.running_mean.copy_(draw(torch.randn) * 0.5)
        bn.running_var.copy_(draw(torch.rand) * 1.7 + 0.3)
        if bn.affine:
            sign = torch.where(draw(torch.rand) < 0.2, -1.0, 1.0).to(bn.weight)
            bn.weight.copy_((draw(torch.rand) * 1.2 + 0.4).to(bn.weight) * sign)
            bn.bias.copy_(draw(torch.randn).to(bn.bias) * 0.5)
    return module


@torch.no_grad()
def randomize_convs(module: nn.Module, generator: torch.Generator, scale: float = 0.3) -> nn.Module:
    """Redraw every Conv2d weight (and bias) under ``module``, in place, as N(0, scale²).

    Args:
        module: any module tree.
        generator: the draws' source (reproducible).
        scale: standard deviation of the draws.

    Returns:
        ``module``.
    """
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator).to(conv.weight) * scale)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator).to(conv.bias) * scale)
    return module


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random convs (:func:`randomize_convs`) and BN statistics (:func:`randomize_bn`) from one seed.

    Args:
        module: any module tree.
        seed: seed of the one generator both draw from.

    Returns:
        ``module``, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    randomize_convs(module, gen)
    randomize_bn(module, gen)
    return module.eval()

"""Pure tensor algebra of structural re-parameterization (no ``nn.Module`` here).

Every function takes and returns plain tensors. A branch is described by the pair
``(kernel, bias)`` of the single convolution it is equivalent to; kernels have the
layout ``[C_out, C_in / groups, kh, kw]`` of :func:`torch.nn.functional.conv2d`.

Equation numbers refer to *RepAn: Enhanced Annealing through Re-parameterization*
(CVPR'24, ``../shared/paper/RepAn-CVPR24.txt``):

* Eq. (1)  convolution linearity: parallel branches add kernels and biases.
* Eq. (2)  BN fusion: ``BN(conv(x)) = x * (γ/σ)W + [(γ/σ)(b-μ) + β]``.
* Eq. (3)  λ-gated expanded block ``Y = Y_inv + λ (Σ Y_exp + Y_res)``.
* Eq. (4)  BN restoration, the inverse of Eq. (2) (Sec. 3.3).
* Eq. (5)  the gated block written as one convolution.

Constants (identity / average kernels) are built in the dtype and device of the
tensors they are combined with. Callers that hold fp16/bf16 weights should fuse in
in float64 and cast the result back (see :func:`as_fusion_dtype`).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "KernelBias",
    "BNParams",
    "RESTORE_RULES",
    "RestoreRule",
    "register_restore_rule",
    "get_restore_rule",
    "as_fusion_dtype",
    "fuse_conv_bn",
    "restore_conv_bn",
    "bn_affine",
    "pad_kernel",
    "identity_kernel",
    "avg_pool_kernel",
    "fuse_1x1_kxk",
    "add_asymmetric",
    "gated_sum",
]


class KernelBias(NamedTuple):
    """A branch reduced to one convolution: ``conv2d(x, kernel) + bias``."""

    kernel: Tensor
    bias: Tensor


class BNParams(NamedTuple):
    """Eval-mode batch-norm parameters: ``γ (x-μ)/sqrt(var+eps) + β``."""

    weight: Tensor  # γ
    bias: Tensor  # β
    running_mean: Tensor  # μ
    running_var: Tensor  # σ² - eps
    eps: float


def as_fusion_dtype(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """Upcast to float64 for fusion arithmetic: the fused kernel is then the correctly rounded
    value in the weights' own dtype (fp32, fp16, bf16), cast back by the caller."""
    return tuple(t.double() if t.is_floating_point() else t for t in tensors)


def bn_affine(bn: BNParams) -> Tuple[Tensor, Tensor]:
    """Eval-mode BN as a per-channel affine map ``x ↦ scale·x + shift`` (the right side of Eq. 2)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


def fuse_conv_bn(kernel: Tensor, bias: Optional[Tensor], bn: BNParams) -> KernelBias:
    """Eq. (2): fold an eval-mode BN into the preceding convolution.

    ``W' = (γ/σ) W`` and ``b' = (γ/σ)(b - μ) + β``; ``bias=None`` means a bias-free conv.
    """
    scale, shift = bn_affine(bn)
    fused_kernel = kernel * scale.reshape(-1, 1, 1, 1)
    fused_bias = shift if bias is None else shift + bias * scale
    return KernelBias(fused_kernel, fused_bias)


class RestoreRule(NamedTuple):
    """One Restore choice (inverse of Eq. 2, Sec. 3.3), registered by name in :data:`RESTORE_RULES`.

    ``statistics(kernel, bias, *, previous, eps, min_gamma, target_norm)`` returns the restored
    BN's free values ``(γ, μ, var, eps)``, each ``[C_out]`` (``eps`` a float); the kernel and β
    then follow from them so that the function is exact (:func:`restore_conv_bn`). A rule with
    ``needs_previous`` uses the previous trunk BN and is replaced by ``fallback`` where there is
    none (e.g. right after loading a deploy checkpoint).
    """

    name: str
    statistics: Callable[..., Tuple[Tensor, Tensor, Tensor, float]]
    needs_previous: bool = False
    fallback: Optional[str] = None


#: Restore (inverse Eq. 2) rules by name; add one with :func:`register_restore_rule`.
RESTORE_RULES: Dict[str, RestoreRule] = {}


def register_restore_rule(name: str, *, needs_previous: bool = False, fallback: Optional[str] = None):
    """Decorator: register ``fn(kernel, bias, *, previous, eps, min_gamma, target_norm) -> (γ, μ, var, eps)``
    as the Restore rule ``name`` (usable as ``--restore name`` and ``Expansion(restore=name)``).

    Raises:
        ValueError: ``name`` is taken, or ``needs_previous`` without a ``fallback`` rule.
    """
    if name in RESTORE_RULES:
        raise ValueError(f"restore rule {name!r} is already registered")
    if needs_previous and fallback is None:
        raise ValueError(f"restore rule {name!r} needs the previous BN: name a fallback rule for blocks without one")

    def decorate(fn: Callable[..., Tuple[Tensor, Tensor, Tensor, float]]):
        RESTORE_RULES[name] = RestoreRule(name, fn, needs_previous, fallback)
        return fn

    return decorate


def get_restore_rule(name: str) -> RestoreRule:
    """The registered rule ``name``. Raises ``ValueError`` naming the registered rules."""
    try:
        return RESTORE_RULES[name]
    except KeyError:
        raise ValueError(f"unknown restore mode {name!r}; choose one of {tuple(RESTORE_RULES)} "
                         "(or register one with repan_zoo.algebra.register_restore_rule)") from None


@register_restore_rule("inherit", needs_previous=True, fallback="normalized")
def restore_inherit(kernel: Tensor, bias: Tensor, *, previous: Optional[BNParams], eps: float, min_gamma: float,
                    target_norm: float) -> Tuple[Tensor, Tensor, Tensor, float]:
    """The paper's default: keep the previous trunk BN's γ, μ, σ, so ``W' = (σ/γ) W`` and
    ``β = b + γμ/σ`` (the paper's ``b' = (σ/γ)(b-β)+μ`` with the conv bias folded into β, so the
    conv stays bias-free). Channels with ``|γ| < min_gamma`` use ``±min_gamma``, keeping ``W'`` finite,
    and μ = 0: such a channel carried (almost) nothing (a fused kernel row of ≈ 0, e.g. ResNet's
    zero-initialised last BN), and μ = 0 gives ``β = b`` exactly (an inherited μ left a rounding
    residue ``γμ/σ − γμ/σ`` on a channel whose output was exactly its bias)."""
    if previous is None:
        raise ValueError(
            "restore mode 'inherit' needs the previous BN parameters (previous=BNParams(...)); "
            "use mode='normalized' or 'identity' for a model that has never had a BN here"
        )
    gamma = previous.weight.clone()
    small = gamma.abs() < min_gamma
    gamma = torch.where(small, torch.where(gamma < 0, -min_gamma, min_gamma).to(gamma), gamma)
    mean = torch.where(small, torch.zeros_like(previous.running_mean), previous.running_mean)
    return gamma, mean, previous.running_var.clone(), previous.eps


@register_restore_rule("normalized")
def restore_normalized(kernel: Tensor, bias: Tensor, *, previous: Optional[BNParams], eps: float, min_gamma: float,
                       target_norm: float) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Each output channel of ``W'`` gets the norm ``target_norm``; its scale moves into γ;
    μ = 0 and ``var = 1 - eps`` (σ = 1). A zero channel keeps γ = 1."""
    norms = kernel.reshape(kernel.shape[0], -1).norm(dim=1)
    gamma = torch.where(norms > 0, norms / target_norm, torch.ones_like(norms))
    return gamma, torch.zeros_like(bias), torch.full_like(bias, 1.0 - eps), eps


@register_restore_rule("identity")
def restore_identity(kernel: Tensor, bias: Tensor, *, previous: Optional[BNParams], eps: float, min_gamma: float,
                     target_norm: float) -> Tuple[Tensor, Tensor, Tensor, float]:
    """``W' = W``, γ = 1, μ = 0, ``var = 1 - eps``, β = b. Simple but badly conditioned
    (measured 2.2 points below ``inherit`` in ``findings-cpu-scale.md``)."""
    return torch.ones_like(bias), torch.zeros_like(bias), torch.full_like(bias, 1.0 - eps), eps


def restore_conv_bn(
    kernel: Tensor,
    bias: Tensor,
    mode: str = "inherit",
    *,
    previous: Optional[BNParams] = None,
    eps: float = 1e-5,
    min_gamma: float = 1e-3,
    target_norm: float = 2.0 ** 0.5,
) -> Tuple[Tensor, BNParams]:
    """Eq. (4), Sec. 3.3: split a fused ``(W, b)`` back into a bias-free conv ``W'`` and a BN.

    Args:
        kernel: ``[C_out, C_in/groups, kh, kw]`` fused kernel ``W``.
        bias: ``[C_out]`` fused bias ``b``.
        mode: a rule of :data:`RESTORE_RULES` (``"inherit"``, the paper's; ``"normalized"``;
            ``"identity"``; or one registered with :func:`register_restore_rule`).
        previous: the previous trunk BN (required by ``"inherit"``).
        eps: the BN epsilon of rules that do not inherit one.
        min_gamma: ``"inherit"``'s floor on ``|γ|``.
        target_norm: ``"normalized"``'s per-channel kernel norm.

    Returns:
        ``(W', bn)`` with ``fuse_conv_bn(W', None, bn) == (W, b)`` up to rounding, so the block's
        function is unchanged. The free choice of ``(γ, μ, σ)`` does not change the function, but
        it sets the scale of ``W'`` and therefore the effective learning rate of the restored conv
        (BN makes the function invariant to the kernel scale).

    Raises:
        ValueError: an unknown ``mode``, or ``"inherit"`` without ``previous``.
    """
    rule = get_restore_rule(mode)
    gamma, mean, var, eps = rule.statistics(kernel, bias, previous=previous, eps=eps, min_gamma=min_gamma,
                                            target_norm=target_norm)
    std = (var + eps).sqrt()
    restored_kernel = kernel * (std / gamma).reshape(-1, 1, 1, 1)
    beta = bias + gamma * mean / std
    return restored_kernel, BNParams(gamma, beta, mean, var, eps)


def pad_kernel(kernel: Tensor, size: Sequence[int]) -> Tensor:
    """Zero-pad a ``[.., kh, kw]`` kernel centrally to ``size = (KH, KW)`` (odd sizes)."""
    kh, kw = kernel.shape[-2:]
    th, tw = size
    if (th - kh) % 2 or (tw - kw) % 2 or th < kh or tw < kw:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel inside {th}x{tw}: sizes must be odd and not larger")
    ph, pw = (th - kh) // 2, (tw - kw) // 2
    if ph == 0 and pw == 0:
        return kernel
    return F.pad(kernel, [pw, pw, ph, ph])


def _grouped_diagonal(channels: int, groups: int, size: Sequence[int], value: float, like: Tensor) -> Tensor:
    """``[C, C/groups, KH, KW]`` kernel that maps channel c to itself with weight ``value`` at every tap
    of a centred window (1×1 centre for the identity, full window for average pooling)."""
    if channels % groups:
        raise ValueError(f"channels={channels} is not divisible by groups={groups}")
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, *size, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    kernel[idx, idx % in_per_group] = value
    return kernel


def identity_kernel(channels: int, groups: int, size: Sequence[int], like: Tensor) -> Tensor:
    """The identity map as a k×k (grouped) kernel: a 1 at the centre tap of each channel's own input."""
    kh, kw = size
    kernel = torch.zeros(channels, channels // groups, kh, kw, dtype=like.dtype, device=like.device)
    centre = _grouped_diagonal(channels, groups, (1, 1), 1.0, like)
    kernel[:, :, kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1] = centre
    return kernel


def avg_pool_kernel(channels: int, groups: int, pool_size: int, like: Tensor) -> Tensor:
    """``AvgPool2d(p, padding=p//2, count_include_pad=True)`` as a p×p (grouped) kernel of ``1/p²``
    on each channel's own input (DBB's average-pooling branch)."""
    return _grouped_diagonal(channels, groups, (pool_size, pool_size), 1.0 / (pool_size * pool_size), like)


def fuse_1x1_kxk(first: KernelBias, second: KernelBias, groups: int) -> KernelBias:
    """Sequential 1×1 conv then k×k conv (DBB's "1×1→k×k" branch), both with ``groups`` groups.

    Exact only when the k×k conv's zero padding is replaced by padding with the first
    stage's bias (the branch module pads with it, see ``blocks.branches``); then
    ``y = K2 ⊛ (K1 x + b1) + b2 = (K2∘K1) ⊛ x + (Σ K2·b1 + b2)`` everywhere, borders included.
    """
    k1, b1 = first
    k2, b2 = second
    mid, in_per_group = k1.shape[0], k1.shape[1]
    out = k2.shape[0]
    mid_per_group, out_per_group = mid // groups, out // groups
    kernels = []
    for g in range(groups):
        k1_g = k1[g * mid_per_group : (g + 1) * mid_per_group, :, 0, 0]  # [mid_g, in_g]
        k2_g = k2[g * out_per_group : (g + 1) * out_per_group]  # [out_g, mid_g, kh, kw]
        kernels.append(torch.einsum("omhw,mi->oihw", k2_g, k1_g))
    kernel = torch.cat(kernels, dim=0)
    assert kernel.shape[1] == in_per_group
    b1_groups = b1.reshape(groups, 1, mid_per_group)
    k2_sum = k2.sum(dim=(2, 3)).reshape(groups, out_per_group, mid_per_group)
    bias = (k2_sum * b1_groups).sum(-1).reshape(out) + b2
    return KernelBias(kernel, bias)


def add_asymmetric(square: KernelBias, *others: KernelBias) -> KernelBias:
    """ACNet: add k×1 / 1×k (or any smaller odd) kernels into the centre of a k×k kernel (Eq. 1)."""
    kernel, bias = square
    size = kernel.shape[-2:]
    for other in others:
        kernel = kernel + pad_kernel(other.kernel, size)
        bias = bias + other.bias
    return KernelBias(kernel, bias)


def gated_sum(trunk: KernelBias, extras: Iterable[KernelBias], lam) -> KernelBias:
    """Eq. (3)/(5): ``trunk + λ·Σ extras`` as one (kernel, bias); all kernels already in the trunk's shape."""
    kernel, bias = trunk
    extras = list(extras)
    if not extras:
        return KernelBias(kernel, bias)
    extra_kernel = torch.stack([e.kernel for e in extras]).sum(0)
    extra_bias = torch.stack([e.bias for e in extras]).sum(0)
    return KernelBias(kernel + lam * extra_kernel, bias + lam * extra_bias)

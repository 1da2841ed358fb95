"""repan_zoo.algebra against the nn modules / functional ops it claims to be equal to (Eq. 1–5).

Every check compares full output maps (borders included) with random non-trivial BN
statistics; the bar is 1e-6 relative (fp32).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import make_input, randomize_bn, rel_err
from repan_zoo import algebra
from repan_zoo.algebra import BNParams, KernelBias

TOL = 1e-6


def _bn_module(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3)  # non-default eps: must be carried through
    return randomize_bn(bn, gen).eval()


def _params(bn: nn.BatchNorm2d) -> BNParams:
    return BNParams(bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps)


def _conv(x, kb: KernelBias, stride=1, groups=1, padding=None):
    k = kb.kernel.shape[-1]
    return F.conv2d(x, kb.kernel, kb.bias, stride, k // 2 if padding is None else padding, groups=groups)


# -- Eq. 2 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_fuse_conv_bn_equals_bn_of_conv(generator, with_bias, groups):
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=with_bias)
    nn.init.normal_(conv.weight, std=0.3, generator=generator)
    if with_bias:
        nn.init.normal_(conv.bias, std=0.5, generator=generator)
    bn = _bn_module(12, generator)
    x = make_input(8)
    with torch.no_grad():
        ref = bn(conv(x))
        fused = algebra.fuse_conv_bn(conv.weight, conv.bias, _params(bn))
        out = _conv(x, fused, groups=groups)
    assert rel_err(ref, out) <= TOL
    # the conv bias matters: dropping it must be visible (the test can fail)
    if with_bias:
        no_bias = algebra.fuse_conv_bn(conv.weight, None, _params(bn))
        assert rel_err(ref, _conv(x, no_bias, groups=groups)) > 1e-3


def test_bn_affine_matches_eval_bn(generator):
    bn = _bn_module(8, generator)
    x = make_input(8)
    scale, shift = algebra.bn_affine(_params(bn))
    with torch.no_grad():
        assert rel_err(bn(x), x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)) <= TOL


# -- Eq. 4 (restore, inverse of Eq. 2) ---------------------------------------------------------
def _fused_pair(gen, out_ch=8, in_ch=8, k=3):
    kernel = torch.randn(out_ch, in_ch, k, k, generator=gen) * 0.3
    bias = torch.randn(out_ch, generator=gen)
    return kernel, bias


def _conv_bn_module(kernel: torch.Tensor, bn: BNParams) -> nn.Sequential:
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2, bias=False)
    norm = nn.BatchNorm2d(kernel.shape[0], eps=bn.eps)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        norm.weight.copy_(bn.weight)
        norm.bias.copy_(bn.bias)
        norm.running_mean.copy_(bn.running_mean)
        norm.running_var.copy_(bn.running_var)
    return nn.Sequential(conv, norm).eval()


@pytest.mark.parametrize("mode", tuple(algebra.RESTORE_RULES))
def test_restore_is_inverse_of_fuse(generator, mode):
    kernel, bias = _fused_pair(generator)
    previous = _params(_bn_module(8, generator)) if mode == "inherit" else None
    restored, bn = algebra.restore_conv_bn(kernel, bias, mode, previous=previous)
    again = algebra.fuse_conv_bn(restored, None, bn)
    assert rel_err(kernel, again.kernel) <= TOL
    assert rel_err(bias, again.bias) <= TOL
    x = make_input(8)
    with torch.no_grad():
        ref = F.conv2d(x, kernel, bias, padding=1)
        out = _conv_bn_module(restored, bn)(x)  # a real BatchNorm2d, eval mode
    assert rel_err(ref, out) <= TOL
    if mode == "inherit":  # the paper's default keeps the previous γ, μ, σ (Sec. 3.3)
        assert torch.equal(bn.weight, previous.weight)
        assert torch.equal(bn.running_mean, previous.running_mean)
        assert torch.equal(bn.running_var, previous.running_var)
        assert bn.eps == previous.eps
    elif mode == "normalized":
        norms = restored.reshape(8, -1).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, 2.0 ** 0.5), rtol=1e-6)
    else:
        assert torch.equal(restored, kernel)
        assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, bias)


def test_restore_inherit_guards_tiny_gamma(generator):
    kernel, bias = _fused_pair(generator)
    bn = _bn_module(8, generator)
    with torch.no_grad():
        bn.weight[0] = 0.0
        bn.weight[1] = -1e-9
        bn.weight[2] = 1e-12
    previous = _params(bn)
    # a previous γ≈0 means the fused kernel's channel is ≈0; use a live kernel anyway (worst case)
    restored, new_bn = algebra.restore_conv_bn(kernel, bias, "inherit", previous=previous, min_gamma=1e-3)
    assert torch.isfinite(restored).all() and torch.isfinite(new_bn.bias).all()
    assert new_bn.weight[:3].abs().min().item() >= 1e-3
    assert new_bn.weight[1].item() < 0  # sign kept
    x = make_input(8)
    with torch.no_grad():
        assert rel_err(F.conv2d(x, kernel, bias, padding=1), _conv_bn_module(restored, new_bn)(x)) <= TOL


def test_restore_inherit_of_a_silent_channel_outputs_its_bias_exactly(generator):
    """A channel whose previous γ was 0 (ResNet's zero-initialised last BN before it trained) fused to
    a zero kernel row and bias β. Restored with the floored γ and the inherited μ ≠ 0, its output was
    β + γμ/σ − γμ/σ: a rounding residue (3e-11) where the fused block gave exactly 0, which a
    block-relative check over an all-zero block calls an infinite error. Its μ is 0 now: exact."""
    kernel, bias = _fused_pair(generator)
    bn = _bn_module(8, generator)
    with torch.no_grad():
        bn.weight[:3] = 0.0
        bn.running_mean[:3] = torch.tensor([0.69, -1.3, 2.1])
    kernel[:3] = 0.0
    bias[:3] = torch.tensor([0.0, 0.25, -1e-3])
    restored, new_bn = algebra.restore_conv_bn(kernel, bias, "inherit", previous=_params(bn), min_gamma=1e-3)
    assert torch.equal(new_bn.running_mean[:3], torch.zeros(3))
    assert torch.equal(new_bn.running_mean[3:], bn.running_mean[3:])  # live channels inherit μ (Sec. 3.3)
    x = make_input(8)
    with torch.no_grad():
        out = _conv_bn_module(restored, new_bn)(x)
    for c in range(3):
        assert torch.equal(out[:, c], torch.full_like(out[:, c], float(bias[c]))), c


def test_restore_rejects_bad_mode_and_missing_previous(generator):
    kernel, bias = _fused_pair(generator)
    with pytest.raises(ValueError, match="unknown restore mode"):
        algebra.restore_conv_bn(kernel, bias, "magic")
    with pytest.raises(ValueError, match="needs the previous BN"):
        algebra.restore_conv_bn(kernel, bias, "inherit")


def test_restore_normalized_zero_channel(generator):
    kernel, bias = _fused_pair(generator)
    kernel[3] = 0.0
    restored, bn = algebra.restore_conv_bn(kernel, bias, "normalized")
    assert torch.isfinite(restored).all() and bn.weight[3].item() == 1.0
    again = algebra.fuse_conv_bn(restored, None, bn)
    assert rel_err(bias, again.bias) <= TOL and torch.equal(again.kernel[3], kernel[3])


# -- constant kernels ----------------------------------------------------------------------------
@pytest.mark.parametrize("small,big", [((1, 1), (3, 3)), ((3, 1), (5, 5)), ((1, 3), (3, 3)), ((3, 3), (3, 3))])
def test_pad_kernel_centres(generator, small, big):
    kernel = torch.randn(8, 8, *small, generator=generator)
    x = make_input(8)
    ref = F.conv2d(x, kernel, padding=(small[0] // 2, small[1] // 2))
    out = F.conv2d(x, algebra.pad_kernel(kernel, big), padding=(big[0] // 2, big[1] // 2))
    assert rel_err(ref, out) <= TOL


@pytest.mark.parametrize("small,big", [((3, 3), (4, 4)), ((5, 5), (3, 3)), ((2, 2), (3, 3))])
def test_pad_kernel_rejects_uncentrable(small, big):
    with pytest.raises(ValueError, match="cannot centre"):
        algebra.pad_kernel(torch.zeros(1, 1, *small), big)


@pytest.mark.parametrize("groups", [1, 2, 8])  # plain, grouped, depthwise
@pytest.mark.parametrize("k", [1, 3, 5])
def test_identity_kernel_is_identity(groups, k):
    x = make_input(8)
    like = torch.zeros(1, dtype=torch.float64)
    kernel = algebra.identity_kernel(8, groups, (k, k), like)
    assert kernel.shape == (8, 8 // groups, k, k) and kernel.dtype == torch.float64
    assert torch.equal(F.conv2d(x.double(), kernel, padding=k // 2, groups=groups), x.double())


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2), (1, 1)])
def test_avg_pool_kernel_equals_avgpool_module(groups, k, stride):
    x = make_input(8)
    pool = nn.AvgPool2d(k, stride, k // 2, count_include_pad=True)
    kernel = algebra.avg_pool_kernel(8, groups, k, x)
    out = F.conv2d(x, kernel, stride=stride, padding=k // 2, groups=groups)
    assert rel_err(pool(x), out) <= TOL
    # count_include_pad=False differs on the border: the full-map comparison sees it
    if k > 1:
        assert rel_err(nn.AvgPool2d(k, stride, k // 2, count_include_pad=False)(x), out) > 1e-2


def test_constant_kernels_reject_bad_groups():
    with pytest.raises(ValueError, match="not divisible"):
        algebra.avg_pool_kernel(6, 4, 3, torch.zeros(1))


# -- 1x1 → kxk (DBB) ----------------------------------------------------------------------------------
def _sequential_1x1_kxk(x, first: KernelBias, second: KernelBias, groups: int, stride: int, pad_with_bias: bool):
    k = second.kernel.shape[-1]
    y = F.conv2d(x, first.kernel, first.bias, groups=groups)
    p = k // 2
    if pad_with_bias:
        b = first.bias.view(1, -1, 1, 1)
        y = F.pad(y - b, [p] * 4) + b
    else:
        y = F.pad(y, [p] * 4)
    return F.conv2d(y, second.kernel, second.bias, stride=stride, groups=groups)


@pytest.mark.parametrize("in_ch,mid,out,groups", [(8, 8, 8, 1), (8, 12, 6, 1), (8, 8, 12, 4), (8, 8, 8, 8), (8, 16, 8, 8)])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1)])
def test_fuse_1x1_kxk_equals_sequential_convs(generator, in_ch, mid, out, groups, k, stride):
    first = KernelBias(torch.randn(mid, in_ch // groups, 1, 1, generator=generator), torch.randn(mid, generator=generator))
    second = KernelBias(torch.randn(out, mid // groups, k, k, generator=generator) * 0.3, torch.randn(out, generator=generator))
    x = make_input(in_ch)
    fused = algebra.fuse_1x1_kxk(first, second, groups)
    assert fused.kernel.shape == (out, in_ch // groups, k, k)
    out_map = _conv(x, fused, stride=stride, groups=groups)
    ref = _sequential_1x1_kxk(x, first, second, groups, stride, pad_with_bias=True)
    assert rel_err(ref, out_map) <= TOL
    # zero padding instead of bias padding is NOT one conv on the borders
    zero_pad = _sequential_1x1_kxk(x, first, second, groups, stride, pad_with_bias=False)
    assert rel_err(zero_pad, out_map) > 1e-3
    inner = slice(1, -1)  # ... but it agrees away from the border
    if stride == 1 and k == 3:
        assert rel_err(zero_pad[..., inner, inner], out_map[..., inner, inner]) <= TOL


# -- ACNet and Eq. 3 / 5 ------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 5])
def test_add_asymmetric_equals_sum_of_convs(generator, k):
    square = KernelBias(torch.randn(8, 8, k, k, generator=generator), torch.randn(8, generator=generator))
    ver = KernelBias(torch.randn(8, 8, k, 1, generator=generator), torch.randn(8, generator=generator))
    hor = KernelBias(torch.randn(8, 8, 1, k, generator=generator), torch.randn(8, generator=generator))
    point = KernelBias(torch.randn(8, 8, 1, 1, generator=generator), torch.randn(8, generator=generator))
    x = make_input(8)
    ref = (
        F.conv2d(x, square.kernel, square.bias, padding=k // 2)
        + F.conv2d(x, ver.kernel, ver.bias, padding=(k // 2, 0))
        + F.conv2d(x, hor.kernel, hor.bias, padding=(0, k // 2))
        + F.conv2d(x, point.kernel, point.bias)
    )
    fused = algebra.add_asymmetric(square, ver, hor, point)
    assert rel_err(ref, _conv(x, fused)) <= TOL


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_gated_sum_equals_gated_branches(generator, lam):
    trunk = KernelBias(torch.randn(8, 8, 3, 3, generator=generator), torch.randn(8, generator=generator))
    extras = [KernelBias(torch.randn(8, 8, 3, 3, generator=generator), torch.randn(8, generator=generator)) for _ in range(3)]
    x = make_input(8)
    ref = _conv(x, trunk) + lam * sum(_conv(x, e) for e in extras)
    fused = algebra.gated_sum(trunk, extras, torch.tensor(lam))
    assert rel_err(ref, _conv(x, fused)) <= TOL
    if lam == 0.0:
        assert torch.equal(fused.kernel, trunk.kernel) and torch.equal(fused.bias, trunk.bias)
    assert algebra.gated_sum(trunk, [], lam) == trunk


def test_as_fusion_dtype_upcasts_floats_to_float64_only():
    h, b, f, i = (torch.ones(2, dtype=dt) for dt in (torch.half, torch.bfloat16, torch.float32, torch.long))
    out = algebra.as_fusion_dtype(h, b, f, i)
    assert [t.dtype for t in out] == [torch.float64, torch.float64, torch.float64, torch.long]

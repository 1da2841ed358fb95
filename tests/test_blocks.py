"""RepBlock and its branch kinds: exact fusion (Eq. 1, 2, 5 with λ), errors, gradients (Eq. 6),
TorchScript / torch.fx.

Every block is compared in eval mode with random BN statistics on the FULL output map.
"""
from __future__ import annotations

import copy
import math
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import make_input, randomize, rel_err
from repan_zoo.blocks import BRANCH_KINDS, RepBlock, branch_class
from repan_zoo.blocks.branches import BlockSpec, BNAndPad
from repan_zoo.errors import LambdaRangeError, UnfusableBranchError

TOL = 1e-6
KINDS = sorted(BRANCH_KINDS)
#: (in, out, groups): plain, grouped, depthwise, in≠out, depthwise with channel multiplier
SHAPES = [(8, 8, 1), (8, 8, 4), (8, 8, 8), (8, 12, 1), (8, 16, 8)]


def _fits(kind: str, in_ch: int, out_ch: int, k: int, stride: int, groups: int) -> bool:
    return branch_class(kind).unfit_reason(BlockSpec(in_ch, out_ch, k, stride, groups)) is None


def _fused_error(block: RepBlock, x: torch.Tensor) -> float:
    fused = copy.deepcopy(block)
    fused.reparameterize()
    assert fused.deploy and fused.trunk is None and len(fused.extras) == 0
    with torch.no_grad():
        return rel_err(block(x), fused(x))


SINGLE = [
    (kind, shape, k, stride)
    for kind, shape, k, stride in product(KINDS, SHAPES, (1, 3, 5), (1, 2))
    if _fits(kind, shape[0], shape[1], k, stride, shape[2])
]


@pytest.mark.parametrize("kind,shape,k,stride", SINGLE, ids=lambda v: str(v).replace(" ", ""))
def test_single_branch_fuses_exactly(kind, shape, k, stride):
    in_ch, out_ch, groups = shape
    seed = SINGLE.index((kind, shape, k, stride))  # deterministic (str hashes are salted per process)
    block = randomize(RepBlock(in_ch, out_ch, k, stride, groups, branches=(kind,)), seed=seed)
    assert _fused_error(block, make_input(in_ch)) <= TOL


def test_every_kind_is_covered_with_every_stride_and_groups():
    covered = {(kind, stride) for kind, _, _, stride in SINGLE}
    assert covered >= {(kind, 1) for kind in KINDS}
    assert covered >= {(kind, 2) for kind in KINDS if kind != "identity"}
    assert {kind for kind, shape, *_ in SINGLE if shape[2] == shape[0]} == set(KINDS)  # depthwise


DILATED = [
    (shape, k, stride, dilation)
    for shape, k, stride, dilation in product(SHAPES[:3] + SHAPES[4:], (1, 3, 5), (1, 2), (2, 3))
]


@pytest.mark.parametrize("shape,k,stride,dilation", DILATED, ids=lambda v: str(v).replace(" ", ""))
def test_dilated_block_fuses_exactly_with_every_fitting_kind(shape, k, stride, dilation):
    """Issue 15.5: a dilated k×k block keeps every branch kind that fits (1×1 and identity on the
    centre tap, k×1/1×k on the centre column/row, DBB's 1×1→k×k and average pooling on the dilated
    taps) and fuses into one dilated conv of the same output size, borders included."""
    in_ch, out_ch, groups = shape
    kinds = _all_fitting(in_ch, out_ch, k, stride, groups) + ("conv_kxk", "conv_1x1")
    seed = DILATED.index((shape, k, stride, dilation))
    block = randomize(RepBlock(in_ch, out_ch, k, stride, groups, branches=kinds, dilation=dilation, lam=0.7), seed=seed)
    x = make_input(in_ch, size=13)
    plain = RepBlock(in_ch, out_ch, k, stride, groups)  # same output size as without dilation
    assert block(x).shape == plain(x).shape
    assert _fused_error(block, x) <= TOL
    fused = copy.deepcopy(block)
    fused.reparameterize()
    assert fused.reparam_conv.dilation == (dilation, dilation)


def test_dilated_block_from_the_issue_fuses():
    block = randomize(RepBlock(16, 16, 3, 1, 1, branches=("conv_1x1", "identity"), dilation=2), seed=3)
    assert _fused_error(block, make_input(16, size=11)) <= TOL


def _all_fitting(in_ch, out_ch, k, stride, groups):
    return tuple(kind for kind in KINDS if _fits(kind, in_ch, out_ch, k, stride, groups))


MIXED = [
    (shape, k, stride, lam)
    for shape, k, stride, lam in product(SHAPES, (1, 3, 5), (1, 2), (1.0, 0.37))
]


@pytest.mark.parametrize("shape,k,stride,lam", MIXED, ids=lambda v: str(v).replace(" ", ""))
def test_mixed_block_fuses_exactly(shape, k, stride, lam):
    in_ch, out_ch, groups = shape
    kinds = _all_fitting(in_ch, out_ch, k, stride, groups)
    kinds = kinds + ("conv_kxk", "conv_1x1")  # repeated kinds, as after expansion with k>1
    block = randomize(RepBlock(in_ch, out_ch, k, stride, groups, branches=kinds, lam=lam), seed=MIXED.index((shape, k, stride, lam)))
    assert _fused_error(block, make_input(in_ch)) <= TOL


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.6, 1.0])
def test_lambda_is_part_of_the_fusion(lam):
    block = randomize(RepBlock(8, 8, 3, 1, branches=("conv_1x1", "identity", "1x1_kxk", "avg"), lam=lam), seed=3)
    x = make_input(8)
    with torch.no_grad():
        by_hand = block.trunk(x) + lam * sum(b(x) for b in block.extras)  # Eq. 3, written out
        assert rel_err(by_hand, block(x)) <= TOL
        fused = copy.deepcopy(block)
        fused.reparameterize()
        assert rel_err(by_hand, fused(x)) <= TOL
        if 0 < lam < 1:  # forgetting λ (the official code's bug) would be visible
            ungated = block.trunk(x) + sum(b(x) for b in block.extras)
            assert rel_err(ungated, fused(x)) > 1e-2


def test_set_lambda_then_reparameterize_matches_gated_train_form():
    block = randomize(RepBlock(8, 8, 3, 1, branches=("conv_kxk", "conv_1x1", "identity")), seed=4)
    x = make_input(8)
    for lam in (0.1, 0.5, 0.9):
        block.set_lambda(lam)
        assert float(block.lam) == pytest.approx(lam)
        assert _fused_error(block, x) <= TOL


# -- DBB 1x1→kxk borders -----------------------------------------------------------------------
@pytest.mark.parametrize("k,stride,groups", [(3, 1, 1), (5, 2, 1), (3, 1, 8)])
def test_dbb_1x1_kxk_is_exact_on_borders_and_zero_padding_is_not(k, stride, groups, monkeypatch):
    block = randomize(RepBlock(8, 8, k, stride, groups, branches=("1x1_kxk",)), seed=5)
    branch = block.extras[0]
    x = make_input(8)
    with torch.no_grad():
        fused = branch.kernel_bias()
        ref = branch(x)
        out = F.conv2d(x, fused.kernel.to(x.dtype), fused.bias.to(x.dtype), stride, k // 2, groups=groups)
        assert rel_err(ref, out) <= TOL  # full map, borders included

        def zero_pad(self, y):  # what a naive implementation does
            return F.pad(self.bn(y), [self.pad] * 4)

        monkeypatch.setattr(BNAndPad, "forward", zero_pad)
        naive = branch(x)
    border = torch.ones_like(out, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    assert rel_err(naive, out) > 1e-3
    assert (naive - out).abs()[border].max() > 1e-3 * out.abs().max()


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "abc", None, "0.5", True, False])
def test_lambda_out_of_range_is_a_typed_error(bad):
    with pytest.raises(LambdaRangeError, match=r"λ.*(outside \[0, 1\]|must be a number)"):
        RepBlock(8, 8, branches=("conv_1x1",), lam=bad)
    block = RepBlock(8, 8, branches=("conv_1x1",), lam=0.5)
    with pytest.raises(LambdaRangeError, match=r"\[0, 1\]"):
        block.set_lambda(bad)
    assert float(block.lam) == 0.5  # unchanged


@pytest.mark.parametrize("lam", [0.0, 1.0, 1, torch.tensor(0.25), np.float32(0.75)])
def test_lambda_bounds_are_allowed(lam):
    assert float(RepBlock(8, 8, branches=("conv_1x1",), lam=lam).lam) == lam


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(in_channels=8, out_channels=8, stride=2, branches=("identity",)), "identity branch needs stride 1"),
        (dict(in_channels=8, out_channels=12, branches=("identity",)), r"in_channels == out_channels \(got 8 -> 12\)"),
        (dict(in_channels=8, out_channels=12, branches=("avg",)), r"average-pooling branch needs in_channels == out_channels"),
        (dict(in_channels=8, out_channels=8, dilation=0), "dilation=0"),
        (dict(in_channels=8, out_channels=8, kernel_size=4), "kernel_size=4.*odd kernel"),
        (dict(in_channels=8, out_channels=8, branches=("conv_9x9",)), r"unknown branch kind 'conv_9x9'.*registered kinds"),
        (dict(in_channels=8, out_channels=12, groups=3), "divisible by groups=3"),
    ],
)
@pytest.mark.parametrize("deploy", [False, True])
def test_unfusable_configurations_raise_typed_errors(kwargs, pattern, deploy):
    with pytest.raises(UnfusableBranchError, match=pattern):
        RepBlock(**kwargs, deploy=deploy)


def test_unfold_with_unfit_kind_raises_or_skips():
    block = RepBlock(8, 12, branches=("conv_1x1",))
    with pytest.raises(UnfusableBranchError, match="identity"):
        copy.deepcopy(block).unfold(["identity"], lam=0.0)
    new = block.unfold(["identity", "conv_1x1"], lam=0.0, skip_unfit=True)
    assert [b.kind for b in new] == ["conv_1x1"]
    with pytest.raises(ValueError, match="k=-1"):
        block.unfold(["conv_1x1"], k=-1)


# -- gradients (Eq. 6) ---------------------------------------------------------------------------------
def _grads(block: RepBlock, lam: float, x: torch.Tensor, upstream: torch.Tensor):
    b = copy.deepcopy(block).train()
    b.set_lambda(lam)
    b(x).backward(upstream)
    return {n: p.grad.clone() for n, p in b.named_parameters()}


def test_gradients_of_new_branches_scale_with_lambda():
    block = randomize(RepBlock(8, 8, 3, 1, branches=("conv_1x1", "1x1_kxk", "conv_kx1")), seed=6)
    x = make_input(8)
    upstream = make_input(8, seed=2)
    g1, g_half, g0 = (_grads(block, lam, x, upstream) for lam in (1.0, 0.5, 0.0))
    extras = [n for n in g1 if n.startswith("extras.")]
    trunk = [n for n in g1 if n.startswith("trunk.")]
    assert extras and trunk
    for n in extras:
        assert g1[n].abs().max() > 0, f"no gradient reaches {n} at λ=1"
        assert torch.allclose(g_half[n], 0.5 * g1[n], rtol=1e-6, atol=0), n
        assert torch.count_nonzero(g0[n]) == 0, f"{n} gets a gradient at λ=0"
    conv_weights = [n for n in extras if n.endswith("conv.weight") or n.endswith("conv1.weight") or n.endswith("conv2.weight")]
    assert len(conv_weights) == 4
    for n in trunk:  # the trunk does not see λ
        assert torch.equal(g1[n], g_half[n]) and torch.equal(g1[n], g0[n])


def test_lambda_is_saved_with_the_train_form_only():
    block = RepBlock(8, 8, branches=("conv_1x1",), lam=0.3)
    assert float(block.state_dict()["lam"]) == pytest.approx(0.3)
    assert all(p is not block.lam for p in block.parameters())
    block.reparameterize()
    assert "lam" not in block.state_dict()  # folded into the deploy conv
    block.unfold(["conv_1x1"], lam=0.4)
    assert float(block.state_dict()["lam"]) == pytest.approx(0.4)
    assert "lam" not in RepBlock(8, 8, deploy=True).state_dict()


# -- forms -----------------------------------------------------------------------------------------------
def test_deploy_block_is_one_conv_and_keeps_arch_branches():
    block = RepBlock(8, 12, 5, 2, 4, branches=("conv_1x1", "1x1_kxk"), deploy=True)
    assert block.deploy and block.trunk is None and len(block.extras) == 0
    conv = block.reparam_conv
    assert (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((5, 5), (2, 2), (2, 2), 4)
    assert conv.bias is not None
    assert block.arch_branches == ("conv_1x1", "1x1_kxk")
    assert list(block.state_dict()) == ["reparam_conv.weight", "reparam_conv.bias"]


def test_reparameterize_is_idempotent():
    block = randomize(RepBlock(8, 8, branches=("conv_1x1",)), seed=8)
    block.reparameterize()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    block.reparameterize()
    assert all(torch.equal(state[k], v) for k, v in block.state_dict().items())


# -- TorchScript / torch.fx -------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = RepBlock(8, 8, 3, 1, branches=("conv_1x1", "identity", "avg", "1x1_kxk", "conv_kx1", "conv_1xk"), lam=0.7)
        self.b = RepBlock(8, 16, 3, 2, groups=8, branches=("conv_kxk", "1x1_kxk"))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("deploy", [False, True])
def test_torchscript_and_fx(deploy):
    net = randomize(_Net(), seed=9)
    if deploy:
        for m in (net.a, net.b):
            m.reparameterize()
    x = make_input(8)
    with torch.no_grad():
        ref = net(x)
        scripted = torch.jit.script(net)
        assert rel_err(ref, scripted(x)) <= TOL
        traced = torch.fx.symbolic_trace(net)
        assert rel_err(ref, traced(x)) <= TOL
    # the traced graph of the train form still holds the branches (nothing was fused away)
    ops = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert any(("extras" in t) for t in ops) != deploy

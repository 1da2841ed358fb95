"""Whole-model conversions: reparameterize, unfold, calibrate_bn, set_lambda (repan_zoo.convert).

Models have random BN statistics and are compared in eval mode on full output maps.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torch.nn as nn

from helpers import (  # noqa: F401 (single_thread: fixture)
    TinyNet, bns_of, make_input, randomize, rel_err, same_state, single_thread, snapshot, training_flags,
)
import repan_zoo as rz
from repan_zoo.algebra import KernelBias
from repan_zoo.blocks import RepBlock
from repan_zoo.blocks.branches import ConvKx1
from repan_zoo.convert import revert_sync_batchnorm
from repan_zoo.verify import non_finite_state
from repan_zoo.errors import (
    CalibrationError, LambdaRangeError, NoRepBlocksError, ReparameterizationError, UncalibratedBNWarning, UnfusableBranchError,
)

BLOCK_TOL = 1e-6
NET_TOL = 1e-5


def _out(model, x):
    with torch.no_grad():
        return model(x)


def _block_names(model):
    return [n for n, _ in rz.rep_blocks(model)]


def _plain_state(model):
    """State of everything outside the Rep blocks."""
    names = _block_names(model)
    return {k: v for k, v in snapshot(model).items() if not any(k.startswith(n + ".") for n in names)}


# -- reparameterize ------------------------------------------------------------------------
def test_reparameterize_is_exact_and_non_destructive(tiny_net, tiny_input):
    tiny_net.train()
    tiny_net.body[0].eval()
    tiny_net.extra["head"].eval()  # mixed flags must survive
    before, flags = snapshot(tiny_net), training_flags(tiny_net)
    fused = rz.reparameterize(tiny_net)
    assert fused is not tiny_net
    assert same_state(before, snapshot(tiny_net)) and training_flags(tiny_net) == flags
    assert all(not b.deploy for _, b in rz.rep_blocks(tiny_net))
    assert all(b.deploy for _, b in rz.rep_blocks(fused))
    new_flags = training_flags(fused)
    assert all(new_flags[n] == f for n, f in flags.items() if n in new_flags)
    assert all(new_flags[n] == new_flags[n.rsplit(".", 1)[0]] for n in new_flags if n.endswith("reparam_conv"))
    assert same_state(_plain_state(tiny_net), _plain_state(fused))  # other modules bit-identical
    with rz.verify.eval_mode(tiny_net), rz.verify.eval_mode(fused):
        assert rel_err(_out(tiny_net, tiny_input), _out(fused, tiny_input)) <= NET_TOL
        for name, block in rz.rep_blocks(tiny_net):  # per block, on the block's real input
            inp = {}
            h = block.register_forward_pre_hook(lambda m, a: inp.setdefault("x", a[0]))
            _out(tiny_net, tiny_input)
            h.remove()
            assert rel_err(_out(block, inp["x"]), _out(fused.get_submodule(name), inp["x"])) <= BLOCK_TOL, name
    report = fused.repan_exactness
    assert report["model_rel_error"] <= NET_TOL and report["tolerance"] == NET_TOL
    assert report["worst_block"] in _block_names(tiny_net)


def test_reparameterize_inplace_and_idempotent(tiny_net, tiny_input):
    ref = _out(tiny_net, tiny_input)
    out = rz.reparameterize(tiny_net, inplace=True)
    assert out is tiny_net and all(b.deploy for _, b in rz.rep_blocks(tiny_net))
    state = snapshot(tiny_net)
    again = rz.reparameterize(tiny_net)
    assert same_state(state, snapshot(again))
    assert rel_err(ref, _out(again, tiny_input)) <= NET_TOL


def test_reparameterize_plain_sequential_of_rep_blocks():
    seq = randomize(nn.Sequential(
        RepBlock(8, 8, 3, 1, branches=("conv_1x1", "identity")),
        RepBlock(8, 8, 5, 2, groups=8, branches=("avg", "1x1_kxk")),
    ), seed=2)
    x = make_input(8)
    fused = rz.reparameterize(seq, example_input=x)
    assert isinstance(fused, nn.Sequential) and all(isinstance(m, RepBlock) and m.deploy for m in fused)
    assert rel_err(_out(seq, x), _out(fused, x)) <= BLOCK_TOL * 2  # two blocks


def test_reparameterize_block_itself(tiny_input):
    block = randomize(RepBlock(8, 8, branches=("conv_1x1", "identity"), lam=0.4), seed=3)
    x = make_input(8)
    fused = rz.reparameterize(block, inplace=True, example_input=x)
    assert fused is block and block.deploy
    block2 = randomize(RepBlock(8, 8, branches=("conv_1x1",)), seed=3)
    copy_ = rz.reparameterize(block2, example_input=x)
    assert copy_.deploy and not block2.deploy


def test_timm_reparameterize_model_matches(tiny_net, tiny_input):
    from timm.utils import reparameterize_model

    ours = rz.reparameterize(tiny_net)
    theirs = reparameterize_model(tiny_net)
    assert all(b.deploy for _, b in rz.rep_blocks(theirs))
    assert not any(b.deploy for _, b in rz.rep_blocks(tiny_net))  # timm copies too
    assert rel_err(_out(ours, tiny_input), _out(theirs, tiny_input)) <= BLOCK_TOL
    assert rel_err(_out(tiny_net, tiny_input), _out(theirs, tiny_input)) <= NET_TOL


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["unfold", "reparameterize", "calibrate_bn"])
def test_no_rep_blocks_is_a_typed_error(call):
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    fn = getattr(rz, call)
    args = ([make_input(3)],) if call == "calibrate_bn" else ()
    with pytest.raises(NoRepBlocksError, match="RepBlock|Rep block"):
        fn(plain, *args)


@pytest.mark.parametrize("call", ["reparameterize", "unfold"])
def test_bad_arguments_of_a_conversion_are_named_and_lose_nothing(tiny_net, deploy_net, tiny_input, call):
    """An example_input the model cannot run (wrong channels, float64 into fp32 weights), a tolerance
    that is not a positive number, and something that is not a module: each a clear error naming
    the argument and the fix (was: PyTorch's 'expected scalar type Double', '<=' not supported
    between str and float, 'str' has no attribute 'modules'), and the model is left as it was."""
    model = tiny_net if call == "reparameterize" else deploy_net
    fn = getattr(rz, call)
    before = snapshot(model)
    for bad, words in [(make_input(5, 9), "does not run on the example_input of shape"),
                       (tiny_input.double(), "float64")]:
        with pytest.raises(ReparameterizationError, match=f"(?s){words}.*example_input the model takes"):
            fn(model, example_input=bad)
    for tolerance in ["1e-5", float("nan"), -1.0, 0.0, True]:
        with pytest.raises(ValueError, match=r"tolerance=.*positive finite number"):
            fn(model, tolerance=tolerance)
    assert same_state(before, snapshot(model))
    with pytest.raises(TypeError, match=f"{call} takes a torch.nn.Module.*got str"):
        fn("repan_resnet18_w025")


def test_a_non_finite_block_error_is_the_worst_and_named_as_such():
    """A block whose converted output is NaN (an fp16 overflow, say) is the worst block, whatever
    the order (was: max() skipped NaN and named a finite block below the tolerance as the failure:
    'relative error 0.000958 ... above the tolerance 0.01')."""
    import math

    from repan_zoo.verify import compare

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    nan = x + float("nan")
    for order in (["a", "b", "c"], ["b", "a", "c"], ["c", "a", "b"]):
        new_blocks = {"a": x * (1 + 1e-3), "b": nan, "c": x}
        ref = ([x, x], {k: x for k in order})
        report = compare(ref, ([x, nan], {k: new_blocks[k] for k in order}), tolerance=1e-2)
        assert report.worst_block == "b" and math.isnan(report.worst_block_rel_error), order
        assert math.isnan(report.model_rel_error) and not report.ok, order


def test_a_conversion_that_overflows_is_named_as_an_overflow(tiny_net, monkeypatch):
    """A fused block whose output is inf/NaN (here its kernel overflows) is refused with the
    overflow named and the fix, not 'check the BNs' / 'a larger tolerance'."""
    original = ConvKx1.kernel_bias  # only body.2 has a conv_kx1 branch
    monkeypatch.setattr(ConvKx1, "kernel_bias", lambda self: KernelBias(original(self).kernel * float("inf"),
                                                                        original(self).bias))
    with pytest.raises(ReparameterizationError, match=r"(?s)block 'body\.2'.*NaN/inf.*overflow in float32"):
        rz.reparameterize(tiny_net)


def test_calibrate_on_deploy_model_is_a_typed_error(tiny_net, tiny_input):
    with pytest.raises(NoRepBlocksError, match="unfold"):
        rz.calibrate_bn(rz.reparameterize(tiny_net), [tiny_input])


@pytest.mark.parametrize("call", ["reparameterize", "unfold"])
def test_a_model_with_non_finite_state_is_named_not_blamed_on_the_fusion(tiny_net, tiny_input, call):
    """A diverged run's model (a NaN BN statistic) used to fail Rep with 'changed the model's function:
    block X has relative error 5e-07 (whole model: nan)', pointing at the fusion; the error now says the
    model itself is broken and names the tensor."""
    net = tiny_net if call == "reparameterize" else rz.reparameterize(tiny_net)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    name = next(n for n, m in net.named_modules() if m is bn)
    bn.running_mean[0] = float("nan")
    before = snapshot(net)
    with pytest.raises(ReparameterizationError, match="model's own output on the probe is NaN/inf") as info:
        getattr(rz, call)(net)
    assert f"{name}.running_mean" in str(info.value) and "last good checkpoint" in str(info.value)
    after = snapshot(net)
    assert after.keys() == before.keys() and all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)


def test_a_float16_overflow_of_a_finite_model_is_named_as_such(tiny_net, tiny_input):
    """A model whose weights and statistics are finite but whose activations overflow in float16 is
    told to fuse in float32 (was: 'its weights or BN statistics are broken (a diverged training run?)
    ... load the last good checkpoint')."""
    net = copy.deepcopy(tiny_net).half()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(300.0)  # finite fp16 weights, activations past fp16's 65504
    assert non_finite_state(net) == []
    with pytest.raises(ReparameterizationError, match=r"(?s)float16.*model\.float\(\)") as info:
        rz.reparameterize(net, example_input=tiny_input.half())
    assert "diverged" not in str(info.value) and "last good checkpoint" not in str(info.value)


@pytest.mark.parametrize("inplace", [False, True])
def test_broken_block_raises_and_leaves_model_unchanged(tiny_net, tiny_input, monkeypatch, inplace):
    original = ConvKx1.kernel_bias  # only body.2 has a conv_kx1 branch

    def broken(self):
        kb = original(self)
        return KernelBias(kb.kernel + 0.05, kb.bias)

    monkeypatch.setattr(ConvKx1, "kernel_bias", broken)
    before, flags = snapshot(tiny_net), training_flags(tiny_net)
    with pytest.raises(ReparameterizationError, match=r"block 'body\.2'.*left unchanged") as info:
        rz.reparameterize(tiny_net, inplace=inplace)
    err = info.value
    assert err.worst_block == "body.2"
    assert err.tolerance == NET_TOL and err.rel_error > NET_TOL and err.model_rel_error > NET_TOL
    assert same_state(before, snapshot(tiny_net)) and training_flags(tiny_net) == flags
    assert not any(b.deploy for _, b in rz.rep_blocks(tiny_net))
    assert not hasattr(tiny_net, "repan_exactness")
    # without the perturbation the same call passes (the test is not vacuous)
    monkeypatch.undo()
    rz.reparameterize(tiny_net, inplace=inplace)


def test_set_lambda_counts_and_rejects(tiny_net):
    assert rz.set_lambda(tiny_net, 0.3) == 4
    assert all(float(b.lam) == pytest.approx(0.3) for _, b in rz.rep_blocks(tiny_net))
    with pytest.raises(LambdaRangeError):
        rz.set_lambda(tiny_net, 1.2)
    assert all(float(b.lam) == pytest.approx(0.3) for _, b in rz.rep_blocks(tiny_net))
    with pytest.raises(LambdaRangeError):
        rz.unfold(tiny_net, lam=-0.5)


# -- unfold -----------------------------------------------------------------------------
@pytest.fixture
def deploy_net(tiny_net):
    return rz.reparameterize(tiny_net)


@pytest.mark.parametrize("restore", ["inherit", "normalized", "identity"])
def test_unfold_at_lambda_zero_preserves_function(tiny_net, deploy_net, tiny_input, restore):
    before = snapshot(deploy_net)
    un = rz.unfold(deploy_net, restore=restore)
    assert same_state(before, snapshot(deploy_net))  # non-destructive
    assert same_state(_plain_state(deploy_net), _plain_state(un))
    for name, block in rz.rep_blocks(un):
        assert not block.deploy and float(block.lam) == 0.0
        assert block.branch_kinds == list(tiny_net.get_submodule(name).arch_branches)  # default: its own kinds
        assert not block.training  # the model was in eval mode, and so are the new modules
    assert rel_err(_out(deploy_net, tiny_input), _out(un, tiny_input)) <= NET_TOL
    assert un.repan_exactness["model_rel_error"] <= NET_TOL
    if restore == "inherit":  # Sec. 3.3: γ, μ, σ of the trunk BN come back from before the fusion
        for name, block in rz.rep_blocks(un):
            old = tiny_net.get_submodule(name).trunk.bn
            assert torch.equal(block.trunk.bn.running_var, old.running_var)
            assert torch.equal(block.trunk.bn.running_mean, old.running_mean)
            assert torch.equal(block.trunk.bn.weight, old.weight)


def test_unfold_default_re_adds_each_blocks_own_kinds_as_no_ops(deploy_net, tiny_input):
    """Sec. 3 (iii): Expand repeats the network's own multi-branch structure; the new branches'
    BN γ starts at 0, so even at λ = 1 the expanded network computes the fused one."""
    un = rz.unfold(deploy_net, lam=1.0)
    for name, block in rz.rep_blocks(un):
        assert block.branch_kinds == list(block.arch_branches)
        for branch in block.extras:
            assert all(float(bn.weight.detach().abs().max()) == 0.0 for bn in branch.bns()[-1:])
    assert rel_err(_out(deploy_net, tiny_input), _out(un, tiny_input)) <= NET_TOL
    generic = rz.unfold(deploy_net, branches=rz.convert.GENERIC_BRANCHES, branch_gamma=1.0)
    assert all(b.branch_kinds == ["conv_kxk", "conv_1x1"] for _, b in rz.rep_blocks(generic))
    with pytest.raises(ValueError, match="cannot be mixed"):
        rz.unfold(deploy_net, branches=("arch", "conv_1x1"))


def test_unfold_of_a_block_that_still_outputs_zero_is_exact():
    """timm's ``zero_init_last``: a ResNet block whose last BN γ is still 0 outputs exactly 0 while
    its running statistics moved (a frozen first stage, two SGD steps). unfold was refused with
    "relative error inf" (a 3e-11 residue over an all-zero block) although the model was exact."""
    torch.manual_seed(0)
    m = timm.create_model("repan_resnet18_acb_w025", num_classes=5)
    m.stages[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    m.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(m(torch.randn(8, 1, 28, 28)), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    block = m.stages[0][0].conv2
    assert float(block.trunk.bn.weight.abs().max()) == 0 and float(block.trunk.bn.running_mean.abs().max()) > 0
    u = rz.unfold(m, lam=0.0)  # verified: every block within the tolerance
    assert u.repan_exactness["model_rel_error"] <= 1e-5


def test_unfold_arch_on_a_plain_network_names_the_fix():
    from repan_zoo.blocks import RepBlock
    from repan_zoo.errors import UnfusableBranchError

    plain = rz.reparameterize(torch.nn.Sequential(RepBlock(4, 4, 3), RepBlock(4, 8, 3, 2)).eval())
    with pytest.raises(UnfusableBranchError, match="has branch kinds of its own.*conv_kxk"):
        rz.unfold(plain)


def test_reparameterize_of_unfold_is_the_original(deploy_net, tiny_input):
    back = rz.reparameterize(rz.unfold(deploy_net, branches=("conv_kxk", "conv_1x1", "1x1_kxk"), residual=True))
    assert rel_err(_out(deploy_net, tiny_input), _out(back, tiny_input)) <= BLOCK_TOL
    for name, block in rz.rep_blocks(back):
        ref = deploy_net.get_submodule(name).reparam_conv
        assert rel_err(ref.weight, block.reparam_conv.weight) <= BLOCK_TOL
        assert rel_err(ref.bias, block.reparam_conv.bias) <= BLOCK_TOL


def test_unfold_with_positive_lambda(deploy_net, tiny_input):
    gen = torch.Generator().manual_seed(5)
    un = rz.unfold(deploy_net, branches=("conv_kxk", "conv_1x1", "1x1_kxk"), lam=0.4, generator=gen, branch_gamma=1.0)
    assert all(float(b.lam) == pytest.approx(0.4) for _, b in rz.rep_blocks(un))
    train_out = _out(un, tiny_input)
    assert rel_err(_out(deploy_net, tiny_input), train_out) > 1e-2  # λ>0 changes the function (Eq. 3)
    fused = rz.reparameterize(un)
    assert rel_err(train_out, _out(fused, tiny_input)) <= NET_TOL
    assert fused.repan_exactness["worst_block_rel_error"] <= BLOCK_TOL


def test_unfold_residual_k_and_generator(deploy_net, tiny_input):
    un = rz.unfold(deploy_net, branches=("conv_kxk", "conv_1x1", "avg"), k=3, residual=True,
                   generator=torch.Generator().manual_seed(1))
    kinds = {name: b.branch_kinds for name, b in rz.rep_blocks(un)}
    # identity (residual BN) and avg only where shapes allow: body.2 is 8 -> 16, stride 2
    assert kinds["body.2"] == ["conv_kxk"] * 3 + ["conv_1x1"] * 3
    for name in ("body.0", "body.4", "extra.rep"):
        assert kinds[name] == ["conv_kxk"] * 3 + ["conv_1x1"] * 3 + ["avg"] * 3 + ["identity"]
    assert rel_err(_out(deploy_net, tiny_input), _out(un, tiny_input)) <= NET_TOL
    un2 = rz.unfold(deploy_net, k=2, generator=torch.Generator().manual_seed(1))
    assert all(b.branch_kinds == [kind for kind in b.arch_branches for _ in range(2)] for _, b in rz.rep_blocks(un2))


def test_unfold_generator_reproducible(deploy_net):
    a = rz.unfold(deploy_net, generator=torch.Generator().manual_seed(42))
    b = rz.unfold(deploy_net, generator=torch.Generator().manual_seed(42))
    c = rz.unfold(deploy_net, generator=torch.Generator().manual_seed(43))
    assert same_state(snapshot(a), snapshot(b))
    assert not same_state(snapshot(a), snapshot(c))
    # the global RNG state does not decide the new weights
    torch.manual_seed(123)
    d = rz.unfold(deploy_net, generator=torch.Generator().manual_seed(42))
    assert same_state(snapshot(a), snapshot(d))


def test_unfold_blocks_filter(deploy_net, tiny_input):
    un = rz.unfold(deploy_net, blocks=lambda name, block: name.startswith("body"))
    forms = {name: b.deploy for name, b in rz.rep_blocks(un)}
    assert forms == {"body.0": False, "body.2": False, "body.4": False, "extra.rep": True}
    assert same_state(snapshot(deploy_net.extra["rep"]), snapshot(un.extra["rep"]))
    assert rel_err(_out(deploy_net, tiny_input), _out(un, tiny_input)) <= NET_TOL


def test_unfold_unfit_everywhere_is_an_error(deploy_net):
    only_body2 = lambda name, block: name == "body.2"  # noqa: E731  (8 -> 16, stride 2)
    with pytest.raises(UnfusableBranchError, match=r"\['avg'\] fit none"):
        rz.unfold(deploy_net, branches=("avg",), blocks=only_body2)


def test_unfold_inplace(deploy_net, tiny_input):
    ref = _out(deploy_net, tiny_input)
    out = rz.unfold(deploy_net, inplace=True, lam=0.2)
    assert out is deploy_net and not any(b.deploy for _, b in rz.rep_blocks(deploy_net))
    assert all(float(b.lam) == pytest.approx(0.2) for _, b in rz.rep_blocks(deploy_net))
    rz.set_lambda(deploy_net, 0.0)
    assert rel_err(ref, _out(deploy_net, tiny_input)) <= NET_TOL


# -- calibrate_bn -------------------------------------------------------------------------------
def _input_stats(model, bns, batches):
    """Independent reference: per-channel mean and unbiased variance of each BN's input."""
    seen = {id(bn): [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda m, a: seen[id(m)].append(a[0].detach().double())) for bn in bns]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    out = {}
    for bn in bns:
        x = torch.cat(seen[id(bn)]).transpose(0, 1).reshape(bn.num_features, -1)
        out[id(bn)] = (x.mean(1), x.var(1, unbiased=True))
    return out


def test_calibrate_bn_keeps_function_and_sets_batch_stats(deploy_net, tiny_input):
    gen = torch.Generator().manual_seed(3)
    un = rz.unfold(deploy_net, branches=("conv_kxk", "conv_1x1", "1x1_kxk"), residual=True, generator=gen,
                   branch_gamma=1.0)
    fresh = [br for _, b in rz.rep_blocks(un) for br in b.extras]
    assert fresh and all(br.fresh for br in fresh)
    inherited = [b.trunk.bn for _, b in rz.rep_blocks(un)]
    old_stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in inherited]
    batches = [make_input(3, seed=20) * 2 + 0.5, make_input(3, seed=21)]
    ref = _out(un, tiny_input)
    out = rz.calibrate_bn(un, [(batches[0], torch.zeros(2)), batches[1]])  # DataLoader-style tuple too
    assert out is un
    assert rel_err(ref, _out(un, tiny_input)) <= NET_TOL  # eval function unchanged (λ = 0)
    bns = [bn for _, b in rz.rep_blocks(un) for bn in bns_of(b)]
    expected = _input_stats(un, bns, batches)
    for bn in bns:
        mean, var = expected[id(bn)]
        assert torch.allclose(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
    for bn, (m, v) in zip(inherited, old_stats):  # the statistics really moved
        assert not torch.allclose(bn.running_mean, m) and not torch.allclose(bn.running_var, v)
    # fresh branches start normalised: per-channel mean β=0 and variance γ²=1 on the calibration data
    for br in fresh:
        assert not br.fresh
        outs = []
        h = br.register_forward_hook(lambda m, a, o: outs.append(o.detach().double()))
        with torch.no_grad():
            for b in batches:
                un(b)
        h.remove()
        y = torch.cat(outs).transpose(0, 1).reshape(outs[0].shape[1], -1)
        assert y.mean(1).abs().max() < 1e-4
        assert (y.var(1) - 1).abs().max() < 1e-3
    assert any(len(bns_of(br)) == 2 for br in fresh)  # DBB nested BNs were part of it


def test_calibrate_bn_takes_num_batches_from_a_loader(deploy_net, tiny_input):
    """A training DataLoader is what users hold: num_batches takes only the first few of it (an
    endless stream here, which calibrate_bn would otherwise read until memory runs out); the result
    is that of calibrating on those batches as a list. num_batches < 1 is refused, model unchanged."""
    drawn = []

    def stream():
        i = 0
        while True:
            drawn.append(i)
            yield make_input(3, seed=40 + i), torch.zeros(2)
            i += 1

    un = rz.unfold(deploy_net, branches=("conv_1x1",), branch_gamma=1.0, generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(un)
    rz.calibrate_bn(un, stream(), num_batches=3)
    assert drawn == [0, 1, 2]
    rz.calibrate_bn(ref, [make_input(3, seed=40 + i) for i in range(3)])
    assert same_state(snapshot(un), snapshot(ref))
    before = snapshot(un)
    for bad in (0, -1):
        with pytest.raises(CalibrationError, match="num_batches"):
            rz.calibrate_bn(un, stream(), num_batches=bad)
    assert same_state(before, snapshot(un))


@pytest.mark.parametrize("form", ["loader-pair", "image-list"])
def test_calibrate_bn_names_the_detection_helper_for_lists_of_single_images(deploy_net, form):
    """A torchvision detection loader yields (images, targets) with images a tuple of C×H×W tensors:
    the error names that form and the helper that makes backbone batches of it (was: 'batch 0 is a
    tuple, not images; pass ... (images, labels) pairs as a DataLoader yields them')."""
    images = tuple(make_input(3, seed=s)[0] for s in range(2))
    batch = (images, ({"boxes": torch.zeros(0, 4)},) * 2) if form == "loader-pair" else list(images)
    un = rz.unfold(deploy_net, branches=("conv_1x1",))
    before = snapshot(un)
    with pytest.raises(CalibrationError, match=r"batch 0 holds 2 single images.*detection.*"
                                               r"calibrate_bn\(detector\.backbone\.body, "
                                               r"repan_zoo\.detection\.calibration_batches\(detector, images"):
        rz.calibrate_bn(un, [batch])
    assert same_state(before, snapshot(un))


def test_calibrate_bn_names_a_batch_dtype_that_is_not_the_models(deploy_net):
    """A bfloat16 model (``create_model(..., dtype=torch.bfloat16)``) given float32 batches: the error
    names both dtypes and the cast (was: 'Pass batches of the model's input shape', the shape being right)."""
    un = rz.unfold(deploy_net, branches=("conv_1x1",)).to(torch.bfloat16)
    before = snapshot(un)
    with pytest.raises(CalibrationError, match=r"(?s)float32.*bfloat16.*\.to\(torch\.bfloat16\)"):
        rz.calibrate_bn(un, [make_input(3)])
    assert same_state(before, snapshot(un))


def test_calibrate_bn_keeps_function_at_positive_lambda_for_inherited(deploy_net, tiny_input):
    """Inherited BNs keep the block function whatever the statistics are: with no extra branches
    the model output is unchanged even at λ>0."""
    un = rz.unfold(deploy_net, branches=(), k=0, lam=0.7)
    ref = _out(un, tiny_input)
    rz.calibrate_bn(un, [make_input(3, seed=30) * 3 - 1])
    assert rel_err(ref, _out(un, tiny_input)) <= NET_TOL


# -- BN statistics never estimated from data --------------------------------------------------------
def _train_forward_warnings(model, x):
    """The UncalibratedBNWarnings of one training-mode forward of ``model``."""
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(x)
    return [w for w in caught if issubclass(w.category, UncalibratedBNWarning)]


def test_training_deploy_weights_unfolded_without_calibration_warns_naming_the_fix():
    """Deploy weights carry no BN statistics: ``pretrained=True`` in train form (and ``unfold`` of a
    deploy model) restores each trunk BN with μ = 0, σ = 1, which training mode replaces by batch
    statistics (the shipped weights then score 31-54 % instead of 93-95 %). The first training-mode
    forward says so and names ``calibrate_bn``; after calibrating, or in eval mode, nothing is said."""
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = timm.create_model("repan_repvgg_a1_w025", pretrained=True)  # bundled weights, offline
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedBNWarning)
        with torch.no_grad():
            model.eval()(x)  # eval mode uses the restored statistics: exact, nothing to say
    caught = _train_forward_warnings(model, x)
    assert caught, "a training-mode forward on never-calibrated BN statistics must warn"
    msg = str(caught[0].message)
    assert "calibrate_bn" in msg and "training mode" in msg
    assert not _train_forward_warnings(model, x)  # once: the running statistics have now seen data

    fresh = timm.create_model("repan_repvgg_a1_w025", pretrained=True)
    rz.calibrate_bn(fresh, [x])
    assert not _train_forward_warnings(fresh, x)


def test_unfold_flags_only_statistics_it_had_to_invent(deploy_net, tiny_net, tiny_input):
    """unfold of deploy weights loaded from a state dict (no trunk BN to inherit: the one a block
    remembers from its own fusion belongs to the weights it had before) flags the trunks; unfolding a
    fused train-form model inherits real statistics and is not flagged; a flag survives Rep → unfold;
    loading a train-form state dict (statistics included) clears it."""
    assert not _train_forward_warnings(copy.deepcopy(tiny_net), tiny_input)
    inherited = rz.unfold(deploy_net)
    assert not any(b.trunk.uncalibrated for _, b in rz.rep_blocks(inherited))
    assert not _train_forward_warnings(inherited, tiny_input)
    loaded = rz.reparameterize(TinyNet())
    loaded.load_state_dict(deploy_net.state_dict())
    invented = rz.unfold(loaded)
    assert all(b.trunk.uncalibrated for _, b in rz.rep_blocks(invented))
    assert rz.convert.uncalibrated_blocks(invented) == _block_names(invented)
    assert rz.convert.uncalibrated_blocks(inherited) == [] == rz.convert.uncalibrated_blocks(loaded)  # deploy: none
    again = rz.unfold(rz.reparameterize(invented))
    assert all(b.trunk.uncalibrated for _, b in rz.rep_blocks(again))
    invented.load_state_dict(inherited.state_dict())
    assert not any(b.trunk.uncalibrated for _, b in rz.rep_blocks(invented))
    assert not _train_forward_warnings(invented, tiny_input)
    assert len(_train_forward_warnings(again, tiny_input)) == len(rz.rep_blocks(again))


@pytest.mark.filterwarnings("ignore::repan_zoo.errors.UncalibratedBNWarning")
def test_a_flagged_model_still_scripts(deploy_net, tiny_input):
    model = rz.unfold(deploy_net, restore="normalized").train()
    assert all(b.trunk.uncalibrated for _, b in rz.rep_blocks(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    with torch.no_grad():
        assert rel_err(scripted(tiny_input), model(tiny_input)) <= NET_TOL


# -- SyncBatchNorm / half precision --------------------------------------------------------------
def test_sync_batchnorm_fuse_and_revert(tiny_net, tiny_input):
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(tiny_net))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    ref = _out(tiny_net, tiny_input)
    assert torch.equal(ref, _out(sync, tiny_input))  # eval mode runs on CPU without a process group
    fused = rz.reparameterize(sync)
    assert rel_err(ref, _out(fused, tiny_input)) <= NET_TOL
    assert same_state(snapshot(rz.reparameterize(tiny_net)), snapshot(fused))
    back = revert_sync_batchnorm(sync)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in back.modules())
    assert type(back.extra["head"].bn) is nn.BatchNorm2d
    assert same_state(snapshot(tiny_net), snapshot(back)) and training_flags(tiny_net) == training_flags(back)
    assert torch.equal(ref, _out(back, tiny_input))
    assert rel_err(ref, _out(rz.reparameterize(back), tiny_input)) <= NET_TOL


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_fuses_in_fp32(tiny_net, tiny_input, dtype, tol):
    half = copy.deepcopy(tiny_net).to(dtype)
    fused = rz.reparameterize(half)
    assert all(p.dtype == dtype for p in fused.parameters())
    # fusion is done in fp32 internally and cast back: the same as fusing the fp32 upcast
    ref = rz.reparameterize(copy.deepcopy(half).float()).to(dtype)
    assert same_state(snapshot(ref), snapshot(fused))
    x = tiny_input.to(dtype)
    assert rel_err(_out(half, x), _out(fused, x)) <= tol
    assert rel_err(_out(tiny_net, tiny_input), _out(fused, x)) <= tol
    assert fused.repan_exactness["dtype"] == str(dtype).replace("torch.", "")


def test_relative_error_helper_agrees():
    a = torch.tensor([1.0, -4.0, 2.0])
    b = torch.tensor([1.0, -4.0, 2.5])
    assert rz.verify.relative_error(a, b) == pytest.approx(0.125) == rel_err(a, b)
    assert rz.verify.relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


# -- Eq. 6 on branches attached by unfold -------------------------------------------------------
def test_gradients_reach_unfolded_branches_only_when_lambda_is_positive():
    deploy = rz.reparameterize(randomize(TinyNet(), seed=11))
    x = torch.randn(2, next(deploy.parameters()).shape[1], 9, 9, generator=torch.Generator().manual_seed(0))

    def new_branch_grads(lam: float):
        model = rz.unfold(deploy, ("conv_kxk", "conv_1x1"), lam=lam, generator=torch.Generator().manual_seed(1),
                          branch_gamma=1.0).eval()
        model.zero_grad()
        model(x).square().sum().backward()
        return [b.conv.weight.grad.clone() for _, blk in rz.rep_blocks(model) for b in blk.extras]

    at_half, at_zero = new_branch_grads(0.5), new_branch_grads(0.0)
    assert at_half and all(g.abs().max() > 0 for g in at_half)  # λ>0: gradients reach every new branch
    assert len(at_zero) == len(at_half) and all(g.abs().max() == 0 for g in at_zero)  # λ=0: none (Eq. 6)
    # (exact proportionality to λ with a fixed upstream gradient: tests/test_blocks.py)


def test_default_probe_follows_in_chans_of_a_timm_model():
    """timm keeps ``input_size=(3, …)`` in the cfg of ``create_model(..., in_chans=1)``; the
    default probe must feed the channels the first conv takes, or reparameterize() cannot run."""
    import timm

    from repan_zoo.verify import probe_input

    model = timm.create_model("repan_repvgg_a0", in_chans=1, num_classes=10)
    assert model.pretrained_cfg["input_size"][0] == 3
    assert probe_input(model).shape[1] == 1
    fused = rz.reparameterize(model)
    assert fused.repan_exactness["input_shape"][1] == 1
    assert fused.repan_exactness["model_rel_error"] <= NET_TOL


def _fresh_mobileone_with_data_statistics():
    """A fresh MobileOne-S0 for 1×28×28 whose BN statistics come from (seeded) data batches: a deep
    network whose float32 output is ~1e-5 from float64 before any conversion."""
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = timm.create_model("repan_mobileone_s0", in_chans=1, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    update_bn([torch.rand(32, 1, 28, 28, generator=gen) * 3 - 1 for _ in range(3)], model)
    probe = torch.rand(16, 1, 28, 28, generator=gen) * 3 - 1
    return model, probe


def test_whole_model_error_at_the_networks_own_fp32_rounding_is_accepted(single_thread):
    model, probe = _fresh_mobileone_with_data_statistics()
    fused = rz.reparameterize(model, example_input=probe)
    ex = fused.repan_exactness
    assert ex["worst_block_rel_error"] <= BLOCK_TOL
    if ex["model_rel_error"] > NET_TOL:  # the float64 reference decided, and says why
        f = ex["float64"]["model"]
        assert f["original"] > 1e-6 and f["exact"] <= NET_TOL
    else:
        assert ex["float64"] is None


def test_a_block_whose_branches_cancel_is_judged_against_float64(single_thread):
    """Two big branches that cancel to 1 %: the train form's float32 output carries the rounding of
    the big terms (measured 5.8e-5 from float64, relative to the small result) while the fusion,
    done in float64, is exact (3e-7). The fixed bound would reject that; the float64 reference
    accepts it, and still rejects the same fusion with its bias shifted by 1e-3 of the output."""
    from repan_zoo.convert import _checked_conversion

    torch.manual_seed(0)
    block = RepBlock(8, 8, 3, branches=("conv_kxk",)).eval()
    with torch.no_grad():
        other = block.extras[0]
        other.conv.weight.copy_(-block.trunk.conv.weight * (1 - 1e-2))
        for bn in (block.trunk.bn, other.bn):
            bn.running_mean.zero_(); bn.running_var.fill_(1.0); bn.weight.fill_(1.0); bn.bias.zero_()
    x = torch.randn(4, 8, 12, 12) * 300
    fused = rz.reparameterize(block, example_input=x)
    ex = fused.repan_exactness
    assert ex["model_rel_error"] > NET_TOL  # float32 rounding of the train form, not the fusion
    f = ex["float64"]["blocks"][ex["worst_block"]]
    assert f["converted"] < 1e-6 < NET_TOL < f["original"] and f["exact"] < 1e-6

    def fuse_and_shift(m):
        m.reparameterize()
        with torch.no_grad():
            m.reparam_conv.bias.add_(1e-3 * m(x).abs().max())

    with pytest.raises(ReparameterizationError, match="vs float64"):
        _checked_conversion(block, fuse_and_shift, call="test", inplace=False, verify=True, example_input=x,
                            tolerance=None)


def test_an_error_beyond_fp32_rounding_outside_the_blocks_is_still_caught(single_thread):
    from repan_zoo.convert import _checked_conversion

    model, probe = _fresh_mobileone_with_data_statistics()

    def fuse_and_break_head(m):
        for _, block in rz.verify.rep_blocks(m):
            block.reparameterize()
        with torch.no_grad():
            m.head.fc.weight.mul_(1 + 1e-4)  # 1e-4 relative: ten times the tolerance

    with pytest.raises(ReparameterizationError, match="vs float64"):
        _checked_conversion(model, fuse_and_break_head, call="test", inplace=False, verify=True,
                            example_input=probe, tolerance=None)


def test_a_meta_device_model_is_refused_by_a_checked_conversion_by_name():
    """A model built on the meta device (``timm.create_model(..., device="meta")``) has no values to
    check a conversion on: the checked call says so and names the fix (was torch's "Tensor.item()
    cannot be called on meta tensors"); ``verify=False`` converts its structure."""
    from repan_zoo import reparameterize, unfold

    model = timm.create_model("repan_repvgg_a0", device="meta")
    for call in (lambda m: reparameterize(m), lambda m: unfold(reparameterize(m, verify=False))):
        with pytest.raises(ReparameterizationError, match=r"meta device.*verify=False.*to_empty"):
            call(model)
    deploy = reparameterize(model, verify=False)
    assert all(p.is_meta for p in deploy.parameters())
    bns = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert bns(deploy) == 0 < bns(model)
    train = unfold(deploy, verify=False)
    assert all(p.is_meta for p in train.parameters()) and bns(train) == bns(model)


def test_sync_batchnorm_stays_sync_through_reparameterize_and_unfold(tiny_input):
    """A model converted for DDP (``nn.SyncBatchNorm.convert_sync_batchnorm``) keeps synchronised BNs
    after ``unfold`` (was: every new branch, the restored trunk included, came back as BatchNorm2d, so
    a user's own DDP loop silently stopped syncing the statistics), as frozen BNs stay frozen."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(timm.create_model("repan_repvgg_a0_w025", num_classes=10)).eval()
    u = rz.unfold(rz.reparameterize(model), lam=0.0)
    bns = [m for m in u.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, nn.SyncBatchNorm) for m in bns)
    plain = rz.unfold(rz.reparameterize(timm.create_model("repan_repvgg_a0_w025", num_classes=10)), lam=0.0)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())


def test_frozen_bns_with_trainable_convs_leave_the_new_branches_trainable():
    """BNs frozen alone (timm's freeze_batch_norm_2d, as detection backbones do) with trainable convs:
    the restored trunk keeps its frozen BN, the new branches get trainable BNs (a frozen output BN at
    γ = 0 would keep a new branch silent for good: was FrozenBatchNorm2d, no gradient)."""
    from timm.layers import freeze_batch_norm_2d

    model = freeze_batch_norm_2d(randomize(timm.create_model("repan_repvgg_a0_w025"), seed=1))
    train = rz.unfold(rz.reparameterize(model), lam=1.0)
    block = train.stem.conv
    assert type(block.trunk.bn).__name__ == "FrozenBatchNorm2d"
    assert all(isinstance(bn, nn.BatchNorm2d) for b in block.extras for bn in b.bns())
    train.train()(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(float(bn.weight.grad.abs().sum()) > 0 for b in block.extras for bn in b.bns())  # γ can grow


@pytest.mark.parametrize("how", ["load_state_dict", "load_into"])
def test_a_meta_model_materialised_with_to_empty_takes_deploy_weights(how):
    """The route the meta-device error names: build on meta, ``to_empty``, load a deploy state dict.
    A deploy state dict carries no λ, so the train-form blocks keep theirs: the λ they were built or
    last set with, not the uninitialised memory ``to_empty`` left in the buffer (was: 'λ=nan is
    outside [0, 1]', or a silently wrong λ)."""
    from repan_zoo.checkpoint import load_into

    name = "repan_repvgg_a0_w025"
    deploy = rz.reparameterize(randomize(timm.create_model(name, num_classes=10), seed=2))
    state = deploy.state_dict()
    for garbage in (float("nan"), -1.8e38, 5.0):  # a λ no set_lambda can give (one in [0, 1] is taken as λ)
        model = timm.create_model(name, num_classes=10, device="meta").to_empty(device="cpu")
        for _, block in rz.rep_blocks(model):
            block.lam.fill_(garbage)  # what to_empty may leave there
        if how == "load_state_dict":
            model.load_state_dict(state)
        else:
            load_into(model, state, {"form": "deploy"})
        assert {float(b.lam) for _, b in rz.rep_blocks(model)} == {1.0}  # the constructor's λ
        x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert rel_err(deploy.eval()(x), model.eval()(x)) <= 1e-5


def test_a_deploy_state_dict_keeps_the_lambda_an_ema_copy_or_a_refused_load_left():
    """λ carried into the train form by a deploy state dict is the block's buffer, whoever wrote it:
    timm's ModelEmaV3 copies it in place (not through set_lambda), and a load that was refused and
    rolled back leaves the λ from before."""
    from timm.utils import ModelEmaV3

    from repan_zoo.checkpoint import load_into
    from repan_zoo.errors import StateDictMismatchError

    name = "repan_repvgg_a0_w025"
    model = randomize(timm.create_model(name, num_classes=10), seed=2)
    ema = ModelEmaV3(model, decay=0.0)
    rz.set_lambda(model, 0.3)
    ema.update(model)
    ema.module.load_state_dict(rz.reparameterize(model).state_dict())
    assert {float(b.lam) for _, b in rz.rep_blocks(ema.module)} == {float(torch.tensor(0.3))}

    other = timm.create_model(name, num_classes=7)
    rz.set_lambda(other, 0.5)
    fresh = timm.create_model(name, num_classes=10)
    with pytest.raises(StateDictMismatchError):
        fresh.load_state_dict(other.state_dict())
    load_into(fresh, rz.reparameterize(model).state_dict(), {"form": "deploy"})
    assert {float(b.lam) for _, b in rz.rep_blocks(fresh)} == {1.0}


def test_conversions_inside_an_autocast_region_check_in_fp32():
    """A user's ``with torch.autocast('cpu', dtype=torch.bfloat16):`` around reparameterize / unfold /
    calibrate_bn does not reach the exactness checks: their figures are fp32's (was: model_rel_error
    0.026 against a 1e-5 tolerance, accepted only by the float64 fallback)."""
    model = randomize(timm.create_model("repan_resnet18_acb_w025", num_classes=10), seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deploy = rz.reparameterize(model)
        train = rz.unfold(deploy)
    for converted in (deploy, train):
        assert converted.repan_exactness["model_rel_error"] <= 1e-5
        assert converted.repan_exactness.get("float64") is None  # no fallback was needed


def _frozen_state(model):
    """Per Rep block: (whether every parameter is frozen, the set of its BN-like classes)."""
    from repan_zoo.blocks import rep_blocks
    from repan_zoo.blocks.bn import is_bn_like
    return {name: (all(not p.requires_grad for p in b.parameters()),
                   {type(m).__name__ for m in b.modules() if is_bn_like(m)})
            for name, b in rep_blocks(model)}


@pytest.mark.parametrize("how", ["timm-freeze", "requires_grad"])
def test_frozen_blocks_stay_frozen_through_reparameterize_and_unfold(how):
    """A frozen stem (timm's ``freeze``: FrozenBatchNorm2d + requires_grad=False; or requires_grad=False
    alone) is still frozen after fusing and after a RepAn cycle's unfold, with the same kind of BN;
    the other blocks stay trainable (was: the fused conv and the unfolded branches trained again)."""
    from timm.utils.model import freeze
    model = randomize(timm.create_model("repan_resnet18_w025", branches=("conv_1x1",)), seed=1)
    if how == "timm-freeze":
        freeze(model, ["stem"])
    else:
        model.stem.requires_grad_(False)
    before = _frozen_state(model)
    frozen = {n for n, (f, _) in before.items() if f}
    assert frozen and all(n.startswith("stem") for n in frozen) and len(frozen) < len(before)
    deploy = rz.reparameterize(model)
    fused = {name: not b.reparam_conv.weight.requires_grad for name, b in rz.rep_blocks(deploy)}
    assert {n for n, f in fused.items() if f} == frozen
    for model_again in (rz.unfold(deploy, ["conv_1x1", "conv_kxk"]), rz.unfold(model)):
        after = _frozen_state(model_again)
        assert {n for n, (f, _) in after.items() if f} == frozen
        for name in frozen:
            assert after[name][1] == before[name][1]  # FrozenBatchNorm2d stays frozen, BatchNorm2d stays BN
        assert all(after[n][1] == {"BatchNorm2d"} for n in after if n not in frozen)
        assert all(p.requires_grad for n, p in model_again.named_parameters() if not n.startswith("stem"))

"""Our own version of what timm's ``tests/test_models.py`` asserts, for every ``repan_*`` model.

Written from timm's conventions (not copied): forward (and with gradient checkpointing),
backward with a gradient on every parameter, default-cfg completeness (``first_conv`` /
``classifier`` names exist, ``input_size``, ``pool_size``, ``mean``/``std``, ``num_features`` /
``head_hidden_size``, ``forward_head(pre_logits=True)``, ``reset_classifier``), TorchScript,
``features_only`` (list and ``forward_intermediates`` getter), and torch.fx through timm's
no-trace lists. Each model is built once per aspect group to keep the big ones fast; inputs
are small (≤ 64 px, timm's own limits are 96–384 px).
"""
from __future__ import annotations

import math

import pytest
import timm
import torch
from timm import set_scriptable
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torch.fx import GraphModule
from torchvision.models.feature_extraction import NodePathTracer

import repan_zoo  # noqa: F401  (registers the repan_* models)

if hasattr(torch._C, "_jit_set_profiling_executor"):  # as timm's tests: skip the slow profiling compile
    torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_mode(False)

NAMES = timm.list_models("repan_*")
#: ≥ 50 M train-form parameters (marked ``slow``: building and scripting them dominates the time).
BIG = ("repan_repvgg_b1", "repan_repvgg_b2", "repan_repvgg_b3")
EVERY_MODEL = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NAMES]
CFG_KEYS = ("url", "num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std",
            "first_conv", "classifier", "license", "architecture", "tag")


def _small_size(cfg) -> tuple:
    """(C, H, W) of the test input: the default size when it is small, else 32×32."""
    c, h, w = cfg["input_size"]
    return (c, h, w) if max(h, w) <= 32 else (c, 32, 32)


def _randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _fx_model(model) -> GraphModule:
    """Symbolic trace with timm's no-trace leaf modules / autowrap functions (what timm's fx
    feature extraction uses); RepNet's graph does not depend on train/eval, so one trace serves both."""
    tracer = NodePathTracer(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    return GraphModule(model, tracer.trace(model))


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_default_cfg_and_head(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    missing = [k for k in CFG_KEYS if k not in cfg]
    assert not missing, f"pretrained_cfg lacks {missing}"
    assert cfg["architecture"] == name
    c = cfg["input_size"][0]
    assert len(cfg["mean"]) == len(cfg["std"]) == c == model.in_chans
    assert cfg["num_classes"] == model.num_classes > 0
    state = model.state_dict()
    first = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    for conv in first:
        assert f"{conv}.weight" in state, f"first_conv {conv} not in the model"
        assert model.get_submodule(conv).in_channels == c
    classifier = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    for fc in classifier:
        assert f"{fc}.weight" in state, f"classifier {fc} not in the model"
    assert model.get_classifier() is model.get_submodule(classifier[0])
    assert model.num_features > 0 and model.head_hidden_size > 0

    # pool_size: measured at the default input size for the small-input models; for the
    # ImageNet models from the layout at 224 and a measured 64×64 pass (same formula).
    _, h, _ = cfg["input_size"]
    probe = h if h <= 32 else 64
    with torch.no_grad():
        feats = model.forward_features(_randn(1, c, probe, probe))
        assert feats.shape[1] == model.num_features
        assert feats.shape[-1] == model.cfg.output_size(probe)
        if probe == h:
            assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
        else:
            assert (model.cfg.output_size(h),) * 2 == tuple(cfg["pool_size"])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        assert model.forward_head(feats).shape == (1, model.num_classes)
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(_randn(1, c, probe, probe))
        assert pooled.shape == pre.shape
        model.reset_classifier(0, "")
        assert model(_randn(1, c, probe, probe)).shape == feats.shape
        bare = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert bare(_randn(1, c, probe, probe)).shape == feats.shape
    matcher = model.group_matcher()
    assert set(matcher) == {"stem", "blocks"}


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_forward_backward_torchscript_fx(name):
    """Forward (batch 1, no NaN; grad checkpointing gives the same output), backward with
    num_classes=42 and a gradient for every parameter, TorchScript, and fx (eval: identical
    output; train: backward through the traced graph)."""
    with set_scriptable(True):
        model = timm.create_model(name, num_classes=42)
    size = _small_size(model.pretrained_cfg)
    x = _randn(1, *size)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 42) and not torch.isnan(out).any()
        model.set_grad_checkpointing(True)
        assert torch.allclose(model(x), out, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)

        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), out, rtol=1e-4, atol=1e-5)
        del scripted

        fx = _fx_model(model)
        assert torch.equal(fx(x), out)

    model.train()
    fx.train()
    y = fx(_randn(2, *size, seed=1))
    y.mean().backward()
    assert y.shape == (2, 42)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (fx) for {missing[:5]}"

    model.zero_grad(set_to_none=True)
    y = model(_randn(2, *size, seed=1))
    y.mean().backward()
    assert not torch.isnan(y).any()
    params = list(model.named_parameters())
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert sum(p.numel() for _, p in params) == sum(p.grad.numel() for _, p in params)


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_features_only(name):
    """features_only (list wrapper, default out_indices) and the forward_intermediates getter give
    ≥ 3 maps with the channels of feature_info and spatial size ≤ ceil(size / reduction) + 1."""
    features = timm.create_model(name, features_only=True).eval()
    channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
    assert len(channels) >= 3
    c, h, w = _small_size(features.pretrained_cfg)
    x = _randn(1, c, h, w)
    with torch.no_grad():
        maps = features(x)
        getter = timm.create_model(name, features_only=True, feature_cls="getter").eval()
        got = getter(x)
    for outs in (maps, got):
        assert len(outs) == len(channels)
        for ch, r, o in zip(channels, reductions, outs):
            assert o.shape[0] == 1 and o.shape[1] == ch and not torch.isnan(o).any()
            assert o.shape[2] <= math.ceil(h / r) + 1 and o.shape[3] <= math.ceil(w / r) + 1
    assert getter.feature_info.channels() == channels


@pytest.mark.parametrize("name", ["repan_repvgg_a0_w025", "repan_resnet18_dbb_w025", "repan_mobileone_s0"])
def test_forward_intermediates_and_deploy_form(name):
    """forward_intermediates matches forward_features and feature_info; the deploy form passes the
    same forward / TorchScript / fx checks."""
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = _randn(1, *_small_size(model.pretrained_cfg))
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == info.channels()
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], inter[-1])
        model.set_grad_checkpointing(True)
        final2, _ = model.forward_intermediates(x)
        assert torch.allclose(final, final2, rtol=1e-4, atol=1e-5)
    deploy = timm.create_model(name, deploy=True).eval()
    with torch.no_grad():
        out = deploy(x)
        assert torch.allclose(torch.jit.script(deploy)(x), out, rtol=1e-4, atol=1e-5)
        assert torch.equal(_fx_model(deploy)(x), out)


# -- timm's model API contract (issue 15.6) ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("start_classes", [1000, 0], ids=["with_head", "headless"])
def test_reset_classifier_follows_device_dtype_and_mode(name, start_classes):
    """timm's own models build the new head like the model (``get_device_dtype``) and in its
    train/eval mode; so does every repan_* model, whether or not it had a classifier (built on the
    meta device: nothing is computed)."""
    model = timm.create_model(name, num_classes=start_classes, device="meta").to(dtype=torch.float64).eval()
    model.reset_classifier(5)
    fc = model.get_classifier()
    assert (fc.weight.device.type, fc.weight.dtype) == ("meta", torch.float64)
    assert not any(m.training for m in model.head.modules())
    model.reset_classifier(3, global_pool="catavgmax")
    assert model.get_classifier().weight.dtype == torch.float64 and model.head_hidden_size == 2 * model.num_features
    pruned = model.prune_intermediate_layers(indices=1, prune_head=True)
    assert pruned and all(p.device.type == "meta" and p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize("name", ["repan_repvgg_a0_w025", "repan_mobileone_s0", "repan_resnet18_dbb_w025", "repan_resnet50"])
def test_head_contract_as_timm_checks_its_own_models(name):
    """As timm's tests/test_models.py: reset_classifier(0) makes forward return the pooled
    features; forward_head(pre_logits=True) has head_hidden_size features; group_matcher covers
    every non-head parameter; unknown kwargs raise TypeError."""
    from timm.models import group_parameters

    model = timm.create_model(name, width_mult=0.25, num_classes=7) if not name.endswith("_w025") else \
        timm.create_model(name, num_classes=7)
    model.eval()
    x = _randn(2, *_small_size(model.pretrained_cfg))
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        assert model.forward_head(feats).shape == (2, 7)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    groups = group_parameters(model, model.group_matcher())
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}
    assert {n for n, _ in model.named_parameters()} - {
        n for n in grouped if n.startswith(("stem", "stages"))
    } <= {n for n, _ in model.named_parameters() if n.startswith("head")}
    with pytest.raises(TypeError, match="not_a_timm_kwarg"):
        timm.create_model(name, not_a_timm_kwarg=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", ["repan_repvgg_a0", "repan_resnet18_acb_w025", "repan_mobileone_s0", "repan_resnet18_dbb_w025"])
def test_unfolded_and_pretrained_models_script_like_fresh_ones(name):
    """Branches added by ``unfold`` / RepAn's Expand (the form ``pretrained=True`` hands back, and what
    every RepAn cycle trains) carry an instance ``fresh`` flag; TorchScript must script them as it does
    a freshly built model (was: "Unknown type annotation: 'bool'" from every unfolded model)."""
    from repan_zoo import reparameterize, unfold
    from repan_zoo.blocks.branches import BRANCH_KINDS

    with set_scriptable(True):
        model = timm.create_model(name).eval()
    x = _randn(2, *_small_size(model.pretrained_cfg))
    deploy = reparameterize(model, example_input=x)
    for branches in (None, sorted(BRANCH_KINDS)):  # the architecture's own kinds, then every kind that fits
        net = unfold(deploy, branches, lam=1.0, generator=torch.Generator().manual_seed(0), example_input=x).eval()
        with torch.no_grad():
            assert torch.allclose(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)
    if name == "repan_resnet18_acb_w025":  # bundled Fashion-MNIST weights: offline
        net = timm.create_model(name, pretrained=True).eval()
        x = _randn(2, *net.pretrained_cfg["input_size"])
        with torch.no_grad():
            assert torch.allclose(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)

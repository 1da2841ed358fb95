"""Every registered ``repan_*`` model: exact fusion, unfold, deploy checkpoints, timm's tools, API.

Exactness is always checked in eval mode with random BN statistics (``randomize_bn``) on
small inputs (32×32, 28×28 for the Fashion-MNIST ``_w025`` models).
"""
from __future__ import annotations

import math
import sys
import types

import pytest
import timm
import torch
import torch.nn as nn
from helpers import randomize_bn, rel_err
from timm.models import FeatureListNet

import repan_zoo
from repan_zoo.checkpoint import load_into, read_checkpoint, save_checkpoint
from repan_zoo.errors import CheckpointError, ModelConfigError, UnknownModelArgError
from repan_zoo.models import MODELS, RepNet, checkpoint_filter
from repan_zoo.verify import relative_error

NAMES = timm.list_models("repan_*")
#: ≥ 50 M train-form parameters: most of this file's time goes to fusing them (marked ``slow``).
BIG = ("repan_repvgg_b1", "repan_repvgg_b2", "repan_repvgg_b3")
EVERY_MODEL = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NAMES]
_BN = nn.modules.batchnorm._BatchNorm


def _input(model: nn.Module, batch: int = 2, seed: int = 3) -> torch.Tensor:
    c, h, _ = model.pretrained_cfg["input_size"]
    size = h if h <= 32 else 32
    return torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(seed))


def _random_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)  # the conv init draws from the global RNG: the same weights whatever ran before
    model = timm.create_model(name, **kwargs)
    return randomize_bn(model, torch.Generator().manual_seed(seed)).eval()


def test_registry_lists_every_family():
    assert sorted(NAMES) == sorted(MODELS)
    for required in (
        [f"repan_repvgg_{v}" for v in ("a0", "a1", "a2", "b0", "b1", "b2", "b3")]
        + [f"repan_resnet{d}{s}" for d in (18, 34, 50) for s in ("", "_dbb", "_acb")]
        + ["repan_mobilenet"] + [f"repan_mobileone_s{i}" for i in range(5)]
        + ["repan_repvgg_a0_w025", "repan_repvgg_a1_w025", "repan_resnet18_dbb_w025", "repan_resnet18_acb_w025",
           "repan_mobileone_s0_w050"]
    ):
        assert required in NAMES, required


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_fuse_unfold_and_deploy_checkpoint(name, tmp_path):
    """Train form → reparameterize ≤1e-5 with no BN left; unfold round trip ≤1e-5;
    ``timm.utils.reparameterize_model`` == our ``reparameterize`` ≤1e-6; deploy safetensors →
    fresh ``deploy=True`` model, identical outputs. (The timm/ours comparison runs on the unfolded
    model, whose fusion is cheaper than the architecture's own: the big RepVGG-B models stay fast.)"""
    model = _random_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and "tag" in cfg
    x = _input(model)
    with torch.no_grad():
        y_train = model(x)

    deploy = repan_zoo.reparameterize(model, example_input=x)  # a checked deep copy
    del model
    assert all(b.deploy for _, b in repan_zoo.rep_blocks(deploy))
    assert not [n for n, m in deploy.named_modules() if isinstance(m, _BN)], "BatchNorm left in the deploy model"
    with torch.no_grad():
        y_deploy = deploy(x)
    assert rel_err(y_train, y_deploy) <= 1e-5
    assert deploy.repan_exactness["model_rel_error"] <= 1e-5

    unfolded = repan_zoo.unfold(deploy, ("conv_1x1",), example_input=x, generator=torch.Generator().manual_seed(5))
    assert all(not b.deploy and len(b.extras) == 1 for _, b in repan_zoo.rep_blocks(unfolded))
    randomize_bn(unfolded, torch.Generator().manual_seed(6))  # a trained-looking multi-branch model, λ=1 (Eq. 3)
    repan_zoo.set_lambda(unfolded, 1.0)
    with torch.no_grad():
        y_unfolded = unfolded(x)
    ours = repan_zoo.reparameterize(unfolded, example_input=x)
    theirs = timm.utils.reparameterize_model(unfolded, inplace=True)  # calls RepBlock.reparameterize in the tree
    assert all(b.deploy for _, b in repan_zoo.rep_blocks(theirs))
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for key in ours_sd:
        assert relative_error(ours_sd[key], theirs_sd[key]) <= 1e-6, key
    with torch.no_grad():
        assert rel_err(y_unfolded, ours(x)) <= 1e-5
        assert rel_err(ours(x), theirs(x)) <= 1e-6
    del unfolded, ours, theirs, ours_sd, theirs_sd

    path = save_checkpoint(deploy, tmp_path / f"{name}.safetensors")
    state, meta = read_checkpoint(path)
    assert meta["form"] == "deploy" and meta["architecture"] == name
    fresh = timm.create_model(name, deploy=True).eval()
    load_into(fresh, state, meta)
    with torch.no_grad():
        assert torch.equal(fresh(x), y_deploy)


@pytest.mark.parametrize("name", ["repan_repvgg_a0_w025", "repan_mobileone_s0", "repan_resnet18_dbb_w025"])
def test_checkpoints_cross_forms(name):
    """A train-form state dict loads into a deploy model (fused on load) and a deploy state dict
    into a train-form model (unfolded on load), through load_into and through checkpoint_filter."""
    train = _random_model(name, seed=1)
    x = _input(train)
    with torch.no_grad():
        y = train(x)
    deploy = timm.create_model(name, deploy=True).eval()
    load_into(deploy, train.state_dict(), {"form": "train"})
    with torch.no_grad():
        assert rel_err(y, deploy(x)) <= 1e-5
    fresh_train = timm.create_model(name).eval()
    load_into(fresh_train, deploy.state_dict())
    assert all(not b.deploy for _, b in repan_zoo.rep_blocks(fresh_train))
    with torch.no_grad():
        assert rel_err(y, fresh_train(x)) <= 1e-5
    via_filter = timm.create_model(name).eval()
    via_filter.load_state_dict(checkpoint_filter(deploy.state_dict(), via_filter))
    with torch.no_grad():
        assert rel_err(y, via_filter(x)) <= 1e-5


def test_wrong_architecture_state_dict_lists_mismatches():
    a0 = timm.create_model("repan_repvgg_a0", deploy=True)
    a1 = timm.create_model("repan_repvgg_a1", deploy=True)
    with pytest.raises(CheckpointError) as info:
        load_into(a0, a1.state_dict())
    message = str(info.value)
    assert "shape mismatch" in message and "stem.conv.reparam_conv.weight" in message and "(64, 3, 3, 3)" in message
    r18 = timm.create_model("repan_resnet18_w025", deploy=True)
    with pytest.raises(CheckpointError, match=r"missing key.*unexpected key"):
        load_into(r18, a0.state_dict())
    with pytest.raises(CheckpointError, match="stem.conv"):
        checkpoint_filter(timm.create_model("repvgg_a1").state_dict(), timm.create_model("repan_repvgg_a0"))


@pytest.mark.parametrize("name", ["repan_repvgg_a1_w025", "repan_resnet50", "repan_mobilenet", "repan_mobileone_s4"])
def test_features_only_matches_feature_info(name):
    model = _random_model(name)
    x = _input(model, batch=1)
    info = model.feature_info
    features = timm.create_model(name, features_only=True).eval()
    assert features.feature_info.channels() == [f["num_chs"] for f in info]
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    assert [m.shape[-1] for m in maps] == [math.ceil(x.shape[-1] / r) for r in features.feature_info.reduction()]
    # the taps of feature_info are the maps of forward_intermediates (same modules, same weights)
    wrapped = FeatureListNet(model, out_indices=tuple(range(len(info))), flatten_sequential=True)
    with torch.no_grad():
        listed = wrapped(x)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    assert len(listed) == len(inter) == len(info)
    for a, b in zip(listed, inter):
        assert torch.equal(a, b)
    picked = timm.create_model(name, features_only=True, out_indices=(1, -1))
    assert picked.feature_info.reduction() == [info[1]["reduction"], info[-1]["reduction"]]


@pytest.mark.parametrize("name", ["repan_repvgg_a0_w025", "repan_resnet18_acb_w025", "repan_mobileone_s0"])
def test_head_and_input_kwargs(name):
    model = timm.create_model(name, num_classes=0).eval()
    x = _input(model)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
    one = timm.create_model(name, in_chans=1, num_classes=7).eval()
    assert one.stem.conv.trunk.conv.in_channels == 1
    with torch.no_grad():
        assert one(_input(one)[:, :1]).shape == (2, 7)
    one.reset_classifier(5)
    assert one.get_classifier().out_features == 5 and one.num_classes == 5
    with torch.no_grad():
        assert one(_input(one)[:, :1]).shape == (2, 5)
    one.reset_classifier(0, "")
    with torch.no_grad():
        assert one(_input(one)[:, :1]).dim() == 4


def test_narrow_models_follow_the_paper_and_findings():
    """repan_repvgg_a1_w025 is the network of findings-cpu-scale.md: widths 16,16,32,64,320,
    depths 1,2,4,14,1, maps 28→14→14→7→4→2; it equals repvgg_a1 at width_mult=0.25, small_input."""
    model = timm.create_model("repan_repvgg_a1_w025").eval()
    assert model.pretrained_cfg["input_size"] == (1, 28, 28) and model.num_classes == 10
    assert model.stem.conv.out_channels == 16
    assert [len(s) for s in model.stages] == [2, 4, 14, 1]
    assert [s[-1].conv.out_channels for s in model.stages] == [16, 32, 64, 320]
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.shape[-1])) for m in [model.stem, *model.stages]]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert sizes == [14, 14, 7, 4, 2]
    same = timm.create_model("repan_repvgg_a1", width_mult=0.25, small_input=True, in_chans=1, num_classes=10)
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    blocks = [b for _, b in repan_zoo.rep_blocks(model)]
    assert blocks[0].arch_branches == ("conv_1x1",)  # stem: 1→16, stride 2: no identity
    assert blocks[2].arch_branches == ("conv_1x1", "identity")
    r18 = timm.create_model("repan_resnet18_dbb_w025")
    assert r18.stem.conv.spec.kernel_size == 3 and r18.stem.conv.spec.stride == 1 and isinstance(r18.stem_pool, nn.Identity)
    assert r18.stages[0][0].conv1.arch_branches == ("1x1_kxk", "avg", "conv_1x1")
    assert r18.stages[1][0].conv1.arch_branches == ("1x1_kxk", "conv_1x1")  # avg needs in == out
    assert r18.stages[1][0].downsample.arch_branches == ()
    acb = timm.create_model("repan_resnet18_acb_w025")
    assert acb.stages[0][0].conv2.arch_branches == ("conv_kx1", "conv_1xk")


def test_branch_override_and_widths():
    model = timm.create_model("repan_resnet18_w025", branches=("conv_1x1",))
    assert model.stages[0][0].conv1.arch_branches == ("conv_1x1",)
    assert model.stages[0][0].downsample is None and model.stages[1][0].downsample.arch_branches == ()
    wide = timm.create_model("repan_mobilenet", width_mult=0.5)
    assert wide.num_features == 512 and wide.stem.conv.out_channels == 16
    s0 = timm.create_model("repan_mobileone_s0")
    dw, pw = s0.stages[1][2], s0.stages[1][3]
    assert dw.conv.arch_branches == ("conv_kxk",) * 3 + ("conv_1x1", "identity")
    assert pw.conv.arch_branches == ("conv_kxk",) * 3 + ("identity",)
    s4 = timm.create_model("repan_mobileone_s4")
    se = [n for n, m in s4.named_modules() if type(m).__name__ == "SEModule"]
    assert len(se) == 2 * (5 + 1) and all(n.startswith(("stages.2.1", "stages.3.")) for n in se)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(deploy=True, branches=("conv_1x1",)), ModelConfigError, "deploy=True"),
        (dict(width_mult=0), ModelConfigError, "width_mult"),
        (dict(width_mult=-0.5), ModelConfigError, "width_mult"),
        (dict(width_mult=float("nan")), ModelConfigError, "width_mult"),
        (dict(widht_mult=0.5), UnknownModelArgError, "widht_mult"),
        (dict(drop_path_rate=0.1), ModelConfigError, "drop_path_rate"),
        (dict(output_stride=12), ModelConfigError, "output_stride"),
        (dict(branches=("conv_9x9",)), Exception, "unknown branch kind"),
        # numbers outside what the layers can be built with (was: a net no input fits, or a failure at the
        # first forward: 'bernoulli_ expects p to be in [0, 1]')
        (dict(in_chans=0), ModelConfigError, r"in_chans=0: must be ≥ 1"),
        (dict(in_chans="3"), ModelConfigError, r"in_chans='3': expected an integer"),
        (dict(num_classes=-1), ModelConfigError, r"num_classes=-1"),
        (dict(drop_rate=1.0), ModelConfigError, r"drop_rate=1.0: must be ≥ 0 and < 1"),
    ],
)
def test_conflicting_kwargs_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model("repan_repvgg_a0_w025", **kwargs)


def test_numpy_numbers_are_taken_as_timm_takes_them(tmp_path):
    """timm's own models take numpy scalars for in_chans / num_classes / drop rates (e.g. a class
    count from ``labels.max() + 1``); they are stored as Python numbers, so the saved metadata stays JSON."""
    import json

    import numpy as np

    from helpers import same_state
    from repan_zoo.checkpoint import save_checkpoint

    model = timm.create_model("repan_repvgg_a0_w025", in_chans=np.int64(1), num_classes=np.int32(5),
                              drop_rate=np.float32(0.25))
    assert model.num_classes == 5 and type(model.num_classes) is int
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    json.dumps(model.pretrained_cfg)
    path = save_checkpoint(model, tmp_path / "m.safetensors", architecture="repan_repvgg_a0_w025")
    again = timm.create_model("repan_repvgg_a0_w025", in_chans=1, num_classes=5, checkpoint_path=str(path))
    assert same_state(model.state_dict(), again.state_dict())
    with pytest.raises(ModelConfigError, match=r"in_chans=\S*0\)?: must be ≥ 1"):  # numpy ≥ 2 shows np.int64(0)
        timm.create_model("repan_repvgg_a0_w025", in_chans=np.int64(0))
    with pytest.raises(ModelConfigError, match="expected an integer"):
        timm.create_model("repan_repvgg_a0_w025", num_classes=np.float64(5.0))


def test_fixed_variants_refuse_other_widths_and_layouts():
    with pytest.raises(ModelConfigError, match="width_mult=0.25"):
        timm.create_model("repan_repvgg_a1_w025", width_mult=0.5)
    with pytest.raises(ModelConfigError, match="small-input"):
        timm.create_model("repan_resnet18_dbb_w025", small_input=False)
    with pytest.raises(TypeError, match="width_mult"):  # unknown kwargs are also TypeErrors, listing the known ones
        timm.create_model("repan_mobilenet", widthmult=0.5)
    assert timm.create_model("repan_resnet18_w025", drop_path_rate=0.1).stages[1][1].drop_path.drop_prob > 0
    with pytest.raises(ModelConfigError, match=r"drop_path_rate=1.5: must be ≥ 0 and < 1"):
        timm.create_model("repan_resnet18_w025", drop_path_rate=1.5)


def test_unknown_model_name_is_named():
    with pytest.raises(RuntimeError, match="repan_repvgg_a9"):
        timm.create_model("repan_repvgg_a9")


def test_pretrained_loads_full_model_before_features_wrap(monkeypatch):
    """pretrained=True: the hub's load_pretrained gets the full classifier with architecture/tag in its
    pretrained_cfg (and kwargs such as num_classes applied); features_only wraps afterwards."""
    calls = []

    def fake_load(model, features_only=False):
        calls.append((type(model), dict(model.pretrained_cfg), model.num_classes, hasattr(model, "head"), features_only))
        with torch.no_grad():
            model.stem.conv.trunk.conv.weight.fill_(0.5)

    monkeypatch.setitem(sys.modules, "repan_zoo.hub", types.SimpleNamespace(load_pretrained=fake_load))
    model = timm.create_model("repan_repvgg_a0_w025", pretrained=True, num_classes=4)
    (cls, cfg, num_classes, has_head, features_only), = calls
    assert cls is RepNet and has_head and num_classes == 4 and not features_only
    assert cfg["architecture"] == "repan_repvgg_a0_w025" and "tag" in cfg
    assert torch.all(model.stem.conv.trunk.conv.weight == 0.5)
    features = timm.create_model("repan_repvgg_a0_w025", pretrained=True, features_only=True)
    assert len(calls) == 2 and calls[1][0] is RepNet and isinstance(features, FeatureListNet)
    assert calls[1][4]  # told: a features model loads no classifier (timm's rule)
    assert torch.all(features.stem.conv.trunk.conv.weight == 0.5)
    assert features.pretrained_cfg["architecture"] == "repan_repvgg_a0_w025"


def test_pretrained_without_published_weights_is_a_clear_error(monkeypatch, tmp_path):
    """With the real repan_zoo.hub: no manifest entry → a typed error naming the model and the fix."""
    from repan_zoo.errors import WeightsNotFoundError

    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(tmp_path))  # an empty manifest
    with pytest.raises(WeightsNotFoundError, match="repan_repvgg_a0_w025.*pretrained=False"):
        timm.create_model("repan_repvgg_a0_w025", pretrained=True)

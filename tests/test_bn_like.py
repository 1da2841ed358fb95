"""Every BN-like layer inside a Rep block fuses exactly or is refused by name (issue 15.3):
torchvision's and timm's FrozenBatchNorm2d, SyncBatchNorm, timm's BatchNormAct2d / FrozenBatchNormAct2d."""
from __future__ import annotations

from typing import Callable

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, freeze_batch_norm_2d

import repan_zoo as rz
from helpers import FAMILY_IDS, FAMILY_MODELS, randomize, rel_err
from repan_zoo.errors import RepanError, UnfusableBranchError


@torch.no_grad()
def _replace_bns(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> nn.Module:
    """Swap every BatchNorm2d for ``make(bn)`` holding the same parameters and statistics."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = make(child)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(child, key))
            new.eps = child.eps
            new.train(child.training)
            setattr(module, name, new)
        else:
            _replace_bns(child, make)
    return module


REPLACEMENTS = {
    "torchvision_frozen": lambda bn: torchvision.ops.misc.FrozenBatchNorm2d(bn.num_features),
    "sync_bn": lambda bn: nn.SyncBatchNorm(bn.num_features),
    "timm_bn_act_without_act": lambda bn: BatchNormAct2d(bn.num_features, apply_act=False),
    "timm_frozen_act_without_act": lambda bn: FrozenBatchNormAct2d(bn.num_features, apply_act=False),
}


def _model(name, kwargs):
    return randomize(timm.create_model(name, num_classes=5, **kwargs), seed=4)


def _x(model):
    return torch.randn(2, model.in_chans, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layer", sorted(REPLACEMENTS))
@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS, ids=FAMILY_IDS)
def test_bn_like_layers_fuse_exactly(name, kwargs, layer):
    model = _model(name, kwargs)
    x = _x(model)
    with torch.no_grad():
        ref = model(x)
    _replace_bns(model, REPLACEMENTS[layer])
    with torch.no_grad():
        assert rel_err(ref, model(x)) <= 1e-5  # same function (frozen BNs round differently)
    fused = rz.reparameterize(model, example_input=x)
    with torch.no_grad():
        assert rel_err(ref, fused(x)) <= 1e-5


def test_timm_freeze_batch_norm_2d_model_fuses_exactly():
    model = _model("repan_resnet18_dbb_w025", {})
    x = _x(model)
    with torch.no_grad():
        ref = model(x)
    frozen = freeze_batch_norm_2d(model)
    assert not any(type(m) is nn.BatchNorm2d for m in frozen.modules())
    with torch.no_grad():
        assert rel_err(ref, rz.reparameterize(frozen, example_input=x)(x)) <= 1e-5


@pytest.mark.parametrize(
    "make",
    [lambda bn: BatchNormAct2d(bn.num_features), lambda bn: FrozenBatchNormAct2d(bn.num_features)],
    ids=["BatchNormAct2d", "FrozenBatchNormAct2d"],
)
def test_bn_with_activation_is_refused_by_name(make):
    model = _replace_bns(_model("repan_repvgg_a0_w025", {}), make)
    cls = type(make(nn.BatchNorm2d(4))).__name__
    with pytest.raises(UnfusableBranchError, match=f"{cls} applies ReLU") as info:
        rz.reparameterize(model)
    assert isinstance(info.value, RepanError) and "apply_act=False" in str(info.value)


def test_non_bn_norm_is_refused_by_name():
    block = rz.RepBlock(8, 8, branches=("conv_1x1",))
    block.extras[0].bn = nn.GroupNorm(2, 8)
    with pytest.raises(UnfusableBranchError, match="GroupNorm"):
        block.reparameterize()


def test_frozen_bns_are_calibrated_and_unfolded():
    model = _replace_bns(_model("repan_repvgg_a0_w025", {}), REPLACEMENTS["torchvision_frozen"])
    x = _x(model)
    with torch.no_grad():
        ref = model(x)
    rz.calibrate_bn(model, [x])  # keeps the eval function, frozen BNs included
    with torch.no_grad():
        assert rel_err(ref, model(x)) <= 1e-5
    trunk = model.stem.conv.trunk.bn
    assert isinstance(trunk, torchvision.ops.misc.FrozenBatchNorm2d)
    assert torch.allclose(trunk.running_mean.double(), model.stem.conv.trunk.conv(x).double().mean((0, 2, 3)), atol=1e-5)

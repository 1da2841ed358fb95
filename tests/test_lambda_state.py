"""λ travels with the state dict (issue 15.2): EMA copies, weight averaging, load_state_dict into a
copy and checkpoints compute the model's function; state dicts written before λ was saved still
load strictly and correctly."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.utils import ModelEmaV3

import repan_zoo as rz
from helpers import FAMILY_IDS, FAMILY_MODELS, randomize, rel_err
from repan_zoo.checkpoint import load_into, read_checkpoint, save_checkpoint


def _model(name, kwargs, seed=0):
    return randomize(timm.create_model(name, num_classes=5, **kwargs), seed=seed)


def _x(model):
    return torch.randn(2, model.in_chans, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS, ids=FAMILY_IDS)
def test_ema_copy_carries_lambda_and_deploys_it(name, kwargs):
    model = _model(name, kwargs)
    ema = ModelEmaV3(model, decay=0.0)
    rz.set_lambda(model, 0.7)
    ema.update(model)
    x = _x(model)
    assert all(float(b.lam) == pytest.approx(0.7) for _, b in rz.rep_blocks(ema.module))
    with torch.no_grad():
        assert rel_err(model(x), ema.module(x)) <= 1e-6
        assert rel_err(rz.reparameterize(model)(x), rz.reparameterize(ema.module)(x)) <= 1e-6


@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS[:2], ids=FAMILY_IDS[:2])
def test_load_state_dict_into_a_fresh_model_carries_lambda(name, kwargs):
    model = _model(name, kwargs)
    rz.set_lambda(model, 0.3)
    other = timm.create_model(name, num_classes=5, **kwargs).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    x = _x(model)
    with torch.no_grad():
        assert rel_err(model(x), other(x)) <= 1e-6


@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS[:2], ids=FAMILY_IDS[:2])
def test_state_dict_from_before_lambda_was_saved_loads_strictly(name, kwargs, tmp_path):
    model = _model(name, kwargs)
    rz.set_lambda(model, 0.45)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(".lam")}  # as written before
    assert len(old) < len(model.state_dict())
    x = _x(model)
    # plain strict load: the model keeps its own λ (the old file did not hold it)
    other = timm.create_model(name, num_classes=5, **kwargs).eval()
    rz.set_lambda(other, 0.45)
    other.load_state_dict(old, strict=True)
    # a checkpoint of that time: λ from its metadata
    path = tmp_path / "old.safetensors"
    save_checkpoint(model, path)
    tensors, meta = read_checkpoint(path)
    fresh = timm.create_model(name, num_classes=5, **kwargs).eval()
    load_into(fresh, {k: v for k, v in tensors.items() if not k.endswith(".lam")}, meta)
    with torch.no_grad():
        assert rel_err(model(x), other(x)) <= 1e-6
        assert rel_err(model(x), fresh(x)) <= 1e-6


def test_deploy_state_dict_is_unchanged_and_filter_keeps_lambda():
    model = _model("repan_repvgg_a0_w025", {})
    rz.set_lambda(model, 0.2)
    deploy = rz.reparameterize(model)
    assert not any(k.endswith(".lam") for k in deploy.state_dict())
    # a train-form state dict with λ converted by the checkpoint filter into a deploy model keeps λ
    target = timm.create_model("repan_repvgg_a0_w025", num_classes=5, deploy=True).eval()
    target.load_state_dict(rz.models.checkpoint_filter(model.state_dict(), target))
    x = _x(model)
    with torch.no_grad():
        assert rel_err(model(x), target(x)) <= 1e-5


def test_filter_renames_an_old_train_form_state_dict_without_converting_it():
    """A same-structure train-form state dict from before λ was saved passes the checkpoint filter
    renamed only (its trained branches are kept, not folded into the trunk)."""
    model = _model("repan_resnet18_acb_w025", {})
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(".lam")}
    target = timm.create_model("repan_resnet18_acb_w025", num_classes=5)
    filtered = rz.models.checkpoint_filter(old, target)
    assert all(torch.equal(filtered[k], v) for k, v in old.items())
    target.load_state_dict(filtered)

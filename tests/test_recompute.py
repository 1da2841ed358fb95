"""Gradient checkpointing recomputes activations but must not update BN statistics twice (issue 15.1):
a checkpointed training step leaves the same running statistics, gradients and deploy model as
the same step without checkpointing, on every family and on every recomputation path."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import repan_zoo as rz
from helpers import FAMILY_IDS, FAMILY_MODELS, randomize, rel_err
from repan_zoo.recompute import checkpoint


def _step(model, x, use_intermediates=False):
    model.train()
    out = model.forward_intermediates(x)[0] if use_intermediates else model(x)
    out.square().mean().backward()
    return model


def _pair(name, kwargs):
    torch.manual_seed(0)
    model = randomize(timm.create_model(name, num_classes=5, **kwargs), seed=2)
    return model, copy.deepcopy(model)


def _bn_state(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("use_intermediates", [False, True], ids=["forward", "forward_intermediates"])
@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS, ids=FAMILY_IDS)
def test_checkpointed_step_updates_bn_statistics_once(name, kwargs, use_intermediates):
    plain, ckpt = _pair(name, kwargs)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(4, plain.in_chans, 28, 28, generator=torch.Generator().manual_seed(1))
    _step(plain, x, use_intermediates)
    _step(ckpt, x, use_intermediates)
    ref, new = _bn_state(plain), _bn_state(ckpt)
    assert ref.keys() == new.keys() and ref
    for k in ref:
        assert torch.allclose(ref[k].double(), new[k].double(), rtol=1e-5, atol=1e-6), k
    assert all(int(v) == 1 for k, v in new.items() if k.endswith("num_batches_tracked"))
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        if p.grad is not None:
            assert rel_err(p.grad, q.grad) <= 1e-4, n
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert rel_err(rz.reparameterize(plain)(x), rz.reparameterize(ckpt)(x)) <= 1e-5


@pytest.mark.parametrize("kinds", [("conv_1x1", "identity"), ("1x1_kxk", "avg")], ids=["repvgg", "dbb"])
def test_checkpoint_helper_matches_a_plain_step(kinds):
    block = randomize(rz.RepBlock(4, 4, branches=kinds), seed=0).train()
    twin = copy.deepcopy(block)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    checkpoint(block, x).square().sum().backward()
    twin(x).square().sum().backward()
    for (k, a), (_, b) in zip(block.state_dict().items(), twin.state_dict().items()):
        assert torch.allclose(a.double(), b.double(), atol=1e-6), k
    for (k, p), (_, q) in zip(block.named_parameters(), twin.named_parameters()):
        assert rel_err(q.grad, p.grad) <= 1e-5, k


@pytest.mark.parametrize("name,kwargs", [FAMILY_MODELS[0], FAMILY_MODELS[5]], ids=[FAMILY_IDS[0], FAMILY_IDS[5]])
def test_features_only_checkpointing_updates_bn_statistics_once(name, kwargs):
    """timm's features_only wrapper recomputes too: the repan_* wrapper keeps the statistics."""
    torch.manual_seed(0)
    plain = randomize(timm.create_model(name, features_only=True, **kwargs), seed=2)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for model in (plain, ckpt):
        model.train()
        sum(f.square().mean() for f in model(x)).backward()
    ref, new = _bn_state(plain), _bn_state(ckpt)
    assert ref.keys() == new.keys() and ref
    for k in ref:
        assert torch.allclose(ref[k].double(), new[k].double(), rtol=1e-5, atol=1e-6), k

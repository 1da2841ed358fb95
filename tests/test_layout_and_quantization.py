"""Small points of issue 15.8: conversions keep a channels_last model channels_last; the error for a
model prepared for quantization says to fuse first."""
from __future__ import annotations

import pytest
import timm
import torch

import repan_zoo as rz
from helpers import FAMILY_IDS, FAMILY_MODELS, randomize, rel_err
from repan_zoo.errors import NoRepBlocksError


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name,kwargs", FAMILY_MODELS, ids=FAMILY_IDS)
def test_conversions_keep_channels_last(name, kwargs):
    model = randomize(timm.create_model(name, **kwargs), seed=0).to(memory_format=torch.channels_last)
    x = torch.randn(2, model.in_chans, 32, 32).to(memory_format=torch.channels_last)
    fused = rz.reparameterize(model, example_input=x)
    convs = [b.reparam_conv.weight for _, b in rz.rep_blocks(fused)]
    assert convs and all(_channels_last(w) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # really channels_last, not a layout-free shape
    unfolded = rz.unfold(fused, branches=("conv_kxk", "conv_1x1"), example_input=x)
    weights = [p for n, p in unfolded.named_parameters() if p.dim() == 4]
    assert all(_channels_last(w) for w in weights)
    with torch.no_grad():
        assert rel_err(model(x), fused(x)) <= 1e-5


def test_quantization_prepared_model_error_says_fuse_first():
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    model = timm.create_model("repan_repvgg_a0_w025").train()
    prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping("fbgemm"), (torch.randn(1, 1, 28, 28),))
    with pytest.raises(NoRepBlocksError, match="prepared for quantization.*Fuse before quantizing"):
        rz.reparameterize(prepared)
    with pytest.raises(NoRepBlocksError, match="holds no RepBlock"):
        rz.reparameterize(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))

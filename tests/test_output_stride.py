"""timm's ``output_stride`` on every family (issue 15.5): the later stages dilate instead of striding,
feature_info reports the actual reductions, and the dilated network fuses exactly."""
from __future__ import annotations

import pytest
import timm
import torch

import repan_zoo
from helpers import FAMILY_IDS, FAMILY_MODELS as FAMILIES, randomize, rel_err
from repan_zoo.errors import ModelConfigError


def test_every_family_is_represented():
    families = {repan_zoo.models.families.MODELS[n].cfg.family for n in timm.list_models("repan_*")}
    assert families == {repan_zoo.models.families.MODELS[n].cfg.family for n, _ in FAMILIES}


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name,kwargs", FAMILIES, ids=FAMILY_IDS)
def test_output_stride_dilates_and_fuses_exactly(name, kwargs, output_stride):
    torch.manual_seed(0)
    model = randomize(timm.create_model(name, output_stride=output_stride, num_classes=7, **kwargs), seed=1)
    size = 64
    x = torch.randn(2, model.in_chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
    reference = timm.create_model(name, num_classes=7, **kwargs).eval()
    nominal = reference.feature_info[-1]["reduction"]
    expected = min(nominal, output_stride)
    assert feats.shape[-1] == -(-size // expected)
    assert [f["reduction"] for f in model.feature_info] == [min(f["reduction"], output_stride) for f in reference.feature_info]
    dilations = {b.spec.dilation for _, b in repan_zoo.verify.rep_blocks(model)}
    geometry = model.cfg.stage_geometry()
    assert all(stride == 1 for stride, _, _ in geometry[len(geometry) - sum(d > 1 for *_, d in geometry):])
    dilated = any(first > 1 or (d > 1 and st.depth > 1) for (_, first, d), st in zip(geometry, model.cfg.stages))
    assert (max(dilations) > 1) == dilated
    assert dilated or nominal // output_stride <= 2  # only a one-block last stage can stay undilated
    # the same weights load into the dilated model (same shapes), and the dilated model fuses exactly
    reference.load_state_dict(model.state_dict())
    fused = repan_zoo.reparameterize(model, example_input=x)
    with torch.no_grad():
        assert rel_err(model(x), fused(x)) <= 1e-5
    assert {b.spec.dilation for _, b in repan_zoo.verify.rep_blocks(fused)} == dilations


def test_output_stride_features_only_reports_reductions():
    model = timm.create_model("repan_resnet18", width_mult=0.25, features_only=True, output_stride=8)
    x = torch.randn(1, 3, 64, 64)
    feats = model(x)
    assert [f.shape[-1] for f in feats] == [64 // r for r in model.feature_info.reduction()]
    assert model.feature_info.reduction()[-1] == 8


@pytest.mark.parametrize("bad", [3, 12, 1, "16", 16.0])
def test_unreachable_output_stride_is_a_typed_error(bad):
    with pytest.raises(ModelConfigError, match="output_stride"):
        timm.create_model("repan_resnet18", output_stride=bad)

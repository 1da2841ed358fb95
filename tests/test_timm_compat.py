"""timm's own ``repvgg_*`` / ``mobileone_*`` / ``resnet*`` state dicts load into the ``repan_*`` twins
(through :func:`repan_zoo.models.checkpoint_filter`) with outputs equal to timm's ≤1e-5.

The timm models get random BN statistics and random BN affine parameters; both timm's train
form and the form ``timm.utils.reparameterize_model`` leaves are loaded, into our train and
our deploy forms. 64×64 inputs keep the ImageNet models fast.
"""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import randomize_bn, rel_err
from repan_zoo.convert import uncalibrated_blocks
from timm.models import load_checkpoint

from repan_zoo.checkpoint import model_form
from repan_zoo.errors import CheckpointError
from repan_zoo.models import checkpoint_filter
from repan_zoo.models.timm_compat import detect_source

PAIRS = [
    ("repvgg_a0", "repan_repvgg_a0"),
    ("repvgg_a1", "repan_repvgg_a1"),
    ("mobileone_s0", "repan_mobileone_s0"),
    ("resnet18", "repan_resnet18"),
    ("resnet50", "repan_resnet50"),
]


def _timm_model(name: str, seed: int) -> torch.nn.Module:
    """timm's ``name`` with random BN statistics, its weights drawn from ``seed`` (not from whatever
    the tests before left in the global generator: a random network's own fp32 rounding varies with
    the draw, and an unlucky one exceeded the 1e-5 the tests hold the conversion to)."""
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(name), torch.Generator().manual_seed(seed)).eval()


@pytest.mark.parametrize("timm_name, ours_name", PAIRS)
def test_timm_weights_load_with_identical_outputs(timm_name, ours_name):
    theirs = _timm_model(timm_name, seed=2)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = theirs(x)
    sources = {"train": theirs.state_dict()}
    if not timm_name.startswith("resnet"):  # timm's reparameterize_model leaves resnets as they are
        sources["timm-reparameterized"] = timm.utils.reparameterize_model(theirs).state_dict()
    assert detect_source(sources["train"]) == ("timm_resnet" if timm_name.startswith("resnet") else "timm_byobnet")
    ours_train = timm.create_model(ours_name).eval()
    ours_deploy = timm.create_model(ours_name, deploy=True).eval()
    assert sum(p.numel() for p in ours_train.parameters()) == sum(p.numel() for p in theirs.parameters())
    for form, state in sources.items():
        for ours in (ours_train, ours_deploy):
            ours.load_state_dict(checkpoint_filter(state, ours))  # strict: our keys, blocks converted on load
            with torch.no_grad():
                err = rel_err(y, ours(x))
            assert err <= 1e-5, f"{timm_name} {form} → {ours_name} form={model_form(ours)}: {err:.2e}"
            # statistics come along from timm's train form; from its fused form they are invented
            invented = form == "timm-reparameterized" and model_form(ours) == "train"
            assert bool(uncalibrated_blocks(ours)) == invented, (form, model_form(ours))


def test_timm_resnet_weights_start_a_dbb_model(tmp_path):
    """A trunk-only source into a multi-branch target: the trunk is restored exactly (inherit) and the
    DBB branches start as exact no-ops (BN γ = 0); timm's load_checkpoint takes the filter."""
    theirs = _timm_model("resnet18", seed=3)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = theirs(x)
    path = tmp_path / "resnet18.pth"
    torch.save(theirs.state_dict(), path)
    ours = timm.create_model("repan_resnet18_dbb").eval()
    load_checkpoint(ours, str(path), filter_fn=checkpoint_filter)
    with torch.no_grad():
        assert rel_err(y, ours(x)) <= 1e-5
    block = ours.stages[0][0].conv1
    assert torch.allclose(block.trunk.conv.weight, theirs.layer1[0].conv1.weight, rtol=1e-5, atol=1e-6)
    assert all(float(b.bns()[-1].weight.abs().max()) == 0.0 for b in block.extras)


def test_mobileone_s4_se_and_wrong_pairs():
    theirs = _timm_model("mobileone_s4", seed=1)
    ours = timm.create_model("repan_mobileone_s4").eval()
    state = theirs.state_dict()
    ours.load_state_dict(checkpoint_filter(state, ours))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(theirs(x), ours(x)) <= 1e-5
    with pytest.raises(CheckpointError, match="shape mismatch"):
        checkpoint_filter(state, timm.create_model("repan_mobileone_s3"))
    with torch.no_grad():  # the conversion itself is exact: float64 leaves only float64 rounding
        assert rel_err(theirs.double()(x.double()), ours.double()(x.double())) <= 1e-12
    with pytest.raises(CheckpointError, match="no place for"):
        checkpoint_filter(timm.create_model("resnet18d").state_dict(), timm.create_model("repan_resnet18"))

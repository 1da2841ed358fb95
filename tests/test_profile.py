"""repan_zoo.profile: parameters, FLOPs and CPU latency of both forms, measured (issue 10, point 6)."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn as nn

import repan_zoo
import repan_zoo.models  # noqa: F401  (registers the repan_* models with timm)
from repan_zoo.blocks import RepBlock
from repan_zoo.checkpoint import model_form
from repan_zoo.profile import (
    count_flops, count_params, cpu_latency, forms_markdown, profile_forms, train_form, train_step_time,
)

from helpers import randomize, same_state, single_thread, snapshot, TinyNet, training_flags  # noqa: F401 (single_thread: fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = dict(repeats=2, warmup=1)


def test_tinynet_forms_are_sane_and_caller_untouched():
    net = randomize(TinyNet(), seed=2)
    net.body.train()  # mixed flags: measured in eval mode, flags given back
    before, flags = snapshot(net), training_flags(net)
    r = profile_forms(net, (3, 9, 9), **FAST)
    assert same_state(before, snapshot(net)) and model_form(net) == "train" and training_flags(net) == flags
    t, d = r["train"], r["deploy"]
    assert d["params"] < t["params"]
    assert 0 < d["flops"] < t["flops"]
    assert t["latency"]["median_ms"] > 0 and d["latency"]["median_ms"] > 0
    assert t["latency"]["p25_ms"] <= t["latency"]["median_ms"] <= t["latency"]["p75_ms"]
    assert d["rep_branches"] == 4 and t["rep_branches"] == 3 + 5 + 4 + 2
    assert r["exactness"]["model_rel_error"] <= 1e-5
    assert r["ratios"]["params"] == pytest.approx(d["params"] / t["params"])
    json.dumps(r)  # JSON-ready for model cards / benchmarks


def test_flops_and_params_match_hand_counts():
    """One RepBlock 4→6, 3×3, stride 2, on 1×4×10×10 → 5×5 output. FlopCounter: multiply-add = 2."""
    block = RepBlock(4, 6, 3, 2, branches=("conv_1x1",))
    r = profile_forms(nn.Sequential(block), (4, 10, 10), batch_size=3, **FAST)
    out_px = 3 * 6 * 5 * 5
    assert r["deploy"]["flops"] == 2 * out_px * 4 * 9
    assert r["train"]["flops"] == 2 * out_px * 4 * 9 + 2 * out_px * 4 * 1
    assert r["deploy"]["params"] == 6 * 4 * 9 + 6
    assert r["train"]["params"] == 6 * 4 * 9 + 2 * 6 + 6 * 4 + 2 * 6  # convs (no bias) + BN γ, β
    assert r["input_size"] == [4, 10, 10] and r["batch_size"] == 3


def test_deploy_model_is_profiled_in_its_architecture_train_form():
    net = randomize(TinyNet(), seed=4)
    deployed = repan_zoo.reparameterize(net)
    from_train, from_deploy = profile_forms(net, (3, 9, 9), **FAST), profile_forms(deployed, (3, 9, 9), **FAST)
    for key in ("params", "flops", "rep_branches"):
        assert from_train["train"][key] == from_deploy["train"][key]
        assert from_train["deploy"][key] == from_deploy["deploy"][key]
    assert model_form(deployed) == "deploy" and model_form(train_form(deployed)) == "train"


@pytest.mark.parametrize("name", ["repan_repvgg_a0_w025", "repan_resnet18_dbb_w025"])
def test_registered_multibranch_models(name):
    if name not in timm.list_models("repan_*"):
        pytest.skip(f"{name} is not registered yet")
    model = timm.create_model(name)  # Fashion-MNIST variants: input size from pretrained_cfg (1×28×28)
    r = profile_forms(model, **FAST)
    assert r["input_size"] == list(model.pretrained_cfg["input_size"])
    assert r["deploy"]["params"] < r["train"]["params"]
    assert 0 < r["deploy"]["flops"] <= r["train"]["flops"]


def test_helpers_and_errors():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 4, 4)
    assert count_params(conv) == 3 * 2 * 9 + 3
    assert count_flops(conv, x) == 2 * 3 * 16 * 2 * 9
    threads = torch.get_num_threads()
    assert cpu_latency(conv, x, repeats=1, warmup=0, threads=1)["median_ms"] > 0
    assert torch.get_num_threads() == threads  # restored
    with pytest.raises(ValueError, match="repeats"):
        cpu_latency(conv, x, repeats=0)
    with pytest.raises(repan_zoo.NoRepBlocksError, match="no RepBlock"):
        profile_forms(nn.Sequential(conv), (2, 4, 4), **FAST)
    with pytest.raises(ValueError, match="input_size"):
        profile_forms(nn.Sequential(RepBlock(2, 2)), **FAST)  # no pretrained_cfg, no size


def test_train_step_time_trains_a_copy():
    net = randomize(TinyNet(), seed=3)
    net.eval()
    before, flags = snapshot(net), training_flags(net)
    x = torch.randn(4, 3, 9, 9)
    t = train_step_time(net, x, repeats=2, warmup=1, memory_format=torch.channels_last)
    assert 0 < t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    assert same_state(before, snapshot(net)) and training_flags(net) == flags  # the steps ran on a copy
    with pytest.raises(ValueError, match="repeats"):
        train_step_time(net, x, repeats=0)


def test_markdown_table():
    r = profile_forms(nn.Sequential(RepBlock(3, 8, 3, branches=("conv_1x1",))), (3, 8, 8), **FAST)
    r["model"] = "toy"
    table = forms_markdown([r, r]).splitlines()
    assert len(table) == 4 and table[2].startswith("| toy | 3×8×8 | 1 |")

"""Typed safetensors checkpoints (repan_zoo.checkpoint): metadata, form conversion, strictness,
truncation and atomic writes."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

from helpers import TinyNet, make_input, randomize, rel_err, same_state, snapshot
import repan_zoo as rz
from repan_zoo.blocks import RepBlock
from repan_zoo.checkpoint import (
    atomic_write, load_into, model_form, read_checkpoint, read_metadata, rewrite_metadata, save_checkpoint,
    state_dict_form,
)
from repan_zoo.convert import uncalibrated_blocks
from repan_zoo.errors import CheckpointError, UncalibratedBNWarning

TOL = 1e-6


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _deploy_tiny():
    model = TinyNet()
    for _, b in rz.rep_blocks(model):
        b.reparameterize()
    return model


def test_round_trip_with_metadata(tiny_net, tmp_path):
    rz.set_lambda(tiny_net, 0.25)
    path = save_checkpoint(tiny_net, tmp_path / "sub" / "m.safetensors", architecture="tiny_net",
                           metadata={"epochs": 3, "note": "hello"})
    assert path.is_file()
    state, meta = read_checkpoint(path)
    assert same_state(snapshot(tiny_net), state)
    assert meta["form"] == "train" and meta["architecture"] == "tiny_net" and meta["format"] == "pt"
    assert meta["repan_zoo"] == rz.__version__
    assert meta["note"] == "hello" and json.loads(meta["epochs"]) == 3
    assert json.loads(meta["branches"])["body.2"] == ["conv_1x1", "1x1_kxk", "conv_kx1", "conv_1xk"]
    assert json.loads(meta["lambdas"]) == {"body.0": 0.25, "body.2": 0.25, "body.4": 0.25, "extra.rep": 0.25}
    assert state_dict_form(state) == "train" and model_form(tiny_net) == "train"
    fused = rz.reparameterize(tiny_net)
    state, meta = read_checkpoint(save_checkpoint(fused, tmp_path / "d.safetensors"))
    assert meta["form"] == "deploy" and meta["architecture"] == "TinyNet"
    assert json.loads(meta["exactness"]) == fused.repan_exactness
    assert "branches" not in meta and "lambdas" not in meta
    assert state_dict_form(state) == "deploy"


def test_deploy_checkpoint_into_train_model(tiny_net, tiny_input, tmp_path):
    fused = rz.reparameterize(tiny_net)
    state, meta = read_checkpoint(save_checkpoint(fused, tmp_path / "d.safetensors"))
    fresh = randomize(TinyNet(lam=0.6), seed=99)  # other weights, train form
    load_into(fresh, state, meta)
    assert model_form(fresh) == "train"
    assert all(float(b.lam) == pytest.approx(0.6) for _, b in rz.rep_blocks(fresh))
    assert {n: b.branch_kinds for n, b in rz.rep_blocks(fresh)} == {
        n: list(b.arch_branches) for n, b in rz.rep_blocks(fresh)
    }
    assert rel_err(_out(fused, tiny_input), _out(fresh, tiny_input)) <= TOL
    # and it trains: the zero-γ branches get gradients through their BN γ (uncalibrated: it says so)
    fresh.train()
    with pytest.warns(UncalibratedBNWarning, match="calibrate_bn"):
        fresh(tiny_input).sum().backward()
    assert fresh.body[0].extras[0].bn.weight.grad.abs().max() > 0


# -- plain load_state_dict (timm's checkpoint_path=, torch users) across forms ---------------------------
def test_plain_load_state_dict_takes_deploy_weights_into_the_train_form(tiny_net, tiny_input):
    """``model.load_state_dict`` is what timm's ``create_model(checkpoint_path=...)``, its train /
    validate scripts and torch users call: a train-form Rep block given deploy-form keys converts
    them exactly (its own branches at γ = 0, λ kept, trunk statistics flagged as invented), in any
    container; same-form loads are untouched."""
    rz.set_lambda(tiny_net, 0.6)
    fused = rz.reparameterize(tiny_net)
    into_train = randomize(TinyNet(lam=0.3), seed=5)
    assert into_train.load_state_dict(fused.state_dict()) is not None
    assert model_form(into_train) == "train"
    assert rel_err(_out(fused, tiny_input), _out(into_train, tiny_input)) <= 1e-5
    assert all(float(b.lam) == pytest.approx(0.3) for _, b in rz.rep_blocks(into_train))
    assert rz.convert.uncalibrated_blocks(into_train) == [n for n, _ in rz.rep_blocks(into_train)]
    nested = nn.Sequential(nn.Identity(), TinyNet())  # any container of blocks
    nested.load_state_dict({f"1.{k}": v for k, v in fused.state_dict().items()})
    assert rel_err(_out(fused, tiny_input), _out(nested[1], tiny_input)) <= 1e-5
    same = TinyNet()
    same.load_state_dict(tiny_net.state_dict())  # same form: a plain strict load, statistics included
    assert same_state(snapshot(same), snapshot(tiny_net)) and rz.convert.uncalibrated_blocks(same) == []


def test_every_load_of_deploy_weights_gives_one_train_form_state(tiny_net, tmp_path):
    """``load_into`` and a plain ``load_state_dict`` convert deploy weights by one function: the same
    train-form state (branches drawn from a fixed seed, λ kept, statistics flagged), whatever the
    global RNG did before, so a file loads into the same model every time."""
    rz.set_lambda(tiny_net, 0.6)
    state, meta = read_checkpoint(save_checkpoint(rz.reparameterize(tiny_net), tmp_path / "d.safetensors"))
    loaded = []
    for seed, how in [(1, "load_into"), (2, "load_into"), (3, "load_state_dict")]:
        model = TinyNet(lam=0.3)
        torch.manual_seed(seed)  # whatever else drew from the global RNG
        load_into(model, state, meta) if how == "load_into" else model.load_state_dict(state)
        assert rz.convert.uncalibrated_blocks(model) == [n for n, _ in rz.rep_blocks(model)]
        assert not any(br.fresh for _, b in rz.rep_blocks(model) for br in b.extras)
        loaded.append(snapshot(model))
    assert same_state(loaded[0], loaded[1]) and same_state(loaded[0], loaded[2])


def test_deploy_weights_load_into_independent_new_branches_per_block(tmp_path):
    """Each block's new branches are drawn from a stream of their own (seeded by the block's name),
    as one generator over the model would draw them: blocks of one shape do not start with the same
    convs (was: every block reseeded 0, so all same-shape blocks held identical new branches), and
    the load stays reproducible (both load paths, any global RNG)."""
    timm = pytest.importorskip("timm")
    deploy = rz.reparameterize(randomize(timm.create_model("repan_repvgg_a0_w025"), seed=4))
    state, meta = read_checkpoint(save_checkpoint(deploy, tmp_path / "d.safetensors"))
    loaded = []
    for seed, how in [(1, "load_into"), (2, "load_state_dict")]:
        model = timm.create_model("repan_repvgg_a0_w025")
        torch.manual_seed(seed)
        load_into(model, state, meta) if how == "load_into" else model.load_state_dict(state)
        loaded.append(model)
    weights = {}  # new-branch conv weights per block, grouped by shape
    for name, block in rz.rep_blocks(loaded[0]):
        for i, branch in enumerate(block.extras):
            for pname, p in branch.named_parameters():
                if p.dim() == 4:
                    weights.setdefault((i, pname, tuple(p.shape)), []).append((name, p.detach().clone()))
    groups = [g for g in weights.values() if len(g) > 1]
    assert groups, "the model has no two blocks of one shape to compare"
    for group in groups:
        (first_name, first), *rest = group
        for name, w in rest:
            assert not torch.equal(first, w), f"{first_name} and {name} start with the same new-branch convs"
    assert same_state(snapshot(loaded[0]), snapshot(loaded[1]))


def test_plain_load_of_train_weights_into_a_fused_model_names_the_exact_ways(tiny_net):
    """The other way keys alone cannot say which kinds a train-form block holds (``identity`` and
    ``avg`` share theirs), so a plain load refuses, naming train form + reparameterize and load_into."""
    with pytest.raises(RuntimeError, match="reparameterize") as info:
        _deploy_tiny().load_state_dict(tiny_net.state_dict())
    assert "load_into" in str(info.value)


def test_timm_checkpoint_path_loads_either_form_into_the_train_form(tmp_path):
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    src = randomize(timm.create_model("repan_repvgg_a0_w025"), seed=3).eval()
    for form, model in [("train", src), ("deploy", rz.reparameterize(src))]:
        path = save_checkpoint(model, tmp_path / f"{form}.safetensors")
        loaded = timm.create_model("repan_repvgg_a0_w025", checkpoint_path=str(path)).eval()
        assert model_form(loaded) == "train" and rel_err(_out(src, x), _out(loaded, x)) <= 1e-5, form
    with pytest.raises(RuntimeError, match="deploy=False"):
        timm.create_model("repan_repvgg_a0_w025", deploy=True, checkpoint_path=str(tmp_path / "train.safetensors"))


def test_a_state_dict_of_another_model_is_named_and_loses_nothing(tmp_path):
    """timm's ``checkpoint_path=`` and a plain ``load_state_dict`` with another model's weights (here a
    RepVGG file into ResNet-18-ACB, and a 10-class head into a 5-class model): a typed error (still a
    RuntimeError, as PyTorch raises) that names the model, what the file holds and the fix, and the
    model keeps every tensor it had (was: PyTorch's bare key list, with the matching tensors overwritten)."""
    timm = pytest.importorskip("timm")
    from repan_zoo.errors import StateDictMismatchError

    other = save_checkpoint(randomize(timm.create_model("repan_repvgg_a0_w025", deploy=True), seed=1),
                            tmp_path / "repvgg.safetensors")
    state, _ = read_checkpoint(other)
    model = randomize(timm.create_model("repan_resnet18_acb_w025", deploy=True), seed=2)
    before = snapshot(model)
    with pytest.raises(StateDictMismatchError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, CheckpointError)
    assert "repan_resnet18_acb_w025" in msg and "missing key" in msg.lower() and "architecture" in msg and "read_checkpoint" in msg
    assert same_state(before, snapshot(model))
    with pytest.raises(StateDictMismatchError, match="repan_resnet18_acb_w025"):
        timm.create_model("repan_resnet18_acb_w025", checkpoint_path=str(other))
    # a train-form model and deploy weights of another head: the blocks' calibration flags stay as they were too
    train = timm.create_model("repan_repvgg_a0_w025", num_classes=5)
    assert not uncalibrated_blocks(train)
    with pytest.raises(StateDictMismatchError):
        train.load_state_dict(state)
    assert not uncalibrated_blocks(train)
    # the same architecture with another head: the shapes are named, nothing is half-loaded
    five = randomize(timm.create_model("repan_repvgg_a0_w025", deploy=True, num_classes=5), seed=4)
    before = snapshot(five)
    with pytest.raises(StateDictMismatchError, match="(?s)num_classes=5.*size mismatch"):
        five.load_state_dict(state)
    assert same_state(before, snapshot(five))
    five.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)  # still allowed
    assert not same_state(before, snapshot(five))


def _wrappers(model):
    from timm.utils import ModelEmaV3

    return {
        "DataParallel": nn.DataParallel(model),  # DistributedDataParallel's keys are the same ("module.")
        "compile": torch.compile(model),
        "compile(DataParallel)": torch.compile(nn.DataParallel(model)),
        "ModelEmaV3": ModelEmaV3(model),
    }


def test_a_wrapped_model_saves_as_the_model_itself(tmp_path):
    """DataParallel / DDP (keys ``module.*``), ``torch.compile`` (``_orig_mod.*``) and timm's model EMA
    wrap the model: its checkpoint holds the model's own keys, architecture and form, and loads
    like any other (was: ``module.`` keys and architecture 'DataParallel', which no load accepted)."""
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = randomize(timm.create_model("repan_repvgg_a0_w025"), seed=5).eval()
    ref = _out(model, x)
    for name, wrapped in _wrappers(model).items():
        state, meta = read_checkpoint(save_checkpoint(wrapped, tmp_path / f"{name}.safetensors"))
        assert set(state) == set(model.state_dict()), name
        assert (meta["architecture"], meta["form"]) == ("repan_repvgg_a0_w025", "train"), name
        fresh = load_into(timm.create_model("repan_repvgg_a0_w025"), state, meta)
        assert torch.equal(_out(fresh, x), ref), name
        loaded = timm.create_model("repan_repvgg_a0_w025", checkpoint_path=str(tmp_path / f"{name}.safetensors"))
        assert torch.equal(_out(loaded, x), ref), name


def test_a_wrappers_state_dict_loads_or_names_its_prefix(tmp_path):
    """A wrapper's own state dict (keys ``module.*`` / ``_orig_mod.*``): ``load_into`` takes it as
    timm's ``load_checkpoint`` does (``timm.models.clean_state_dict``); a plain ``load_state_dict``
    (PyTorch's rule: keys as they are) names the prefix and the fix, and loses nothing."""
    timm = pytest.importorskip("timm")
    from repan_zoo.errors import StateDictMismatchError

    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = randomize(timm.create_model("repan_repvgg_a0_w025"), seed=5).eval()
    ref = _out(model, x)
    for name, wrapped in _wrappers(model).items():
        if name == "ModelEmaV3":
            continue  # its state dict is the EMA copy's, under "module."; the same case as DataParallel
        state = wrapped.state_dict()
        fresh = load_into(timm.create_model("repan_repvgg_a0_w025"), state)
        assert torch.equal(_out(fresh, x), ref), name
        other = randomize(timm.create_model("repan_repvgg_a0_w025"), seed=6)
        before = snapshot(other)
        with pytest.raises(StateDictMismatchError, match=r"(?s)start with '(module|_orig_mod)\.'.*clean_state_dict") as info:
            other.load_state_dict(state)
        assert "Build the model the weights were saved from" not in str(info.value), name  # the cause is known
        assert same_state(before, snapshot(other)), name


def test_train_checkpoint_into_deploy_model(tiny_net, tiny_input, tmp_path):
    rz.set_lambda(tiny_net, 0.6)
    state, meta = read_checkpoint(save_checkpoint(tiny_net, tmp_path / "t.safetensors"))
    deploy = _deploy_tiny()
    load_into(deploy, state, meta)
    assert model_form(deploy) == "deploy"
    ref = rz.reparameterize(tiny_net)
    assert rel_err(_out(tiny_net, tiny_input), _out(deploy, tiny_input)) <= 1e-5
    assert same_state(snapshot(ref), snapshot(deploy))  # the same fusion, bit for bit
    # without metadata the form is recognised from the keys
    deploy2 = _deploy_tiny()
    load_into(deploy2, state)
    assert model_form(deploy2) == "deploy"


def test_expanded_train_checkpoint_reloads_structure_and_lambda(tiny_net, tiny_input, tmp_path):
    gen = torch.Generator().manual_seed(0)
    expanded = rz.unfold(rz.reparameterize(tiny_net), branches=("conv_kxk", "conv_1x1", "1x1_kxk"),
                         k=2, lam=0.4, residual=True, generator=gen)
    rz.calibrate_bn(expanded, [make_input(3, seed=4)])
    state, meta = read_checkpoint(save_checkpoint(expanded, tmp_path / "e.safetensors"))
    model = TinyNet()  # the architecture's own branches, λ=1
    load_into(model, state, meta)
    assert {n: b.branch_kinds for n, b in rz.rep_blocks(model)} == {n: b.branch_kinds for n, b in rz.rep_blocks(expanded)}
    assert all(float(b.lam) == pytest.approx(0.4) for _, b in rz.rep_blocks(model))
    assert same_state(snapshot(expanded), snapshot(model))
    assert torch.equal(_out(expanded, tiny_input), _out(model, tiny_input))
    deploy = _deploy_tiny()
    load_into(deploy, state, meta)
    assert rel_err(_out(expanded, tiny_input), _out(deploy, tiny_input)) <= 1e-5


def test_truncated_file_is_a_checkpoint_error(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")  # a valid file of another format: never "delete it"
    with pytest.raises(CheckpointError, match=r"torch.save file \(a pickle\), not safetensors.*save_file") as info:
        read_checkpoint(tmp_path / "state.pt")
    assert "Delete" not in str(info.value)
    (tmp_path / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file.*\(it holds m\.safetensors\)"):
        read_checkpoint(tmp_path)  # a run folder instead of the file in it
    for bad in (path, tmp_path, tmp_path / "missing.safetensors"):  # the metadata alone: the same errors
        with pytest.raises(CheckpointError):
            read_metadata(bad)
    good = save_checkpoint(tiny_net, tmp_path / "good.safetensors", architecture="tiny_net")
    assert read_metadata(good) == read_checkpoint(good)[1] and read_metadata(good)["architecture"] == "tiny_net"


def test_a_timm_training_checkpoint_is_refused_with_advice_that_converts_it(tmp_path):
    """timm's train.py saves a dict (``state_dict``, ``optimizer``, ``epoch``, ``args`` as an
    argparse.Namespace) with DDP's ``module.`` prefix: the refusal's advice must convert that file
    as written (was ``torch.load(path, weights_only=True)``, which refuses the Namespace and would
    have saved the whole training dict)."""
    import argparse

    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    model = randomize(timm.create_model("repan_repvgg_a0_w025"), seed=2).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 3, "arch": "repan_repvgg_a0_w025", "version": 2, "metric": 0.5,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "args": argparse.Namespace(model="repan_repvgg_a0_w025")}, path)
    with pytest.raises(CheckpointError, match=r"torch.save file \(a pickle\)") as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "timm.models.load_state_dict(path)" in message and "checkpoint_path=" in message
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    # the first way, as the message writes it
    save_file(timm.models.load_state_dict(str(path)), str(tmp_path / "model.safetensors"))
    loaded = timm.create_model("repan_repvgg_a0_w025")
    load_into(loaded, *read_checkpoint(tmp_path / "model.safetensors"))
    assert rel_err(_out(model, x), _out(loaded.eval(), x)) <= 1e-6
    # the second way: timm loads it, save_checkpoint writes safetensors with the Rep form recorded
    via_timm = timm.create_model("repan_repvgg_a0_w025", checkpoint_path=str(path)).eval()
    saved = save_checkpoint(via_timm, tmp_path / "saved.safetensors")
    assert read_metadata(saved)["form"] == "train"
    assert rel_err(_out(model, x), _out(via_timm, x)) <= 1e-6


def test_rewrite_metadata_replaces_fields_and_keeps_the_tensor_bytes(tiny_net, tmp_path):
    """A published file's recipe rewritten (e.g. without the training machine's paths): the data
    section is byte for byte the same, the other fields stay, the header stays canonical (sorted)."""
    fused = rz.reparameterize(tiny_net)
    src = save_checkpoint(fused, tmp_path / "d.safetensors", metadata={"recipe": {"teacher_checkpoint": "/root/t"}})
    before = src.read_bytes()
    out = rewrite_metadata(src, tmp_path / "p.safetensors", {"recipe": {"teacher_weights": {"sha256": "0" * 64}}})
    state, meta = read_checkpoint(out)
    assert json.loads(meta["recipe"]) == {"teacher_weights": {"sha256": "0" * 64}}
    assert meta["form"] == "deploy" and json.loads(meta["exactness"]) == fused.repan_exactness
    assert same_state(snapshot(fused), state) and src.read_bytes() == before
    n_src, n_out = (int.from_bytes(p.read_bytes()[:8], "little") for p in (src, out))
    assert out.read_bytes()[8 + n_out:] == before[8 + n_src:]  # the tensor data, untouched
    assert list(json.loads(out.read_bytes()[8:8 + n_out])["__metadata__"]) == sorted(meta)
    # in place, twice: the second rewrite changes nothing (same bytes, same sha256)
    rewrite_metadata(out, out, {"note": "x"})
    once = out.read_bytes()
    rewrite_metadata(out, out, {"note": "x"})
    assert out.read_bytes() == once
    # a file that is not a checkpoint: named, and nothing is written
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        rewrite_metadata(bad, tmp_path / "q.safetensors", {"note": "x"})
    assert not (tmp_path / "q.safetensors").exists()


class _Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.body = nn.Sequential(RepBlock(12, 12, 3, 1, branches=("conv_1x1", "identity")))
        self.fc = nn.Linear(12, 10)


def test_other_architecture_names_the_keys(tiny_net):
    other = _Other().state_dict()
    with pytest.raises(CheckpointError) as info:
        load_into(TinyNet(), other, what="other.safetensors")
    msg = str(info.value)
    assert "other.safetensors does not match TinyNet" in msg
    assert "missing key(s): " in msg and "body.2.trunk.conv.weight" in msg
    assert "unexpected key(s): fc.weight, fc.bias" in msg
    assert "shape mismatch(es): stem.0.weight: checkpoint (12, 3, 3, 3) vs model (8, 3, 3, 3)" in msg
    # a deploy model gets the same strictness (after the form conversion)
    with pytest.raises(CheckpointError, match="missing key"):
        load_into(_deploy_tiny(), other)


def test_mixed_form_model_cannot_be_saved(tiny_net, tmp_path):
    tiny_net.body[0].reparameterize()
    assert model_form(tiny_net) == "mixed"
    with pytest.raises(CheckpointError, match="both fused and unfused"):
        save_checkpoint(tiny_net, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "w.bin"

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]
    def good(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"new")

    atomic_write(target, good)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["w.bin"]


# -- a failed load loses nothing; a mislabelled file is named -----------------------------------
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_deploy", [False, True])
def test_failed_cross_form_load_leaves_the_model_untouched(model_deploy):
    from repan_zoo.checkpoint import load_into, model_form
    from repan_zoo.errors import CheckpointError

    src = randomize(TinyNet(), seed=3)
    other = src if model_deploy else rz.reparameterize(src)  # a checkpoint of the other form
    state = {k: v.clone() for k, v in other.state_dict().items()}
    bad_key = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[bad_key] = state[bad_key][:, :1]  # wrong shape: the load must fail
    target = TinyNet()
    if model_deploy:
        target = rz.reparameterize(target)
    before_form, before = model_form(target), _snapshot(target)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(target, state)
    assert model_form(target) == before_form
    after = _snapshot(target)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_mislabelled_form_is_named():
    from repan_zoo.checkpoint import load_into
    from repan_zoo.errors import CheckpointError

    deploy = rz.reparameterize(randomize(TinyNet(), seed=4))
    with pytest.raises(CheckpointError, match=r"labelled form='train'.*keys are deploy-form"):
        load_into(TinyNet(), deploy.state_dict(), {"form": "train"})


def test_no_load_with_strict_false_anywhere_in_the_package():
    import ast
    from pathlib import Path

    root = Path(rz.__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            called = getattr(func, "attr", None) or getattr(func, "id", None) or ""
            if isinstance(node, ast.Call) and "load" in called.lower():  # torch.jit.trace's strict= is the tracer's
                for kw in node.keywords:
                    if kw.arg == "strict" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"silent non-strict loads: {offenders}"

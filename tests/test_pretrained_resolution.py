"""``pretrained=True`` never hands back other weights than asked for (issue 15.4): an untagged name
whose weights exist only under other tags raises naming them; a user's ``file=`` / ``url=`` overlay
is what gets loaded (ours in either form, or timm's own state dict); afterwards ``pretrained_cfg``
describes the loaded weights."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import repan_zoo as rz
from helpers import randomize, rel_err
from repan_zoo import manifest
from repan_zoo.checkpoint import save_checkpoint
from repan_zoo.errors import WeightsNotFoundError
from repan_zoo.models.repan import base_cfg

NAMES = timm.list_models("repan_*")


def _fits(entry, cfg):
    return entry.num_classes == cfg["num_classes"] and tuple(entry.input_size) == tuple(cfg["input_size"])


@pytest.mark.parametrize("name", NAMES)
def test_untagged_name_never_loads_weights_of_another_config(name):
    """Either the untagged name loads weights trained for its own config, or it raises naming the
    tags (built on the meta device: the lookup fails before any tensor is made or read); and
    ``repan_zoo.hub.fetch_weights(name)`` gives the same file, or the same error."""
    entries = manifest.entries_for(name)
    fitting = [e for e in entries if _fits(e, base_cfg(name))]
    if fitting:
        model = timm.create_model(name, pretrained=True)
        assert model.pretrained_cfg["tag"] == fitting[0].tag
        assert model.pretrained_cfg["num_classes"] == base_cfg(name)["num_classes"]
        assert str(rz.hub.fetch_weights(name)) == model.repan_weights["file"]
        return
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(name, pretrained=True, device="meta")
    for entry in entries:
        assert f"{name}.{entry.tag}" in str(info.value) or entry.tag in str(info.value)
    with pytest.raises(WeightsNotFoundError) as fetched:
        rz.hub.fetch_weights(name)
    assert str(fetched.value) == str(info.value)


def test_the_issue_models_raise_alike():
    for name in ("repan_mobileone_s0", "repan_repvgg_a0"):
        with pytest.raises(WeightsNotFoundError, match=name):
            timm.create_model(name, pretrained=True, device="meta")
    shipped = manifest.entries_for("repan_mobileone_s0_w050")[0].tag  # whichever tag is the default now
    with pytest.raises(WeightsNotFoundError, match=rf"repan_mobileone_s0_w050\.{shipped}"):
        timm.create_model("repan_mobileone_s0", pretrained=True, device="meta")


def _source(name, **kwargs):
    return randomize(timm.create_model(name, num_classes=10, **kwargs), seed=5)


#: (our model, timm's own model of the same architecture) per family that timm has
TIMM_TWINS = [("repan_mobileone_s0", "mobileone_s0"), ("repan_repvgg_a0", "repvgg_a0"), ("repan_resnet18", "resnet18")]


@pytest.mark.parametrize("form", ["train", "deploy", "timm"])
@pytest.mark.parametrize("name,timm_name", TIMM_TWINS, ids=[n for n, _ in TIMM_TWINS])
def test_user_file_overlay_is_what_gets_loaded(name, timm_name, form, tmp_path):
    path = tmp_path / "my.safetensors"
    if form == "timm":
        src = randomize(timm.create_model(timm_name, num_classes=10), seed=5)
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        src = _source(name)
        rz.set_lambda(src, 0.8)
        if form == "deploy":
            src = rz.reparameterize(src)
        save_checkpoint(src, path)
    model = timm.create_model(name, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(src(x), model(x)) <= 1e-5
    cfg = model.pretrained_cfg
    assert cfg["file"] == str(path) and cfg["tag"] is None and cfg["num_classes"] == 10
    assert model.repan_weights["file"] == str(path)


@pytest.mark.parametrize("name,timm_name", TIMM_TWINS, ids=[n for n, _ in TIMM_TWINS])
def test_timm_weights_load_into_another_number_of_input_channels(name, timm_name, tmp_path):
    """timm's own RGB weights into ``in_chans=1`` (Fashion-MNIST) adapt the stem as timm's own model
    does (sum over RGB; was: CheckpointError, the 3-channel stem strictly loaded into a 1-channel
    Rep block before any adaptation)."""
    path = tmp_path / "timm.safetensors"
    src = randomize(timm.create_model(timm_name, num_classes=10), seed=5)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    ours = timm.create_model(name, num_classes=10, in_chans=1, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path))).eval()
    theirs = timm.create_model(timm_name, num_classes=10, in_chans=1, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # features: timm drops the file's head (num_classes 10 ≠ its cfg's 1000), we keep it
        assert rel_err(theirs.forward_features(x), ours.forward_features(x)) <= 1e-5
    assert torch.equal(ours.get_classifier().weight, src.get_classifier().weight)
    assert ours.pretrained_cfg["input_size"][0] == 1  # what the model takes
    # our own RGB file into the default 1-channel model: adapted as timm adapts, and the cfg names the
    # channels the model takes (was: the file's 3, so feeding what the cfg says failed)
    rgb = tmp_path / "rgb.safetensors"
    save_checkpoint(_source(name, in_chans=3), rgb)
    one = timm.create_model(name, num_classes=10, in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(rgb)))
    assert one.pretrained_cfg["input_size"][0] == 1
    # ... into the deploy form too (the stem's 1×1 branch, absent from a deploy model, was left unadapted)
    fused = timm.create_model(name, num_classes=10, in_chans=1, deploy=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(rgb))).eval()
    with torch.no_grad():
        assert rel_err(one.eval()(x), fused(x)) <= 1e-5


def test_a_head_that_does_not_fit_is_refused_unless_another_was_asked_for(tmp_path):
    """As timm: a classifier of another shape is replaced only when ``num_classes`` asks for another
    one than the weights' cfg; otherwise loading is refused naming the fix (was: silently replaced by a
    random head while ``pretrained_cfg`` named the file's classes; ``global_pool='catavgmax'`` on the
    shipped weights dropped their trained head the same way)."""
    from repan_zoo.errors import CheckpointError

    src = randomize(timm.create_model("repan_repvgg_a0_w025", num_classes=5), seed=5)
    path = tmp_path / "five.safetensors"
    save_checkpoint(src, path)
    overlay = dict(file=str(path))
    with pytest.raises(CheckpointError, match="(?s)5 classes.*num_classes=5"):
        timm.create_model("repan_repvgg_a0_w025", pretrained=True, pretrained_cfg_overlay=overlay)
    loaded = timm.create_model("repan_repvgg_a0_w025", num_classes=5, pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(loaded.state_dict()["head.fc.weight"], src.state_dict()["head.fc.weight"])
    fresh = timm.create_model("repan_repvgg_a0_w025", num_classes=7, pretrained=True, pretrained_cfg_overlay=overlay)
    assert fresh.get_classifier().out_features == 7  # a new head was asked for: the file's is dropped
    assert fresh.pretrained_cfg["num_classes"] == 5  # the cfg describes the weights, as timm's does
    name = next(n for n in NAMES if manifest.entries_for(n))
    with pytest.raises(CheckpointError, match="(?s)catavgmax.*reset_classifier"):
        timm.create_model(name, pretrained=True, global_pool="catavgmax")


@pytest.mark.parametrize("file_of, model", [("repan_repvgg_a1_w025", "repan_resnet18_w025"),
                                             ("repan_resnet18_w025", "repan_mobileone_s0_w050"),
                                             ("repan_repvgg_a0", "repan_repvgg_a0_w025")])
@pytest.mark.parametrize("num_classes", [None, 7])
def test_a_file_of_another_architecture_is_named_as_such(tmp_path, file_of, model, num_classes):
    """A file whose metadata names another architecture is refused by that name, whichever step finds
    the mismatch first (was: the classifier check's advice to change the pooling, for every pair)."""
    from repan_zoo.errors import CheckpointError

    path = save_checkpoint(rz.reparameterize(timm.create_model(file_of)), tmp_path / "other.safetensors")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with pytest.raises(CheckpointError, match=f"is a checkpoint of {file_of}, and the model is {model}") as info:
        timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    assert f"timm.create_model({file_of!r}" in str(info.value)


def test_user_url_overlay_is_what_gets_loaded(tmp_path):
    src = _source("repan_repvgg_a0_w025")
    path = tmp_path / "served.safetensors"
    save_checkpoint(src, path)
    model = timm.create_model("repan_repvgg_a0_w025", pretrained=True, cache_dir=str(tmp_path / "cache"),
                              pretrained_cfg_overlay=dict(url=path.as_uri())).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert rel_err(src(x), model(x)) <= 1e-5
    assert model.pretrained_cfg["url"] == path.as_uri() and model.pretrained_cfg["tag"] is None
    with pytest.raises(WeightsNotFoundError, match="cannot download"):
        timm.create_model("repan_repvgg_a0_w025", pretrained=True, cache_dir=str(tmp_path / "cache"),
                          pretrained_cfg_overlay=dict(url=(tmp_path / "missing.safetensors").as_uri()))


def test_user_file_with_another_input_and_class_count_is_described(tmp_path):
    """The issue's case: Fashion-MNIST-shaped weights named by file= into the ImageNet-config model."""
    src = _source("repan_mobileone_s0", in_chans=1)
    path = tmp_path / "fm.safetensors"
    save_checkpoint(src, path)
    model = timm.create_model("repan_mobileone_s0", in_chans=1, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pretrained_cfg["num_classes"] == 10 and model.pretrained_cfg["input_size"][0] == 1
    features = timm.create_model("repan_mobileone_s0", in_chans=1, features_only=True, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert features.pretrained_cfg["file"] == str(path) and "num_classes" not in features.pretrained_cfg


@pytest.mark.parametrize("name", [n for n in NAMES if manifest.entries_for(n)])
def test_pretrained_cfg_describes_the_loaded_manifest_weights(name):
    entry = manifest.entries_for(name)[0]
    model = timm.create_model(f"{name}.{entry.tag}", pretrained=True, num_classes=3)
    cfg = model.pretrained_cfg
    assert (cfg["tag"], cfg["num_classes"], tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])) == (
        entry.tag, entry.num_classes, tuple(entry.input_size), tuple(entry.mean), tuple(entry.std))
    assert model.num_classes == 3


@pytest.mark.parametrize("pretrained", [True, False])
def test_an_unknown_pretrained_tag_names_the_tags_the_model_has(pretrained):
    """``timm.create_model("<model>.<typo>")`` is refused as the CLI refuses it: the message lists the
    model's tags (was timm's bare "Invalid pretrained tag (nope) for ..."); it stays a RuntimeError,
    what timm raises there, so code written against timm keeps catching it."""
    from repan_zoo.errors import UnknownTagError

    with pytest.raises(UnknownTagError, match=r"repan_repvgg_a1_w025 has no pretrained tag 'nope'.*fmnist_long_kd") as exc:
        timm.create_model("repan_repvgg_a1_w025.nope", pretrained=pretrained, device="meta")
    assert isinstance(exc.value, RuntimeError) and "fmnist_long_kd" in exc.value.available
    with pytest.raises(UnknownTagError, match="tags it has: none"):
        timm.create_model("repan_repvgg_a0.nope", pretrained=pretrained, device="meta")


SHIPPED = [n for n in NAMES if any(_fits(e, base_cfg(n)) for e in manifest.entries_for(n))]


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-2), (torch.float16, 3e-3), (torch.float64, 1e-5)],
                         ids=["bf16", "fp16", "fp64"])
def test_pretrained_weights_load_into_a_model_built_in_another_float_dtype(dtype, tol, deploy):
    """``create_model(..., pretrained=True, dtype=...)`` casts the fp32 file's floats as timm does
    (was: a dtype-mismatch CheckpointError advising cast_floats=True, which create_model refuses)."""
    name = SHIPPED[0]
    reference = timm.create_model(name, pretrained=True, deploy=deploy).eval()
    model = timm.create_model(name, pretrained=True, deploy=deploy, dtype=dtype).eval()
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert all(b.dtype == dtype for b in model.buffers() if b.is_floating_point())
    x = torch.randn(4, *base_cfg(name)["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(reference(x).double(), model(x.to(dtype)).double()) <= tol


@pytest.mark.parametrize("overlay", [dict(mean=(0.5,), std=(0.25,)), dict(mean=(0.3,)), dict(crop_pct=0.9)],
                         ids=["mean-std", "mean", "crop_pct"])
def test_pretrained_cfg_overlay_preprocessing_is_kept_when_manifest_weights_load(overlay):
    """timm's ``pretrained_cfg_overlay`` entries for preprocessing win over the manifest's, as in timm
    (was: ``mean`` / ``std`` silently replaced by the manifest's when its weights loaded)."""
    name = SHIPPED[0]
    entry = next(e for e in manifest.entries_for(name) if _fits(e, base_cfg(name)))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    expected = {"mean": tuple(entry.mean), "std": tuple(entry.std), **overlay}
    cfg = model.pretrained_cfg
    assert cfg["tag"] == entry.tag
    assert {k: (tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k]) for k in expected} == expected
    data = timm.data.resolve_data_config(model=model)
    assert tuple(data["mean"]) == expected["mean"] and tuple(data["std"]) == expected["std"]


def test_a_missing_overlay_file_is_named_as_the_callers_not_as_the_tagged_weights(tmp_path):
    """The error names the file the caller gave and the fix, not the manifest tag of the name the
    model was built with (was: 'weights of <model>.<tag>: ... a local-dir: model folder needs ...')."""
    name = SHIPPED[0]
    entry = next(e for e in manifest.entries_for(name) if _fits(e, base_cfg(name)))
    missing = tmp_path / "mine.safetensors"
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(f"{name}.{entry.tag}", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message and "file=" in message
    assert entry.tag not in message and "local-dir" not in message

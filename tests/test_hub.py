"""repan_zoo.hub against a loopback Hub (tests/fake_hub.py), through the real huggingface_hub client:
publish → manifest → download → verify → timm.create_model(pretrained=True), and every way a
download can go wrong."""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from fake_hub import cached_files, go_offline, hub, make_deploy_run, register_test_model  # noqa: F401  (hub is a fixture)
from helpers import randomize_bn, rel_err
from repan_zoo import manifest
from repan_zoo.errors import (
    CheckpointError,
    ChecksumMismatchError,
    IntegrityError,
    OfflineError,
    SizeMismatchError,
    TruncatedDownloadError,
    UnknownRevisionError,
    UnknownTagError,
    WeightsNotFoundError,
)
from repan_zoo.hub import bundle, fetch_weights, list_pretrained, publish

MODEL = register_test_model()
REPO = "org/hubtest-tiny"
FILE = "model.safetensors"
X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def published(hub, tmp_path):
    """A deploy run published to the fake Hub under tag 'fmnist' (manifest entry written)."""
    checkpoint, metrics, deploy = make_deploy_run(tmp_path / "run")
    result = publish(checkpoint, metrics, REPO, tag="fmnist")
    return result.entry, deploy


@pytest.fixture
def spy_reads(monkeypatch):
    """Records every checkpoint the hub reads tensors from (to prove nothing unverified is read)."""
    import repan_zoo.hub.load as load_module

    calls = []
    real = load_module.read_checkpoint

    def spy(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(load_module, "read_checkpoint", spy)
    return calls


def create(tag="fmnist", overlay=None, **kwargs):
    overlay = dict(overlay or {}, tag=tag)
    return timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


# -- the happy path ------------------------------------------------------------------------------
def test_publish_manifest_download_verify_create_model(hub, published):
    entry, deploy = published
    stored = hub.repos[REPO].commits[entry.revision][FILE]
    assert entry.revision == hub.head(REPO) and len(entry.revision) == 40
    assert (entry.sha256, entry.size) == (hashlib.sha256(stored).hexdigest(), len(stored))
    manifest.reload_manifest()
    assert manifest.find_entry(MODEL, "fmnist") == entry  # read back from the JSON file

    ref = deploy(X)
    m = create(deploy=True)
    assert m.stem.deploy and torch.equal(m(X), ref)
    assert m.repan_weights["revision"] == entry.revision and m.repan_weights["sha256"] == entry.sha256
    assert m.repan_weights["verified_by"] == f"the manifest entry {MODEL}.fmnist"

    train = create()  # train form: deploy weights unfolded, same function
    assert not train.stem.deploy and len(train.body.extras) > 0
    assert rel_err(ref, train(X)) <= 1e-5

    hub.requests.clear()
    assert torch.equal(create(deploy=True)(X), ref)
    assert hub.requests == []  # pinned commit, warm cache: no network at all

    via_timm = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()  # timm's own prefix
    assert via_timm.stem.deploy and torch.equal(via_timm(X), ref)
    assert "the Hub's metadata" in via_timm.repan_weights["verified_by"]
    assert str(fetch_weights(f"{MODEL}.fmnist")) == m.repan_weights["file"]
    assert list_pretrained(f"{MODEL}.*") == [f"{MODEL}.fmnist"]
    assert list_pretrained(None) == list_pretrained("") == list_pretrained() and f"{MODEL}.fmnist" in list_pretrained()


def test_manifest_tags_become_timm_pretrained_tags(hub, published):
    entry, deploy = published
    name = "hubtest_tagged"  # same architecture; registered after its manifest entries exist
    manifest.write_entry(dataclasses.replace(entry, model=name, tag="fmnist"))
    manifest.write_entry(dataclasses.replace(entry, model=name, tag="second"))
    register_test_model(name)
    assert timm.list_pretrained(f"{name}*") == [f"{name}.fmnist", f"{name}.second"]
    cfg = timm.models.get_pretrained_cfg(f"{name}.second")
    assert cfg.hf_hub_id == f"{REPO}@{entry.revision}" and cfg.num_classes == entry.num_classes
    default = timm.create_model(name, pretrained=True, deploy=True).eval()  # first listed tag
    tagged = timm.create_model(f"{name}.second", pretrained=True, deploy=True).eval()
    assert default.pretrained_cfg["tag"] == "fmnist" and tagged.pretrained_cfg["tag"] == "second"
    assert torch.equal(default(X), deploy(X)) and torch.equal(tagged(X), deploy(X))


def test_other_num_classes_and_in_chans_are_adapted(hub, published):
    from timm.models import adapt_input_conv

    entry, deploy = published
    ref = deploy.state_dict()
    if "base_chans" not in inspect.signature(adapt_input_conv).parameters:
        # timm < 1.0.31 adapts 3-channel stems only: a 1-channel stem is refused by name, with the fix
        with pytest.raises(CheckpointError, match=r"first conv .* from 1 to 3 input channels.*use in_chans=1"):
            create(deploy=True, in_chans=3, num_classes=4)
        m = create(deploy=True, num_classes=4)
        assert m.state_dict()["fc.weight"].shape == (4, 8)
        assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.items() if not k.startswith("fc."))
        assert torch.equal(create(deploy=True, num_classes=0).forward_features(X), deploy.forward_features(X))
        return
    m = create(deploy=True, in_chans=3, num_classes=4)
    got = m.state_dict()
    assert torch.equal(got["stem.reparam_conv.weight"], adapt_input_conv(3, ref["stem.reparam_conv.weight"], base_chans=1))
    assert got["fc.weight"].shape == (4, 8)
    assert all(torch.equal(got[k], v) for k, v in ref.items() if not k.startswith(("stem.reparam_conv.weight", "fc.")))
    # the registry names the first conv in train form ('stem.trunk.conv'): same adaptation, train model unfolded
    x3 = torch.randn(2, 3, 16, 16)
    train = create(in_chans=3, num_classes=4, overlay=dict(first_conv="stem.trunk.conv"))
    assert rel_err(m.forward_features(x3), train.forward_features(x3)) <= 1e-5
    headless = create(deploy=True, num_classes=0)
    assert torch.equal(headless.forward_features(X), deploy.forward_features(X))


def test_registry_model_end_to_end(hub, tmp_path):
    import repan_zoo.models  # noqa: F401  registers the repan_* models

    name = "repan_repvgg_a0_w025"
    assert name in timm.list_models("repan_*")
    checkpoint, metrics, deploy = make_deploy_run(tmp_path / "run", model=name, seed=1)
    publish(checkpoint, metrics, "org/repvgg-a0-w025", tag="fmnist")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ref = deploy(x)
    fused = timm.create_model(name, pretrained=True, deploy=True, pretrained_cfg_overlay=dict(tag="fmnist")).eval()
    assert torch.equal(fused(x), ref)
    train = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(tag="fmnist")).eval()
    assert rel_err(ref, train(x)) <= 1e-5
    via_timm = timm.create_model("hf-hub:org/repvgg-a0-w025", pretrained=True).eval()
    assert torch.equal(via_timm(x), ref)


# -- damaged downloads ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault, error",
    [("corrupt", ChecksumMismatchError), ("truncate", TruncatedDownloadError), ("resize", SizeMismatchError)],
)
def test_damaged_download_is_refused_and_not_cached(hub, published, spy_reads, fault, error):
    entry, deploy = published
    hub.inject(REPO, FILE, fault)
    with pytest.raises(error) as info:
        create()
    err = info.value
    assert (err.model, err.filename) == (f"{MODEL}.fmnist", FILE)
    assert MODEL in str(err) and FILE in str(err) and "run again" in str(err).lower()
    assert fault != "resize" or not isinstance(err, TruncatedDownloadError)
    assert spy_reads == []  # no tensor was read from it
    assert cached_files(hub.cache_dir) == []  # and it is not left for the next call
    assert len([r for r in hub.file_requests(FILE) if r[0] == "GET"]) == 1  # a fresh download is not retried

    hub.inject(REPO, FILE, None)
    assert torch.equal(create(deploy=True)(X), deploy(X))


@pytest.mark.parametrize("overlay", [None, dict(hf_hub_id=REPO)], ids=["manifest", "hub-metadata"])
def test_truncated_download_drops_its_own_partial_file_only(hub, published, overlay):
    """A transfer that ended early removes the partial file it wrote and no other: another file of
    the same repo being downloaded by another process at the same moment keeps its partial file."""
    blobs = Path(hub.cache_dir) / "models--org--hubtest-tiny" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    other = blobs / ("ab" * 32 + ".incomplete")
    other.write_bytes(b"another download in progress")
    hub.inject(REPO, FILE, "truncate")
    with pytest.raises(TruncatedDownloadError):
        create(overlay=overlay)
    assert cached_files(hub.cache_dir) == [os.path.relpath(other, hub.cache_dir)]
    assert other.read_bytes() == b"another download in progress"


def test_partial_download_another_process_is_writing_is_left_alone(hub, published, tmp_path):
    """The partial file of a download that another process holds huggingface_hub's lock for (it is
    resuming from it now) is not removed; once the lock is free, it is."""
    from repan_zoo.hub.cache import drop_partial_download

    entry, _ = published
    blobs = Path(hub.cache_dir) / "models--org--hubtest-tiny" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"{entry.sha256}.incomplete"
    partial.write_bytes(b"half")
    lock = Path(hub.cache_dir) / ".locks" / "models--org--hubtest-tiny" / f"{entry.sha256}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import filelock, sys\nwith filelock.FileLock({str(lock)!r}):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert drop_partial_download(REPO, entry.sha256, hub.cache_dir) is None
        assert partial.read_bytes() == b"half"
    finally:
        holder.communicate("", timeout=60)
    assert drop_partial_download(REPO, entry.sha256, hub.cache_dir) == partial
    assert not partial.exists()
    assert drop_partial_download(REPO, entry.sha256, hub.cache_dir) is None  # nothing left: nothing to do


def test_tampered_cache_is_replaced_online_and_refused_offline(hub, published, monkeypatch):
    entry, deploy = published
    blob = Path(create(deploy=True).repan_weights["file"]).resolve()
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert torch.equal(create(deploy=True)(X), deploy(X))  # detected, evicted, downloaded again
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == entry.sha256

    blob.write_bytes(bytes(data))
    go_offline(monkeypatch)
    with pytest.raises(ChecksumMismatchError, match="unset HF_HUB_OFFLINE"):
        create()
    assert cached_files(hub.cache_dir) == []


@pytest.mark.parametrize("change, error, words, fix", [
    ({"revision": "f" * 40}, UnknownRevisionError, "no revision", "re-publish and update the manifest entry"),
    ({"filename": "missing.safetensors"}, WeightsNotFoundError, "404", "use another tag or pretrained=False"),
    ({"hf_hub_id": "org/no-such-repo"}, WeightsNotFoundError, "no such repo", "Check the repo id"),
])
def test_manifest_pointing_nowhere(hub, published, change, error, words, fix):
    entry, _ = published
    manifest.write_entry(dataclasses.replace(entry, **change))
    with pytest.raises(error, match=words) as info:
        create()
    assert info.value.model == f"{MODEL}.fmnist" and MODEL in str(info.value)
    assert change.get("filename", FILE) in str(info.value)
    assert fix in str(info.value)  # the message says what to do
    assert error is not WeightsNotFoundError or not isinstance(info.value, UnknownRevisionError)
    assert cached_files(hub.cache_dir) == []


def test_unknown_tag_and_no_weights(hub, published):
    hub.requests.clear()
    with pytest.raises(UnknownTagError, match="tags it has: fmnist") as info:
        create(tag="imagenet")
    assert info.value.available == ("fmnist",) and info.value.model == MODEL
    (Path(os.environ["REPAN_ZOO_MANIFEST_DIR"]) / "hubtest.json").unlink()
    manifest.reload_manifest()
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights"):
        timm.create_model(MODEL, pretrained=True)
    assert hub.file_requests() == []


def test_no_weights_names_the_variants_that_have_some():
    """A model without weights of its own, whose narrow / small-input variant has some (the shipped
    manifest: ResNet-18 0.25×), is told which; a model with no such variant is not."""
    manifest.reload_manifest()
    with_weights = {e.model for e in manifest.load_manifest().values()}
    assert "repan_resnet18_w025" in with_weights and "repan_resnet18" not in with_weights
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights") as info:
        timm.create_model("repan_resnet18", pretrained=True)
    tag = manifest.entries_for("repan_resnet18_w025")[0].tag
    assert f"repan_resnet18_w025.{tag} (1×28×28, 10 classes)" in str(info.value)
    assert "Variants of it have" in str(info.value) and "pretrained=False" in str(info.value)
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model("repan_mobileone_s1", pretrained=True)
    assert "Variants" not in str(info.value) and "pretrained=False" in str(info.value)


# -- offline ---------------------------------------------------------------------------------------
def test_offline_with_empty_cache_raises(hub, published, monkeypatch):
    go_offline(monkeypatch)
    hub.requests.clear()
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE") as info:
        create()
    assert FILE in str(info.value) and MODEL in str(info.value) and "Go online" in str(info.value)
    assert hub.requests == [] and cached_files(hub.cache_dir) == []


def test_offline_from_warm_cache(hub, published, monkeypatch):
    entry, deploy = published
    create()
    via_timm = timm.create_model(f"hf-hub:{REPO}", pretrained=True)  # caches config.json and refs/main too
    go_offline(monkeypatch)
    hub.requests.clear()
    assert torch.equal(create(deploy=True)(X), deploy(X))
    (Path(os.environ["REPAN_ZOO_MANIFEST_DIR"]) / "hubtest.json").unlink()  # no manifest: the cache's record
    manifest.reload_manifest()
    again = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
    assert torch.equal(again(X), deploy(X)) and "recorded in the cache" in again.repan_weights["verified_by"]
    assert hub.requests == [] and via_timm is not None


def test_no_network_at_all_bundled_and_warm_cache(hub, published, tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE=1 and HF_ENDPOINT pointing at a closed port."""
    entry, deploy = published
    create()  # warm the cache
    checkpoint, metrics, bundled_model = make_deploy_run(tmp_path / "small", seed=5)
    bundle(checkpoint, metrics, tag="bundled")
    empty_cache = tmp_path / "empty-cache"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch, timm, fake_hub
        from repan_zoo.errors import OfflineError
        from repan_zoo.hub import load_pretrained
        name = fake_hub.register_test_model()
        x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        out = {{}}
        out["bundled"] = timm.create_model(name + ".bundled", pretrained=True, deploy=True).eval()(x).tolist()
        out["hub"] = timm.create_model(name + ".fmnist", pretrained=True, deploy=True).eval()(x).tolist()
        try:
            load_pretrained(timm.create_model(name + ".fmnist", deploy=True), cache_dir={str(empty_cache)!r})
        except OfflineError as exc:
            out["empty_cache"] = type(exc).__name__
        print(json.dumps(out))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(hub.cache_dir))
    hub.requests.clear()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch.equal(torch.tensor(out["bundled"]), bundled_model(X))
    assert torch.equal(torch.tensor(out["hub"]), deploy(X))
    assert out["empty_cache"] == "OfflineError"
    assert hub.requests == []


def test_bundled_weights_are_verified(hub, tmp_path):
    checkpoint, metrics, deploy = make_deploy_run(tmp_path / "small", seed=2)
    result = bundle(checkpoint, metrics, tag="bundled")
    assert result.entry.source == "bundled" and result.entry.hf_hub_id is None
    assert torch.equal(create(tag="bundled", deploy=True)(X), deploy(X))
    path = manifest.bundled_dir() / result.entry.filename
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TruncatedDownloadError, match="reinstall"):
        create(tag="bundled")
    path.unlink()
    with pytest.raises(WeightsNotFoundError, match="missing"):
        create(tag="bundled")
    assert hub.requests == []


@pytest.mark.parametrize("deploy", [False, True])
def test_a_fine_tuned_model_pushed_with_timm_comes_back_through_hf_hub(hub, deploy):
    """The user's round trip: timm's push_to_hf_hub (default: safetensors and the pickle) of either
    form, then timm.create_model('hf-hub:...', pretrained=True) rebuilds the same function."""
    from timm.models import push_to_hf_hub

    import repan_zoo

    model = randomize_bn(timm.create_model(MODEL), torch.Generator().manual_seed(4)).eval()
    pushed = repan_zoo.reparameterize(model) if deploy else model
    push_to_hf_hub(pushed, "org/fine-tuned", token="fake")
    assert {FILE, "config.json"} <= set(hub.repos["org/fine-tuned"].commits[hub.head("org/fine-tuned")])
    back = timm.create_model("hf-hub:org/fine-tuned", pretrained=True).eval()
    with torch.no_grad():
        assert rel_err(back(X), model(X)) <= 1e-5
    assert not [f for f in cached_files(hub.cache_dir) if f.endswith(".bin")]  # the pickle was never fetched


def test_a_model_folder_or_repo_holding_only_a_pickle_names_safe_serialization(hub, tmp_path):
    """timm's ``save_for_hf`` writes ``pytorch_model.bin`` (a pickle) unless ``safe_serialization``
    is set, and ``push_to_hf_hub(..., safe_serialization=False)`` pushes only that. repan_zoo loads
    safetensors only: the error names the pickle it found and how to write safetensors instead."""
    from timm.models import save_for_hf

    folder = tmp_path / "mine"
    save_for_hf(timm.create_model(MODEL), str(folder))  # timm's default: the pickle only
    assert (folder / "pytorch_model.bin").exists() and not (folder / FILE).exists()
    with pytest.raises(WeightsNotFoundError, match="safe_serialization=True") as info:
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert "pytorch_model.bin" in str(info.value)
    hub.create("org/pickle-only")
    hub.commit("org/pickle-only", {p.name: p.read_bytes() for p in folder.iterdir()})
    with pytest.raises(WeightsNotFoundError, match="safe_serialization=True") as info:
        timm.create_model("hf-hub:org/pickle-only", pretrained=True)
    assert "404" in str(info.value)
    assert not [f for f in cached_files(hub.cache_dir) if f.endswith(".bin")]  # the pickle was never fetched


# -- timm's hf-hub: prefix without a manifest entry -------------------------------------------------
def test_hf_hub_prefix_verified_by_hub_metadata(hub, published, spy_reads):
    entry, deploy = published
    (Path(os.environ["REPAN_ZOO_MANIFEST_DIR"]) / "hubtest.json").unlink()
    manifest.reload_manifest()
    hub.inject(REPO, FILE, "corrupt")
    with pytest.raises(ChecksumMismatchError, match="Hub's metadata"):
        timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert spy_reads == [] and not [f for f in cached_files(hub.cache_dir) if f.endswith(FILE)]
    hub.inject(REPO, FILE, None)
    m = timm.create_model(f"hf-hub:{REPO}@{entry.revision}", pretrained=True).eval()
    assert torch.equal(m(X), deploy(X)) and m.repan_weights["sha256"] == entry.sha256
    # a file the Hub keeps in git (not LFS) is checked against its git blob id
    hub.commit(REPO, {".gitattributes": b""}, summary="no LFS")
    hub.inject(REPO, FILE, "corrupt")
    with pytest.raises(ChecksumMismatchError, match="git blob id"):
        timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    hub.inject(REPO, FILE, None)
    plain = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
    assert torch.equal(plain(X), deploy(X)) and "git_sha1" in plain.repan_weights


def test_cfg_hf_hub_id_overrides_the_manifest(hub, published, tmp_path):
    entry, deploy = published
    checkpoint, metrics, other = make_deploy_run(tmp_path / "other", seed=9)
    publish(checkpoint, metrics, "org/other", tag="other")
    m = create(tag="fmnist", overlay=dict(hf_hub_id="org/other"), deploy=True)
    assert torch.equal(m(X), other(X)) and m.repan_weights["hf_hub_id"] == "org/other"
    assert "Hub's metadata" in m.repan_weights["verified_by"]
    same = create(tag="fmnist", overlay=dict(hf_hub_id=f"{REPO}@{entry.revision}"), deploy=True)
    assert torch.equal(same(X), deploy(X)) and same.repan_weights["verified_by"] == f"the manifest entry {MODEL}.fmnist"


def test_manifest_and_hub_disagree(hub, published):
    entry, _ = published
    manifest.write_entry(dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(IntegrityError, match="contradicts the manifest"):
        timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        create()
    assert not [f for f in cached_files(hub.cache_dir) if f.endswith(FILE)]


# -- no pickles ------------------------------------------------------------------------------------
def test_no_torch_load_without_weights_only():
    """Every torch.load(...) in the package, scripts and benchmarks passes weights_only=True."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("repan_zoo", "train_scripts", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            safe_calls = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                ):
                    safe_calls.add(id(node.func))
            for node in ast.walk(tree):
                is_torch_load = (
                    isinstance(node, ast.Attribute) and node.attr == "load"
                    and isinstance(node.value, ast.Name) and node.value.id == "torch"
                )
                if is_torch_load and id(node) not in safe_calls:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


@pytest.mark.parametrize("ours,theirs", [("repan_repvgg_a0", "repvgg_a0"), ("repan_resnet18_dbb", "resnet18")])
def test_a_model_without_zoo_weights_names_timms_imagenet_weights_and_that_route_works(hub, ours, theirs):
    """A ``repan_*`` model with a timm twin and no manifest weights: the error names the call that
    loads timm's own weights (converted by timm_compat.checkpoint_filter), and that call works,
    here against the loopback Hub holding a timm-format state dict under timm's repo id."""
    from safetensors.torch import save
    from timm.models import get_pretrained_cfg

    from helpers import randomize_bn

    hub_id = get_pretrained_cfg(theirs).hf_hub_id
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(ours, pretrained=True)
    call = f"timm.create_model('{ours}', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='{hub_id}'))"
    assert call in str(info.value), str(info.value)
    src = randomize_bn(timm.create_model(theirs), torch.Generator().manual_seed(3)).eval()
    hub.create(hub_id)
    hub.commit(hub_id, {FILE: save({k: v.contiguous() for k, v in src.state_dict().items()})})
    model = eval(call, {"timm": timm}).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(src(x), model(x)) <= 1e-5
    assert model.repan_weights["hf_hub_id"] == hub_id


def test_a_repo_named_without_a_revision_loads_its_main_as_timm_does(hub, published, tmp_path):
    """The caller's ``hf_hub_id="ORG/REPO"`` (``pretrained_cfg_overlay``, or the cfg timm builds for
    ``hf-hub:ORG/REPO``) without ``@revision`` names the repo's ``main``, as in timm and huggingface_hub,
    also when the manifest pins an older commit of that repo under the cfg's tag (was: the pinned
    commit's weights, while config.json came from main). The pinned commit, named, is verified by its
    manifest entry; the zoo's tag alone keeps loading it."""
    from repan_zoo.hub.download import fetch
    from repan_zoo.hub.resolve import resolve_source

    entry, deploy = published
    checkpoint, _, newer = make_deploy_run(tmp_path / "newer", seed=9)
    hub.commit(REPO, {FILE: checkpoint.read_bytes()}, summary="newer weights on main")
    head = hub.head(REPO)
    cfg = {"architecture": MODEL, "tag": "fmnist"}
    on_main = resolve_source(cfg, {"hf_hub_id": REPO})
    assert on_main.entry is None and on_main.revision is None  # main, verified by the Hub's metadata
    assert fetch(on_main).revision == head
    pinned = resolve_source(cfg, {"hf_hub_id": f"{REPO}@{entry.revision}"})
    assert pinned.entry == entry and fetch(pinned).revision == entry.revision
    assert resolve_source(cfg).entry == entry
    via_timm = timm.create_model(f"hf-hub:{REPO}", pretrained=True, deploy=True).eval()
    assert torch.equal(via_timm(X), newer(X)) and via_timm.repan_weights["revision"] == head
    assert torch.equal(create(deploy=True)(X), deploy(X))  # the zoo's tag: its pinned, verified commit

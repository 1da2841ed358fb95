"""Publishing (repan_zoo.hub.publish, repan-publish, train_scripts/publish.py) against the loopback Hub."""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import timm
import torch

from fake_hub import hub, make_deploy_run, register_test_model  # noqa: F401  (hub is a fixture)
from repan_zoo import manifest
from repan_zoo.checkpoint import save_checkpoint
from repan_zoo.errors import PublishError
from repan_zoo.hub import publish
from repan_zoo.hub import bundle, retire
from repan_zoo.publish_cli import main

MODEL = register_test_model()
REPO = "org/hubtest-publish"
ROOT = Path(__file__).resolve().parents[1]


def edit(path: Path, **change) -> Path:
    doc = json.loads(path.read_text())
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))
    return path


def nothing_published(hub) -> bool:
    return not hub.repos and not list(manifest.manifest_dir().glob("*.json"))


@pytest.fixture
def run(hub, tmp_path):
    return make_deploy_run(tmp_path / "run", seed=3)


# -- refusals ------------------------------------------------------------------------------------
def test_refuses_without_metrics(hub, run, tmp_path):
    checkpoint, metrics, _ = run
    with pytest.raises(PublishError, match="no metrics JSON"):
        publish(checkpoint, None, REPO, tag="fmnist")
    with pytest.raises(PublishError, match="does not exist"):
        publish(checkpoint, tmp_path / "nope.json", REPO, tag="fmnist")
    with pytest.raises(PublishError, match="has no metrics"):
        publish(checkpoint, edit(metrics, test_top1=None, val_top1=None), REPO, tag="fmnist")
    with pytest.raises(PublishError, match="numeric top-1"):
        publish(checkpoint, edit(metrics, metrics={"fashion_mnist": {"top5": 99.0}}), REPO, tag="fmnist")
    assert nothing_published(hub)


def test_refuses_without_a_passing_exactness_certificate(hub, run, tmp_path):
    checkpoint, metrics, _ = run
    with pytest.raises(PublishError, match="exceed the tolerance"):
        publish(checkpoint, edit(metrics, exactness={"model_rel_error": 2e-3, "tolerance": 1e-5}), REPO, tag="t")
    with pytest.raises(PublishError, match="numeric 'tolerance'"):
        publish(checkpoint, edit(metrics, exactness={"model_rel_error": 2e-7}), REPO, tag="t")
    # no certificate in the JSON, and a checkpoint that carries none either
    bare = save_checkpoint(timm.create_model(MODEL, deploy=True), tmp_path / "bare.safetensors", architecture=MODEL)
    with pytest.raises(PublishError, match="no exactness certificate"):
        publish(bare, edit(metrics, exactness=None), REPO, tag="t")
    assert nothing_published(hub)


def test_refuses_checkpoints_that_are_not_loadable_deploy_weights(hub, run, tmp_path):
    checkpoint, metrics, deploy = run
    train = save_checkpoint(timm.create_model(MODEL), tmp_path / "train.safetensors", architecture=MODEL)
    with pytest.raises(PublishError, match="train-form checkpoint"):
        publish(train, metrics, REPO, tag="t")
    with pytest.raises(PublishError, match="does not load into"):
        publish(checkpoint, edit(metrics, create_kwargs={"num_classes": 7, "in_chans": 1}), REPO, tag="t")
    with pytest.raises(PublishError, match="not a timm model"):
        publish(checkpoint, edit(metrics, model="no_such_model"), REPO, tag="t")
    pickle = tmp_path / "deploy.pth"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(PublishError, match="only safetensors"):
        publish(pickle, metrics, REPO, tag="t")
    assert nothing_published(hub)


def test_refuses_when_the_hub_copy_differs(hub, run):
    checkpoint, metrics, _ = run
    hub.inject(REPO, "model.safetensors", "resize")
    with pytest.raises(PublishError, match="manifest was NOT updated"):
        publish(checkpoint, metrics, REPO, tag="fmnist")
    assert not list(manifest.manifest_dir().glob("*.json"))


# -- what gets published -----------------------------------------------------------------------
def test_staged_files_config_and_card(hub, run, tmp_path):
    checkpoint, metrics, deploy = run
    out = tmp_path / "stage"
    result = publish(checkpoint, metrics, REPO, tag="fmnist", out_dir=out, dry_run=True)
    assert nothing_published(hub)  # dry run: no upload, no manifest
    assert (out / "model.safetensors").read_bytes() == Path(checkpoint).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == MODEL and config["num_classes"] == 10 and config["num_features"] == 8
    assert config["model_args"]["deploy"] is True
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["tag"]) == ([1, 16, 16], [0.5], [0.25], "fmnist")
    assert cfg["first_conv"] == "stem" and cfg["classifier"] == "fc" and cfg["license"] == "apache-2.0"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\nlicense: apache-2.0")
    assert "| fashion_mnist | 87.25 | 87.25 | 88.5 |" in card  # metrics table (top1, test_top1, val_top1)
    assert "model_rel_error" in card and "tolerance" in card and "| method | repan |" in card
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card
    assert result.entry.sha256 in card
    # the staged folder is a timm model folder: timm's own local-dir: prefix rebuilds the deploy model
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 1, 16, 16)
    assert model.stem.deploy and torch.equal(model(x), deploy(x))


def test_metrics_in_the_documented_dict_form(hub, run):
    checkpoint, metrics, _ = run
    doc = edit(metrics, test_top1=None, val_top1=None, metrics={"fashion_mnist": 90.0, "cifar10": {"top1": 80.5}})
    entry = publish(checkpoint, doc, REPO, tag="two", dry_run=True).entry
    assert entry.metrics == {"fashion_mnist": {"top1": 90.0}, "cifar10": {"top1": 80.5}}
    assert entry.recipe["method"] == "repan" and entry.exactness["tolerance"] == 1e-5


def test_republishing_a_tag_updates_its_entry(hub, run, tmp_path):
    checkpoint, metrics, _ = run
    first = publish(checkpoint, metrics, REPO, tag="fmnist")
    checkpoint2, metrics2, _ = make_deploy_run(tmp_path / "run2", seed=4)
    second = publish(checkpoint2, metrics2, REPO, tag="fmnist")
    assert first.commit != second.commit == hub.head(REPO)
    doc = json.loads(second.manifest_file.read_text())
    assert [(e["tag"], e["revision"], e["sha256"]) for e in doc["entries"]] == [
        ("fmnist", second.commit, second.entry.sha256)
    ]
    assert manifest.find_entry(MODEL, "fmnist").revision == second.commit


# -- command line ------------------------------------------------------------------------------
def test_cli_publish_and_bundle(hub, run, capsys):
    checkpoint, metrics, deploy = run
    code = main([str(checkpoint), "--metrics", str(metrics), "--repo", REPO, "--tag", "fmnist"])
    out = capsys.readouterr().out
    assert code == 0 and f"uploaded to {REPO}@{hub.head(REPO)}" in out and "manifest entry written" in out
    assert manifest.find_entry(MODEL, "fmnist").revision == hub.head(REPO)

    code = main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "offline"])
    assert code == 0 and "bundled as" in capsys.readouterr().out
    entry = manifest.find_entry(MODEL, "offline")
    assert entry.source == "bundled" and (manifest.bundled_dir() / entry.filename).is_file()
    x = torch.randn(2, 1, 16, 16)
    model = timm.create_model(MODEL, pretrained=True, deploy=True, pretrained_cfg_overlay=dict(tag="offline"))
    assert torch.equal(model.eval()(x), deploy(x))

    code = main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "big", "--max-bundle-mb", "0.001"])
    assert code == 2 and "limited to" in capsys.readouterr().err
    code = main([str(checkpoint), "--metrics", str(edit(metrics, test_top1=None, val_top1=None)), "--repo", REPO,
                 "--tag", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("repan-publish: error:") and "has no metrics" in err


def test_train_scripts_wrapper(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["publish.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "train_scripts" / "publish.py"), run_name="__main__")
    assert info.value.code == 0 and "--bundle" in capsys.readouterr().out
    assert os.access(ROOT / "train_scripts" / "publish.py", os.X_OK)


def test_published_recipe_names_the_teacher_by_content_and_manifest_not_by_path(tmp_path):
    from repan_zoo import manifest
    from repan_zoo.fileio import sha256_file
    from repan_zoo.manifest import published_recipe as _published_recipe

    shipped = next(iter(manifest.load_manifest().values()))
    recipe = {"model": "m", "teacher": shipped.model, "teacher_checkpoint": "/work/main/runs/teacher/deploy.safetensors"}
    out = _published_recipe(recipe, {"checkpoint_sha256": shipped.sha256})
    assert "teacher_checkpoint" not in out
    assert out["teacher_weights"] == {"model": shipped.model, "sha256": shipped.sha256,
                                      "manifest": f"{shipped.model}.{shipped.tag}"}
    # an unpublished teacher: named by sha256 (computed from the file when the run did not record it)
    f = tmp_path / "t.safetensors"
    f.write_bytes(b"not published")
    out = _published_recipe({"teacher": "x", "teacher_checkpoint": str(f)}, None)
    assert out["teacher_weights"]["manifest"] is None and len(out["teacher_weights"]["sha256"]) == 64
    assert _published_recipe({"teacher": None, "teacher_checkpoint": None}, None) == {"teacher": None}
    # the weights a run started from (--init-checkpoint): the same, from final.json's init record or the file
    out = _published_recipe({"teacher": None, "init_checkpoint": "$REPAN_RUNS/long/main/b/deploy.safetensors"}, None,
                            {"checkpoint_sha256": shipped.sha256})
    assert out == {"teacher": None, "init_weights": {"sha256": shipped.sha256, "manifest": f"{shipped.model}.{shipped.tag}"}}
    out = _published_recipe({"teacher": None, "init_checkpoint": str(f)}, None)
    assert "init_checkpoint" not in out and out["init_weights"]["sha256"] == sha256_file(f)
    # weights superseded since the run trained keep the name the run recorded for them
    gone = {"checkpoint_sha256": "0" * 64, "manifest": "repan_mobileone_s0_w050.fmnist_long_baseline"}
    out = _published_recipe({"teacher": None, "init_checkpoint": "x"}, None, gone)
    assert out["init_weights"] == {"sha256": "0" * 64, "manifest": "repan_mobileone_s0_w050.fmnist_long_baseline"}
    # where the data lay on the training machine is not part of the recipe either (the dataset name is)
    assert _published_recipe({"teacher": None, "dataset": "fashion_mnist", "data_dir": ".fmnist"}, None) == {
        "teacher": None, "dataset": "fashion_mnist"}
    # timm's own pretrained weights (--teacher-pretrained, not pinned by sha256): named by their hub source
    hub_teacher = {"checkpoint_sha256": None, "manifest": None, "pretrained_source": {
        "architecture": "resnet18", "tag": "a1_in1k", "hf_hub_id": "timm/resnet18.a1_in1k", "checkpoint_sha256": None}}
    out = _published_recipe({"teacher": "resnet18", "teacher_pretrained": True}, hub_teacher)
    assert out["teacher_weights"] == {"model": "resnet18", "sha256": None, "manifest": None, "source": {
        "architecture": "resnet18", "tag": "a1_in1k", "hf_hub_id": "timm/resnet18.a1_in1k"}}


def test_default_and_supersede_replace_old_weights(hub, run, tmp_path, capsys):
    """A better checkpoint replaces the old one: --default lists it first (the tag timm loads when
    none is given), --supersede takes the old entries out and deletes their bundled files; a
    supersede tag that is not listed is refused before anything is written."""
    checkpoint, metrics, deploy = run
    assert main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "old"]) == 0
    assert main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "older"]) == 0
    old_file = manifest.bundled_dir() / manifest.find_entry(MODEL, "old").filename
    checkpoint2, metrics2, deploy2 = make_deploy_run(tmp_path / "run2", seed=4)
    capsys.readouterr()

    before = {p: p.read_bytes() for p in manifest.manifest_dir().glob("*.json")}
    code = main([str(checkpoint2), "--metrics", str(metrics2), "--bundle", "--tag", "new", "--supersede", "old", "gone"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot supersede" in err and f"{MODEL}.gone" in err and "old, older" in err
    assert {p: p.read_bytes() for p in manifest.manifest_dir().glob("*.json")} == before  # nothing written
    assert not (manifest.bundled_dir() / f"{MODEL}-new.safetensors").exists()
    code = main([str(checkpoint2), "--metrics", str(metrics2), "--bundle", "--tag", "new", "--supersede", "new"])
    assert code == 2 and "names the tag being published" in capsys.readouterr().err

    code = main([str(checkpoint2), "--metrics", str(metrics2), "--bundle", "--tag", "new", "--default",
                 "--supersede", "old"])
    out = capsys.readouterr().out
    assert code == 0 and "listed first" in out and f"superseded {MODEL}.old" in out
    assert [e.tag for e in manifest.entries_for(MODEL)] == ["new", "older"]
    assert not old_file.exists() and (manifest.bundled_dir() / manifest.find_entry(MODEL, "older").filename).is_file()
    x = torch.randn(2, 1, 16, 16)
    model = timm.create_model(MODEL, pretrained=True, deploy=True)  # no tag: the default, now "new"
    assert torch.equal(model.eval()(x), deploy2(x)) and not torch.equal(deploy2(x), deploy(x))
    with pytest.raises(manifest.ManifestError, match=r"not in the weights manifest.*listed tags of .*: new, older"):
        retire(MODEL, ["old"])


def test_supersede_names_another_models_entry_as_model_dot_tag(hub, run, tmp_path, capsys):
    """Weights of another layout of the family (``MODEL.TAG``, timm's tag syntax) are replaced the same
    way; an unlisted one is refused before anything is written, naming that model's tags."""
    checkpoint, metrics, _ = run
    other = register_test_model("hubtest_tiny_other")
    ckpt_o, metrics_o, _ = make_deploy_run(tmp_path / "other", model=other, seed=7)
    assert main([str(ckpt_o), "--metrics", str(metrics_o), "--bundle", "--tag", "layout1"]) == 0
    old_file = manifest.bundled_dir() / manifest.find_entry(other, "layout1").filename
    capsys.readouterr()
    before = {p: p.read_bytes() for p in manifest.manifest_dir().glob("*.json")}
    code = main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "new", "--supersede", f"{other}.nope"])
    err = capsys.readouterr().err
    assert code == 2 and f"{other}.nope" in err and f"listed tags of {other}: layout1" in err
    assert {p: p.read_bytes() for p in manifest.manifest_dir().glob("*.json")} == before
    code = main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "new", "--supersede",
                 f"{other}.layout1"])
    assert code == 0 and f"superseded {other}.layout1" in capsys.readouterr().out
    assert manifest.entries_for(other) == [] and not old_file.exists()
    assert [e.tag for e in manifest.entries_for(MODEL)] == ["new"]
    code = main([str(checkpoint), "--metrics", str(metrics), "--bundle", "--tag", "new2", "--supersede", f"{MODEL}.new2"])
    assert code == 2 and "names the tag being published" in capsys.readouterr().err


def test_retire_keeps_a_bundled_file_another_entry_names(hub, run):
    checkpoint, metrics, _ = run
    a = bundle(checkpoint, metrics, tag="a")
    row = {**a.entry.as_dict(), "tag": "b"}  # a second tag over the same bundled file
    manifest.write_entry(manifest.WeightEntry.from_dict(row))
    removed = retire(MODEL, ["a"])
    assert [e.tag for e in removed] == ["a"] and (manifest.bundled_dir() / a.entry.filename).is_file()
    retire(MODEL, ["b"])
    assert not (manifest.bundled_dir() / a.entry.filename).exists() and manifest.entries_for(MODEL) == []


def test_a_final_json_with_extra_figures_keeps_them(hub, run):
    """ship.py hands publishing the run's final.json plus ``metrics`` holding the arm's seed
    statistics (mean ± std); the manifest entry keeps them beside the run's own figures, and a
    figure that contradicts the run's measured one is refused."""
    checkpoint, metrics, _ = run
    doc = dict(json.loads(metrics.read_text()), versions={"torch": torch.__version__})  # the trainer's final.json
    extra = {"test_top1": 87.25, "arm_test_mean": 86.9, "arm_test_std": 0.31, "arm_seeds": 3}
    metrics.write_text(json.dumps(dict(doc, metrics={"fashion_mnist": extra})))
    entry = bundle(checkpoint, metrics, tag="arm").entry
    assert entry.metrics["fashion_mnist"] == {"top1": 87.25, "test_top1": 87.25, "val_top1": 88.5,
                                              "arm_test_mean": 86.9, "arm_test_std": 0.31, "arm_seeds": 3}
    metrics.write_text(json.dumps(dict(doc, metrics={"fashion_mnist": dict(extra, test_top1=99.0)})))
    with pytest.raises(PublishError, match="test_top1.*99.0.*87.25"):
        bundle(checkpoint, metrics, tag="arm2")


def test_a_resumed_runs_recipe_changes_reach_the_manifest_recipe(hub, run):
    """A run resumed with other options (final.json ``resumed_with``) is published with them, the
    paths named by option only: the manifest recipe is otherwise that of the run's last part."""
    checkpoint, metrics, _ = run
    changes = [{"after_epoch": 3, "overrides": {"lr": 0.1, "data_dir": "/data/fmnist"}}]
    doc = dict(json.loads(metrics.read_text()), versions={"torch": torch.__version__}, resumed_with=changes)
    metrics.write_text(json.dumps(doc))
    entry = bundle(checkpoint, metrics, tag="resumed").entry
    assert entry.recipe["resumed_with"] == [{"after_epoch": 3, "overrides": {"lr": 0.1}, "changed_paths": ["data_dir"]}]


# -- refusals lose nothing --------------------------------------------------------------------------
def _state() -> dict:
    """Every manifest file's and bundled weight file's bytes."""
    files = list(manifest.manifest_dir().glob("*.json")) + list(manifest.bundled_dir().glob("*.safetensors"))
    return {p.name: p.read_bytes() for p in files}


def test_a_refused_or_failed_bundle_leaves_weights_and_manifest_as_they_were(hub, run, tmp_path, monkeypatch):
    """A bundle that is refused (the tag is listed in another family file; the manifest folder cannot
    be made) or fails while writing the manifest changes no weight file and no manifest file (was: the
    listed tag's weight file was overwritten before the refusal, and then failed its size check as
    'truncated'; a new tag left an orphan weight file)."""
    checkpoint, metrics, deploy = run
    bundle(checkpoint, metrics, tag="t", family="fam_a")
    checkpoint2, metrics2, _ = make_deploy_run(tmp_path / "run2", seed=4)
    before = _state()
    with pytest.raises(manifest.ManifestError, match="already listed in fam_a.json"):
        bundle(checkpoint2, metrics2, tag="t", family="fam_b")
    assert _state() == before
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError):
        bundle(checkpoint2, metrics2, tag="new", manifest_dir=tmp_path / "a_file" / "manifest")
    assert _state() == before

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real_write_entry = manifest.write_entry
    monkeypatch.setattr(manifest, "write_entry", disk_full)
    for tag in ("t", "new"):  # re-bundling a listed tag, and a new one
        with pytest.raises(OSError, match="No space left"):
            bundle(checkpoint2, metrics2, tag=tag, family="fam_a")
        assert _state() == before, tag
    monkeypatch.setattr(manifest, "write_entry", real_write_entry)  # (undo() would also drop the hub fixture's env)
    x = torch.randn(2, 1, 16, 16)
    loaded = timm.create_model(MODEL, pretrained=True, deploy=True, pretrained_cfg_overlay=dict(tag="t"))
    assert torch.equal(loaded.eval()(x), deploy.eval()(x))  # the listed weights still load and verify


def test_retire_is_all_or_nothing(hub, run):
    checkpoint, metrics, _ = run
    a = bundle(checkpoint, metrics, tag="a")
    before = _state()
    with pytest.raises(manifest.ManifestError, match=rf"{MODEL}\.typo is not in the weights manifest"):
        retire(MODEL, ["a", "typo"])
    assert _state() == before and (manifest.bundled_dir() / a.entry.filename).is_file()


def test_a_dotted_tag_is_superseded_and_retired_by_its_tag(hub, run, tmp_path):
    """``fmnist.r5`` is a valid tag (manifest.is_valid_tag); with no model of that name, ``fmnist.r5``
    in supersede / retire is that tag of the model (was: read as model 'fmnist', tag 'r5': refused)."""
    checkpoint, metrics, _ = run
    bundle(checkpoint, metrics, tag="fmnist.r5")
    result = bundle(checkpoint, metrics, tag="fmnist.r6", supersede=["fmnist.r5"])
    assert [e.tag for e in result.superseded] == ["fmnist.r5"]
    assert [e.tag for e in retire(MODEL, ["fmnist.r6"])] == ["fmnist.r6"] and manifest.entries_for(MODEL) == []


def test_a_publish_the_manifest_would_refuse_uploads_nothing(hub, run):
    """The entry is checked before the upload: a tag listed in another family file is refused with
    nothing pushed to the Hub (was: uploaded, then refused by the manifest write)."""
    checkpoint, metrics, _ = run
    publish(checkpoint, metrics, REPO, tag="t", family="fam_a")
    commit = hub.head(REPO)
    with pytest.raises(manifest.ManifestError, match="already listed in fam_a.json"):
        publish(checkpoint, metrics, "org/other-repo", tag="t", family="fam_b")
    assert "org/other-repo" not in hub.repos and hub.head(REPO) == commit


@pytest.mark.parametrize("endpoint, status, message, names", [
    ("create", 401, "Invalid credentials in Authorization header", ["401", "token", "login"]),
    ("commit", 403, "You don't have the rights to create a commit in this repo", ["403", "write access", REPO]),
    ("commit", 500, "Internal Error", ["500", "publish again"]),
])
def test_an_http_error_of_the_hub_is_one_line_naming_the_fix(hub, run, capsys, endpoint, status, message, names):
    """The Hub answering with an error (not logged in, no rights to the repo, the Hub failing) is a
    refusal naming the status and the fix, with the manifest unchanged (was: huggingface_hub's
    HfHubHTTPError as a traceback, exit 1). Publishing again once fixed works."""
    checkpoint, metrics, _ = run
    hub.refuse(endpoint, status, message)
    code = main([str(checkpoint), "--metrics", str(metrics), "--repo", REPO, "--tag", "fmnist"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("repan-publish: error:") and len(err.strip().splitlines()) == 1, err
    assert all(n in err for n in names) and "manifest is unchanged" in err, err
    assert manifest.find_entry(MODEL, "fmnist") is None
    with pytest.raises(PublishError, match=str(status)):
        publish(checkpoint, metrics, REPO, tag="fmnist")
    hub.refuse(endpoint, None)
    assert main([str(checkpoint), "--metrics", str(metrics), "--repo", REPO, "--tag", "fmnist"]) == 0
    assert manifest.find_entry(MODEL, "fmnist").revision == hub.head(REPO)

"""Faults that must be explained and lose nothing (issue 16, points 3, 4, 7, 9, 11, 12): a full
disk while checkpointing, a garbled pointer, stale temp files, offline hf-hub:, dtype-checked
loads, file modes, a refused --resume that changes nothing, the real problem named on a foreign
checkpoint, and byte-identical files from identical saves."""
from __future__ import annotations

import importlib.util
import copy
import json
import os
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import tinyrep_models  # noqa: F401  (registers tinyrep_test with timm)
from fake_hub import go_offline, hub  # noqa: F401  (hub: fixture)
from helpers import hide_modules
from repan_zoo.runtime import checkpointing
from repan_zoo.runtime.checkpointing import Checkpointer
from repan_zoo.checkpoint import load_into, read_checkpoint, save_checkpoint, sha256_file
from repan_zoo.data import FASHION_MNIST_DIR
from repan_zoo.errors import CheckpointError, OfflineError

HAVE_FMNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
SMALL = ["--model", "tinyrep_test", "--train-subset", "128", "--val-size", "64", "--test-subset", "64",
         "--batch-size", "32", "--eval-batch-size", "64", "--calib-batches", "1", "--threads", "1",
         "--no-progress", "--no-plot", "--method", "baseline", "--cycles", "1", "--epochs", "1", "--seed", "3"]


def tiny(**kw):
    torch.manual_seed(0)
    return timm.create_model("tinyrep_test", **kw).eval()


def progress_state(epoch: int) -> dict:
    return {"progress": {"cycle_index": 0, "cycle": 1, "epoch": epoch, "epochs": 3}, "x": torch.ones(2)}


# -- point 3: faults handled and explained ---------------------------------------------------------
@pytest.mark.parametrize("command", ["repan-train", "repan-detect"])
def test_disk_full_while_checkpointing_names_the_last_good_checkpoint(tmp_path, monkeypatch, command):
    cp = Checkpointer(tmp_path / "run", resume_command=command)
    model = tiny()
    cp.save(model, progress_state(1), tag="ep0001", architecture="tinyrep_test")

    def full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        cp.save(model, progress_state(2), tag="ep0002", architecture="tinyrep_test")
    msg = str(info.value)
    assert "ep0001" in msg and f"`{command} --out {tmp_path / 'run'} --resume`" in msg and "ep0002" in msg
    assert cp.latest_dir().name == "ep0001" and not (cp.root / "ep0002").exists()
    assert not list(cp.root.rglob("*.tmp"))


@pytest.mark.parametrize("garbage", ["", "{not json", '{"dir": "../../etc"}', '{"dir": "ep0009"}', "[]"])
def test_garbled_pointer_falls_back_to_the_newest_complete_epoch(tmp_path, garbage):
    cp = Checkpointer(tmp_path / "run", keep=3)
    model = tiny()
    for epoch in (1, 2):
        cp.save(model, progress_state(epoch), tag=f"ep000{epoch}", architecture="tinyrep_test")
    (cp.root / "ep0003").mkdir()  # a folder a killed save left without its files
    (cp.root / "ep0003" / "model.safetensors").write_bytes(b"partial")
    cp.pointer.write_text(garbage)
    with pytest.warns(UserWarning, match="ep0002"):
        loaded = cp.load()
    assert loaded.directory.name == "ep0002" and loaded.state["progress"]["epoch"] == 2


@pytest.mark.parametrize("garbage", ["", "{not json", "[]", '{"dir": "ep0001", "progress": [1]}'])
def test_progress_reads_the_pointer_and_is_empty_when_there_is_none(tmp_path, garbage):
    cp = Checkpointer(tmp_path / "run")
    assert cp.progress() == {}
    cp.save(tiny(), progress_state(2), tag="ep0002", architecture="tinyrep_test")
    assert cp.progress() == progress_state(2)["progress"]
    cp.pointer.write_text(garbage)
    assert cp.progress() == {}


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt", "both"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_epoch(tmp_path, damaged):
    """The files of the epoch latest.json names are unreadable (truncated or damaged on disk after
    they were written): --resume continues from the newest older epoch that reads, and says which
    it skipped and why (was: 'start a new run', with ep0001 intact beside it)."""
    cp = Checkpointer(tmp_path / "run", keep=2)
    model = tiny()
    for epoch in (1, 2):
        cp.save(model, progress_state(epoch), tag=f"ep000{epoch}", architecture="tinyrep_test")
    for name in (["model.safetensors", "state.pt"] if damaged == "both" else [damaged]):
        path = cp.root / "ep0002" / name
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"(?s)ep0001.*ep0002"):
        loaded = cp.load()
    assert loaded.directory.name == "ep0001" and loaded.state["progress"]["epoch"] == 1
    # nothing older reads either: the error names each folder and what is wrong with it
    path = cp.root / "ep0001" / "state.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"(?s)ep0002.*ep0001.*new --out"):
        cp.load()


def test_a_failed_save_over_a_damaged_epoch_never_mixes_two_epochs_files(tmp_path, monkeypatch):
    """Resumed from ep0001 because ep0002's files were damaged, the run saves ep0002 again; a write
    that fails there leaves no folder with one new and one old file, and the error names the
    checkpoint that reads, not the damaged one the pointer names (was: ep0002 rewritten file by
    file, the new model beside the damaged state.pt, called 'the last good checkpoint')."""
    cp = Checkpointer(tmp_path / "run", keep=2)
    model = tiny()
    for epoch in (1, 2):
        cp.save(model, progress_state(epoch), tag=f"ep000{epoch}", architecture="tinyrep_test")
    damaged = cp.root / "ep0002" / "state.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ep0002"):
        assert cp.load().directory.name == "ep0001"
    before = {p.name: p.read_bytes() for p in (cp.root / "ep0002").iterdir()}

    def full_disk(obj, path):
        raise RuntimeError("file write failed")

    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        cp.save(tiny(width=4), progress_state(2), tag="ep0002", architecture="tinyrep_test")
    assert {p.name: p.read_bytes() for p in (cp.root / "ep0002").iterdir()} == before  # untouched, not mixed
    assert "the last checkpoint that reads is" in str(info.value) and "ep0001" in str(info.value)
    assert sorted(p.name for p in cp.root.iterdir()) == ["ep0001", "ep0002", "latest.json"]  # no temp folder left
    monkeypatch.undo()
    cp.save(model, progress_state(2), tag="ep0002", architecture="tinyrep_test")  # the retry replaces it whole
    assert cp.load().state["progress"]["epoch"] == 2


def test_a_file_that_is_not_safetensors_is_named_without_advising_its_deletion(tmp_path):
    """The user's own file (a JSON given as --checkpoint, say) is never theirs to delete on our word
    (was: 'Delete it and download / save it again')."""
    from repan_zoo.checkpoint import read_checkpoint

    path = tmp_path / "m.json"
    path.write_text('{"lr": 0.1}')
    with pytest.raises(CheckpointError, match=r"m\.json is not a readable safetensors file.*save_checkpoint") as info:
        read_checkpoint(path)
    assert "Delete" not in str(info.value) and path.read_text() == '{"lr": 0.1}'


def test_a_folder_or_a_file_in_the_way_of_a_written_file_is_named_before_any_work(tmp_path, monkeypatch):
    """A path that is a folder, or lies under a file, is named (IsADirectoryError /
    NotADirectoryError) before the work for the file starts: export_torchscript does not fuse and
    trace first (was: the whole export, then 'Is a directory' naming the temp file)."""
    from repan_zoo import export as export_mod
    from repan_zoo.fileio import atomic_write

    (tmp_path / "plain.txt").write_text("x")
    for target, error in [(tmp_path, IsADirectoryError), (tmp_path / "plain.txt" / "m.pt", NotADirectoryError)]:
        with pytest.raises(error, match=str(target if error is IsADirectoryError else tmp_path / "plain.txt")):
            atomic_write(target, lambda tmp: pytest.fail("wrote before the check"))
        monkeypatch.setattr(export_mod, "_Prepared", lambda *a, **k: pytest.fail("fused before the check"))
        with pytest.raises(error):
            export_mod.export_torchscript(tiny(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]  # nothing left behind


def test_garbled_pointer_without_any_complete_epoch_says_what_to_do(tmp_path):
    cp = Checkpointer(tmp_path / "run")
    cp.root.mkdir(parents=True)
    cp.pointer.write_text("{")
    with pytest.raises(CheckpointError, match="new --out"):
        cp.load()


def test_remove_stale_temps_removes_only_atomic_write_leftovers(tmp_path):
    from repan_zoo.checkpoint import remove_stale_temps

    (tmp_path / "checkpoints" / "ep0001").mkdir(parents=True)
    stale = [tmp_path / ".final.json.abc123.tmp", tmp_path / "checkpoints" / "ep0001" / ".state.pt.x9.tmp"]
    keep = [tmp_path / "final.json", tmp_path / "notes.tmp"]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_resume_removes_stale_temp_files_and_refuses_another_model_without_writing(tmp_path):
    from repan_zoo.train_cli import main

    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out)]) == 0
    stale = out / "checkpoints" / ".latest.json.k1ll3d.tmp"
    stale.write_text("{")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # point 9: a refused --resume changes nothing
    assert main([*SMALL, "--out", str(out), "--resume", "--model", "repan_repvgg_a0_w025"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main([*SMALL, "--out", str(out), "--resume"]) == 0  # the intact run still resumes
    assert not stale.exists()


@pytest.mark.parametrize("content", ["null", "[1, 2]", '"a recipe"'])
def test_resume_with_a_recipe_json_that_is_not_an_object_is_refused_by_name(tmp_path, capsys, content):
    """(was: AttributeError: 'NoneType' object has no attribute 'items', a traceback)."""
    from repan_zoo.train_cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(content)
    assert main([*SMALL, "--out", str(out), "--resume"]) == 2
    assert "recipe.json is not a recipe (a JSON object of options)" in capsys.readouterr().err


def test_resume_position_continues_the_plan_or_names_the_options_that_changed_it():
    from repan_zoo.annealing.cycles import CyclePlan, resume_position
    from repan_zoo.errors import RecipeError

    plan = [CyclePlan(1, False, 25)] + [CyclePlan(r, True, 25) for r in (2, 3, 4)]
    at = lambda ci, epoch, epochs=25: {"cycle_index": ci, "cycle": ci + 1, "epoch": epoch, "epochs": epochs}  # noqa: E731
    assert resume_position(plan, at(1, 7)) == (1, 7)
    assert resume_position(plan, at(1, 25)) == (2, 0)  # a finished cycle: the next starts afresh
    assert resume_position(plan, at(3, 25)) == (4, 0)  # the last one: nothing left to train
    assert resume_position(plan, {"cycle": 2, "epoch": 3}) == (1, 3)  # detection's older progress records
    for progress, new_plan in [(at(3, 10), plan[:2]),  # --cycles 2 after cycle 4 started
                               (at(1, 10), [CyclePlan(1, False, 100)]),  # --method baseline
                               (at(1, 10), [CyclePlan(r, True, 30) for r in (1, 2, 3, 4)]),  # --epochs 30
                               (at(0, 10, 100), plan)]:  # a baseline run resumed as RepAn
        with pytest.raises(RecipeError, match="--cycles, --epochs and --first-cycle; repan-detect"):
            resume_position(new_plan, progress)
    # a change that keeps every cycle's length but not its Expand (--first-cycle, or baseline ↔ repan --cycles 1)
    expanding = [CyclePlan(r, True, 25) for r in (1, 2, 3, 4)]
    assert resume_position(expanding, {**at(0, 10), "expand": True}) == (0, 10)
    with pytest.raises(RecipeError, match=r"cycle 1 \(with Expand\).*25 \(no Expand\)"):
        resume_position(plan, {**at(0, 10), "expand": True})
    with pytest.raises(RecipeError, match="without Expand"):
        resume_position([CyclePlan(1, True, 100)], {**at(0, 10, 100), "expand": False})
    assert resume_position(plan, at(0, 10)) == (0, 10)  # checkpoints before "expand" was recorded


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_resume_with_another_cycle_plan_is_refused_without_writing(tmp_path):
    from repan_zoo.train_cli import main

    out = tmp_path / "run"
    recipe = [*SMALL, "--out", str(out), "--method", "repan", "--cycles", "2"]
    assert main(recipe) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for change in (["--cycles", "1"], ["--epochs", "2"], ["--method", "baseline"]):
        assert main([*recipe, "--resume", *change]) == 2, change
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_offline_hf_hub_name_raises_the_typed_offline_error(hub, monkeypatch):
    from repan_zoo.cli import create_model

    go_offline(monkeypatch)
    with pytest.raises(OfflineError, match="not in the local cache"):
        create_model("hf-hub:org/not-cached")


# -- point 4: loads check dtypes -----------------------------------------------------------------
def test_load_refuses_a_tensor_of_another_dtype_by_key(tmp_path):
    model = tiny(deploy=True)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = "head.weight"
    sd[key] = (sd[key] * 100).to(torch.int32)
    save_file(sd, str(tmp_path / "int.safetensors"), metadata={"form": "deploy", "architecture": "tinyrep_test"})
    state, meta = read_checkpoint(tmp_path / "int.safetensors")
    fresh = tiny(deploy=True)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"head\.weight: checkpoint torch\.int32 vs model torch\.float32"):
        load_into(fresh, state, meta)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_float_to_float_cast_only_when_asked():
    model = tiny(deploy=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="dtype mismatch"):
        load_into(tiny(deploy=True), half, {"form": "deploy"})
    fresh = load_into(tiny(deploy=True), half, {"form": "deploy"}, cast_floats=True)
    assert fresh.head.weight.dtype == torch.float32


# -- point 7: files follow the umask -------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_safetensors_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


# -- point 11: the real problem named --------------------------------------------------------------
def test_checkpoint_of_another_architecture_is_named(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "tiny.safetensors", architecture="tinyrep_test")
    other = timm.create_model("repan_repvgg_a0_w025", num_classes=10, in_chans=1)
    with pytest.raises(CheckpointError, match="is a checkpoint of tinyrep_test, and the model is repan_repvgg_a0_w025"):
        load_into(other, *read_checkpoint(path), what=str(path))


@pytest.mark.parametrize("field", ["branches", "lambdas"])
def test_metadata_that_is_not_json_is_a_checkpoint_error(tmp_path, field):
    path = save_checkpoint(tiny(), tmp_path / "t.safetensors", architecture="tinyrep_test")
    state, meta = read_checkpoint(path)
    meta[field] = "{not json"
    with pytest.raises(CheckpointError, match=f"metadata field '{field}' is not JSON"):
        load_into(tiny(), state, meta)


# -- point 12: deterministic files -------------------------------------------------------------------
def test_identical_saves_give_identical_bytes(tmp_path):
    model = tiny()
    meta = {f"k{i}": str(i) for i in range(12)}
    paths = [save_checkpoint(model, tmp_path / f"{i}.safetensors", architecture="tinyrep_test", metadata=meta)
             for i in range(4)]
    assert len({sha256_file(p) for p in paths}) == 1
    state, read_meta = read_checkpoint(paths[0])
    assert read_meta["k7"] == "7" and torch.equal(state["head.weight"], model.head.weight)


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_final_json_is_valid_json_and_its_sha256_reproducible(tmp_path):
    from repan_zoo.train_cli import main

    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert main([*SMALL, "--out", str(out), "--deterministic"]) == 0
    finals = [json.loads((out / "final.json").read_text(), parse_constant=pytest.fail) for out in runs]
    assert finals[0]["checkpoint"]["sha256"] == finals[1]["checkpoint"]["sha256"]
    assert sha256_file(runs[0] / "deploy.safetensors") == finals[0]["checkpoint"]["sha256"]


# -- point 5: conversions reached through timm are checked -----------------------------------------
def trained_tiny():
    from helpers import randomize

    return randomize(timm.create_model("tinyrep_test"), seed=4).eval()


@pytest.mark.parametrize("mutate,words", [
    (lambda m: setattr(m.stage[0].trunk.conv, "padding_mode", "reflect"), "padding_mode='reflect'"),
    (lambda m: m.stage[0].trunk.conv.__dict__.update(dilation=(2, 2), padding=(2, 2)), "dilation=(2, 2)"),
    (lambda m: setattr(m.stage[0].trunk, "bn", torch.nn.GroupNorm(2, 8)), "GroupNorm"),
], ids=["reflect-padding", "dilation", "groupnorm"])
def test_block_fusion_refuses_what_it_cannot_fuse_through_timm(mutate, words):
    from timm.utils import reparameterize_model

    from repan_zoo import reparameterize
    from repan_zoo.errors import UnfusableBranchError

    model = trained_tiny()
    mutate(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for convert in (reparameterize_model, reparameterize):
        with pytest.raises(UnfusableBranchError, match=re.escape(words)):
            convert(model)
    assert model.state_dict().keys() == before.keys()  # nothing fused, nothing lost


@pytest.mark.parametrize("batch, words", [
    (torch.full((4, 1, 28, 28), float("nan")), "NaN or inf"),
    (torch.randn(4, 3, 28, 28), "cannot run on the batches"),
    (torch.randn(1, 28, 28), r"batch 1 has shape \(1, 28, 28\).*\(N, C, H, W\).*unsqueeze"),
    ({"image": torch.randn(4, 1, 28, 28)}, r"batch 1 is a dict with keys \['image'\].*pixel_values"),
    ("images/", r"batch 1 is a str"),
    (torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), r"batch 1 holds torch.uint8.*float"),
], ids=["nan-batch", "wrong-channels", "one-image", "dict-of-other-keys", "not-a-tensor", "uint8-pixels"])
def test_calibrate_bn_refuses_and_leaves_the_model_as_it_was(batch, words):
    """Each kind of batch the model cannot take is a CalibrationError naming the batch, what it is
    and the fix (was: a bare AttributeError / ValueError from inside the forward for some)."""
    from repan_zoo import calibrate_bn, rep_blocks, unfold
    from repan_zoo.errors import CalibrationError

    model = unfold(trained_tiny(), ["conv_1x1"], generator=torch.Generator().manual_seed(0))
    good = torch.randn(4, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = [b.fresh for _, blk in rep_blocks(model) for b in blk.extras]
    with pytest.raises(CalibrationError, match=words):
        calibrate_bn(model, [good, batch])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed calibration changed the model"
    assert fresh == [b.fresh for _, blk in rep_blocks(model) for b in blk.extras]
    calibrate_bn(model, [good])  # and it still calibrates
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_calibrate_bn_takes_the_batches_loaders_yield():
    """A tensor, an ``(images, labels)`` pair (a DataLoader) and a Hugging Face style dict
    (``pixel_values``, as datasets / transformers image processors give) all calibrate alike."""
    from repan_zoo import calibrate_bn, unfold

    model = unfold(trained_tiny(), ["conv_1x1"], generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ref = calibrate_bn(copy.deepcopy(model), [x]).state_dict()
    for batch in ((x, torch.zeros(8, dtype=torch.long)), [x, torch.zeros(8)], {"pixel_values": x, "labels": None}):
        got = calibrate_bn(copy.deepcopy(model), [batch]).state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), type(batch).__name__


# -- points 6 and 10: manifest files ----------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def manifest_copy(tmp_path, monkeypatch, edit=None, raw=None) -> Path:
    from repan_zoo import manifest

    folder = tmp_path / "manifest"
    folder.mkdir()
    for f in (ROOT / "weights_manifest").glob("*.json"):
        (folder / f.name).write_text(f.read_text())
    doc = json.loads((folder / "repvgg.json").read_text())
    if edit is not None:
        edit(doc["entries"])
    (folder / "repvgg.json").write_text(raw if raw is not None else json.dumps(doc))
    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(folder))
    manifest.reload_manifest()
    return folder


def _first_repvgg_name() -> str:
    """``model.tag`` of the first entry of the shipped ``repvgg.json`` (the one the edits below change)."""
    first = json.loads((ROOT / "weights_manifest" / "repvgg.json").read_text())["entries"][0]
    return f"{first['model']}.{first['tag']}"


def _set(field, value):
    return lambda entries: entries[0].__setitem__(field, value)


BROKEN = {
    "branch-as-revision": (_set("revision", "main"), None),
    "upper-case-sha256": (lambda e: e[0].__setitem__("sha256", e[0]["sha256"].upper()), None),
    "path-traversal": (_set("filename", "../../etc/passwd.safetensors"), None),
    "pt-file": (_set("filename", "weights.pt"), None),
    "duplicate": (lambda e: e.append(dict(e[0])), None),
    "invalid-json": (None, "{not json"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_manifest_file_warns_and_only_its_weights_fail(kind, tmp_path, monkeypatch):
    from repan_zoo import manifest
    from repan_zoo.errors import ManifestError

    edit, raw = BROKEN[kind]
    manifest_copy(tmp_path, monkeypatch, edit, raw)
    with pytest.warns(UserWarning, match="repvgg.json"):
        entries = manifest.load_manifest()
    assert entries and all(m.startswith(("repan_mobileone", "repan_resnet")) for m, _ in entries)
    with pytest.raises(ManifestError) as info:
        manifest.find_entry(*_first_repvgg_name().split(".", 1))
    with pytest.raises(ManifestError, match=str(info.value)[:40].replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace(".", r"\.")):
        manifest.load_manifest(strict=True)
    manifest.reload_manifest()


def test_import_survives_a_broken_manifest(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = manifest_copy(tmp_path, monkeypatch, raw="{not json")
    code = ("import timm, repan_zoo; m = timm.create_model('repan_repvgg_a0_w025'); "
            "from repan_zoo.errors import ManifestError\n"
            "try:\n    timm.create_model('repan_repvgg_a1_w025', pretrained=True)\n"
            "except ManifestError as e:\n    print('refused:', e)\n")
    env = dict(os.environ, REPAN_ZOO_MANIFEST_DIR=str(folder), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "repvgg.json" in proc.stderr and "refused:" in proc.stdout and "not valid JSON" in proc.stdout


def _rgb(entries):
    entries[0].update(input_size=[3, 28, 28], mean=[0.5] * 3, std=[0.25] * 3)


@pytest.mark.parametrize("field,edit", [("num_classes", _set("num_classes", 7)), ("input_size", _rgb)])
def test_manifest_facts_are_checked_against_the_file(field, edit, tmp_path, monkeypatch):
    from repan_zoo.errors import ManifestError

    manifest_copy(tmp_path, monkeypatch, edit)
    name = _first_repvgg_name()
    with pytest.raises(ManifestError, match=f"manifest entry {re.escape(name)}: {field}"):
        timm.create_model(name, pretrained=True)
    from repan_zoo import manifest

    manifest.reload_manifest()


# -- point 8: every published entry certifies its own bytes --------------------------------------------
def test_publish_measures_a_certificate_for_a_checkpoint_without_one(hub, tmp_path):
    from fake_hub import make_deploy_run, register_test_model
    from repan_zoo.hub.publish import bundle

    model = register_test_model()
    _, metrics, deploy = make_deploy_run(tmp_path / "run", model=model, seed=2)
    del deploy.repan_exactness
    bare = save_checkpoint(deploy, tmp_path / "bare.safetensors", architecture=model)  # no certificate inside
    assert "exactness" not in read_checkpoint(bare)[1]
    result = bundle(bare, metrics, tag="measured")
    cert = result.entry.exactness
    assert cert["probe"].startswith("measured by repan-publish") and cert["model_rel_error"] <= cert["tolerance"]


# -- point 2: only valid JSON is written ---------------------------------------------------------------
def test_non_finite_numbers_are_written_as_null(tmp_path):
    from repan_zoo.runtime.report import write_json

    doc = {"val_loss": float("nan"), "rows": [{"lr": float("inf")}, 1.5], "top1": (float("-inf"), 2)}
    path = write_json(tmp_path / "final.json", doc)
    back = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert back == {"val_loss": None, "rows": [{"lr": None}, 1.5], "top1": [None, 2]}
    model = tiny()
    model.repan_exactness = {"model_rel_error": float("nan"), "tolerance": 1e-5}
    meta = read_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors", metadata={"m": {"x": float("inf")}}))[1]
    strict = dict(parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert json.loads(meta["exactness"], **strict)["model_rel_error"] is None
    assert json.loads(meta["m"], **strict) == {"x": None}


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_disk_full_while_writing_the_deploy_file_is_explained_and_resumable(tmp_path, monkeypatch, capsys):
    import errno

    from repan_zoo.annealing import trainer
    from repan_zoo.train_cli import main

    out = tmp_path / "run"

    def full(model, path, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", full)
    assert main([*SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0] and "Traceback" not in err[0]
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert main([*SMALL, "--out", str(out), "--resume"]) == 0
    assert (out / "deploy.safetensors").is_file() and json.loads((out / "final.json").read_text())["epochs_trained"] == 1


# -- an optional extra that is not installed ----------------------------------------------------------
@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime"])
def test_onnx_export_without_the_export_extra_names_it_and_writes_nothing(tmp_path, monkeypatch, hidden):
    from repan_zoo.errors import MissingExtraError
    from repan_zoo.export import export_onnx

    # the first of the two that cannot be imported is named (where the extra is absent: onnx)
    named = next(m for m in ("onnx", "onnxruntime") if m == hidden or importlib.util.find_spec(m) is None)
    hide_modules(monkeypatch, hidden)
    out = tmp_path / "m.onnx"
    with pytest.raises(MissingExtraError, match=rf"needs {named}\b.*pip install 'repan-zoo\[export\]'"):
        export_onnx(tiny(), out)
    assert not out.exists()


def test_coco_evaluation_and_data_without_the_detection_extra_name_it(tmp_path, monkeypatch):
    from repan_zoo.detection.coco import CocoDetectionSet
    from repan_zoo.detection.evaluate import coco_map
    from repan_zoo.errors import CocoFormatError, DatasetNotFoundError, MissingExtraError

    hide_modules(monkeypatch, "pycocotools")
    with pytest.raises(MissingExtraError, match=r"needs pycocotools.*pip install 'repan-zoo\[detection\]'"):
        coco_map(object(), [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    # the files are checked first (that needs no extra): what is wrong with them is named before the install
    with pytest.raises(DatasetNotFoundError, match="instances.json"):
        CocoDetectionSet(tmp_path / "images", tmp_path / "instances.json")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(CocoFormatError, match=r"annotations\[0\]\.bbox"):
        CocoDetectionSet(tmp_path / "images", tmp_path / "instances.json")
    coco["annotations"][0]["bbox"] = [0, 0, 4, 4]
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetNotFoundError, match="a.png"):
        CocoDetectionSet(tmp_path / "images", tmp_path / "instances.json")
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(MissingExtraError, match=r"needs pycocotools.*pip install 'repan-zoo\[detection\]'"):
        CocoDetectionSet(tmp_path / "images", tmp_path / "instances.json")


def test_detector_onnx_export_without_the_export_extra_names_it_before_any_work(tmp_path, monkeypatch):
    from repan_zoo.detection import export as det_export
    from repan_zoo.errors import MissingExtraError

    hide_modules(monkeypatch, "onnx")
    monkeypatch.setattr(det_export, "_deploy_copy", lambda detector: pytest.fail("fused before the check"))
    with pytest.raises(MissingExtraError, match=r"needs onnx\b.*pip install 'repan-zoo\[export\]'"):
        det_export.export_detector(torch.nn.Identity(), tmp_path / "d.onnx", fmt="onnx", images=[torch.zeros(1, 8, 8)])
    assert not (tmp_path / "d.onnx").exists()

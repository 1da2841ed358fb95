"""train_scripts/gpu_long.py: what a GPU call leaves in $OUT and how it is put in place here (no
GPU needed for these parts)."""
import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLAN = "long/main"


def load():
    spec = importlib.util.spec_from_file_location("gpu_long", ROOT / "train_scripts" / "gpu_long.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_run(work, results, name, size=1200):
    d = work / PLAN / name
    (d / "checkpoints" / "ep0100").mkdir(parents=True)
    (d / "deploy.safetensors").write_bytes(b"d" * size)
    (d / "checkpoints" / "ep0100" / "model.safetensors").write_bytes(b"x" * 5000)  # never packed
    (results / PLAN / name).mkdir(parents=True)
    (results / PLAN / name / "final.json").write_text(json.dumps({"val_top1": 90.0}))


def stopped_run(work, name, epoch, size=1000):
    d = work / PLAN / name
    ck = d / "checkpoints" / f"ep{epoch:04d}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"m" * size)
    (ck / "state.pt").write_bytes(b"s" * size)
    (d / "checkpoints" / "latest.json").write_text(json.dumps({"dir": ck.name, "progress": {"global_epoch": epoch}}))
    for n in ("recipe.json", "metrics.json", "log.txt"):
        (d / n).write_text("[]" if n == "metrics.json" else n)
    (d / ".repan.lock").write_text("123")  # never packed


def members(out, names):
    found = []
    for n in names:
        with tarfile.open(out / n) as tar:
            found += tar.getnames()
    return sorted(found)


def test_finished_runs_send_their_deploy_weights_and_stopped_runs_their_last_checkpoint(tmp_path):
    g = load()
    work, results, out = tmp_path / "runs", tmp_path / "results", tmp_path / "out"
    out.mkdir()
    finished_run(work, results, "a")
    stopped_run(work, "b", 37)
    placed = g.pack_runs(work, results, PLAN, ["a", "b", "c"], out)
    assert placed == {"a": "runs-0.tgz", "b": "runs-0.tgz", "c": "nothing to pack"}
    assert members(out, ["runs-0.tgz"]) == sorted([
        f"{PLAN}/a/deploy.safetensors", f"{PLAN}/b/checkpoints/latest.json",
        f"{PLAN}/b/checkpoints/ep0037/model.safetensors", f"{PLAN}/b/checkpoints/ep0037/state.pt",
        f"{PLAN}/b/recipe.json", f"{PLAN}/b/metrics.json", f"{PLAN}/b/log.txt"])


def test_runs_are_packed_in_priority_order_within_the_size_limits_and_never_split(tmp_path):
    g = load()
    work, results, out = tmp_path / "runs", tmp_path / "results", tmp_path / "out"
    out.mkdir()
    for i in range(5):
        stopped_run(work, f"r{i}", 10 + i, size=1000)  # about 2,000 bytes each
    placed = g.pack_runs(work, results, PLAN, [f"r{i}" for i in range(5)], out, chunk=4500, total=7000, max_chunks=2)
    assert placed == {"r0": "runs-0.tgz", "r1": "runs-0.tgz", "r2": "runs-1.tgz",
                      "r3": "left: size limit", "r4": "left: size limit"}  # r3 would pass the total
    for name in ("r0", "r1", "r2"):
        assert f"{PLAN}/{name}/checkpoints/ep{10 + int(name[1]):04d}/state.pt" in members(out, ["runs-0.tgz", "runs-1.tgz"])
    assert not (out / "runs-2.tgz").exists()


def test_unpack_puts_results_and_runs_in_place_and_keeps_a_local_run_that_got_further(tmp_path):
    g = load()
    work, results, out = tmp_path / "gpu" / "runs", tmp_path / "gpu" / "results", tmp_path / "out"
    out.mkdir()
    finished_run(work, results, "done_run")
    stopped_run(work, "behind_here", 60)
    stopped_run(work, "ahead_here", 20)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        tar.add(results / PLAN / "done_run", arcname=f"results/{PLAN}/done_run")
    g.pack_runs(work, results, PLAN, ["done_run", "behind_here", "ahead_here"], out)
    here_results, here_runs = tmp_path / "here" / "results", tmp_path / "here" / "runs"
    stopped_run(here_runs, "behind_here", 6)
    stopped_run(here_runs, "ahead_here", 40)
    log = g.unpack(out, results=here_results, runs_root=here_runs)
    assert json.loads((here_results / PLAN / "done_run" / "final.json").read_text()) == {"val_top1": 90.0}
    assert (here_runs / PLAN / "done_run" / "deploy.safetensors").read_bytes() == b"d" * 1200
    assert g._epochs_done(here_runs / PLAN / "behind_here") == 60  # the GPU's run replaced the local one
    assert g._epochs_done(here_runs / PLAN / "behind_here.before-gpu") == 6
    assert g._epochs_done(here_runs / PLAN / "ahead_here") == 40  # the local run got further: kept
    assert not (here_runs / PLAN / "behind_here" / ".repan.lock").exists()
    assert any("kept local" in line for line in log)
    # unpacking again changes nothing and keeps the results that are there
    again = g.unpack(out, results=here_results, runs_root=here_runs)
    assert any(line.startswith("kept existing results") for line in again)
    assert g._epochs_done(here_runs / PLAN / "behind_here") == 60


def test_unpack_of_a_call_where_no_run_finished(tmp_path):
    g = load()
    work, results, out = tmp_path / "gpu" / "runs", tmp_path / "gpu" / "results", tmp_path / "out"
    out.mkdir()
    stopped_run(work, "r", 12)
    with tarfile.open(out / "results.tgz", "w:gz"):
        pass  # what a call leaves when every run stopped at the budget
    g.pack_runs(work, results, PLAN, ["r"], out)
    (out / "summary.json").write_text(json.dumps({"plan": PLAN, "finished_at": "2026-11-30T20:40:00Z",
                                                  "runs": {"r": {"epochs_done": 12}}}))
    here_runs, here_results = tmp_path / "here" / "runs", tmp_path / "here" / "results"
    assert g.unpack(out, results=here_results, runs_root=here_runs) == [
        "call summary long/gpu_calls/20261130T204000Z.json", f"checkpoint {PLAN}/r (12 epochs)"]
    assert g._epochs_done(here_runs / PLAN / "r") == 12
    assert json.loads((here_results / "long" / "gpu_calls" / "20261130T204000Z.json").read_text())["runs"] == {
        "r": {"epochs_done": 12}}  # what aggregate.py reads the GPU epochs from


def test_runs_outside_the_plan_are_refused_with_the_names_to_choose_from(tmp_path):
    g = load()
    with pytest.raises(SystemExit, match="not in the long/main plan; choose from"):
        g.main(["--out", str(tmp_path), "--runs", "repan_repvgg_a1_w025__nope__s0", "--device", "cpu",
                "--budget", "1"])


def _a_call_ahead_of_a_local_run(tmp_path, local_epochs):
    """A GPU call's packed run ``r`` at epoch 20 and a local run ``r`` at ``local_epochs``."""
    g = load()
    work, out = tmp_path / "gpu" / "runs", tmp_path / "out"
    out.mkdir()
    stopped_run(work, "r", 20)
    g.pack_runs(work, tmp_path / "gpu" / "results", PLAN, ["r"], out)
    here = tmp_path / "here" / "runs"
    stopped_run(here, "r", local_epochs)
    return g, out, here


def test_unpack_leaves_a_run_that_is_training_here_alone(tmp_path):
    """A local run whose lock is held (training now) is not replaced by a call's copy that got
    further (was: renamed to .before-gpu under the live trainer, which then wrote into the GPU's copy
    with no lock); unpacking again after it stopped replaces it."""
    from repan_zoo.runlock import RunLock

    g, out, here = _a_call_ahead_of_a_local_run(tmp_path, local_epochs=10)
    with RunLock(here / PLAN / "r"):
        log = g.unpack(out, results=tmp_path / "here" / "results", runs_root=here)
        assert any("being trained here" in line for line in log)
        assert g._epochs_done(here / PLAN / "r") == 10 and not (here / PLAN / "r.before-gpu").exists()
    g.unpack(out, results=tmp_path / "here" / "results", runs_root=here)
    assert g._epochs_done(here / PLAN / "r") == 20 and g._epochs_done(here / PLAN / "r.before-gpu") == 10


def test_a_checkpoint_pointer_without_its_files_counts_no_epochs(tmp_path):
    """A run folder whose latest.json arrived but whose epoch files did not (a copy cut short) is
    not 'ahead': it counts no epochs, so the next unpack replaces it (was: kept for good)."""
    g, out, here = _a_call_ahead_of_a_local_run(tmp_path, local_epochs=20)
    for f in (here / PLAN / "r" / "checkpoints" / "ep0020").iterdir():
        f.unlink()
    assert g._epochs_done(here / PLAN / "r") == 0
    g.unpack(out, results=tmp_path / "here" / "results", runs_root=here)
    assert g._epochs_done(here / PLAN / "r") == 20
    assert not list((here / PLAN).glob("*.unpacking*"))  # copied beside, then renamed into place
    # a pointer to a missing folder: the epochs of the folder a resume would use (the newest complete one)
    stopped_run(here, "s", 19)
    stopped_run(here, "s", 20)
    for f in (here / PLAN / "s" / "checkpoints" / "ep0020").iterdir():
        f.unlink()
    (here / PLAN / "s" / "checkpoints" / "ep0020").rmdir()
    assert g._epochs_done(here / PLAN / "s") == 19


def test_a_call_whose_runs_all_have_results_trains_nothing(tmp_path, monkeypatch):
    """Every run asked for already finished: the call writes its summary and starts no sweep (was:
    ``--only ''``, which the sweep took as the whole plan)."""
    g = load()
    done = sorted(p.parent.name for p in (g.sweep.RESULTS / PLAN).glob("*/final.json") if p.parent.name != "teacher")
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    def no_sweep(*args, **kwargs):
        raise AssertionError(f"a sweep was started: {args}")

    monkeypatch.setattr(g.subprocess, "Popen", no_sweep)
    monkeypatch.setattr(g, "_gpu_name", lambda: "none")
    assert g.main(["--out", str(tmp_path / "out"), "--runs", done[0], "--device", "cpu", "--budget", "60"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"] == {} and summary["rc"] == 0

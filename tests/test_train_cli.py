"""repan-train end to end on a small Fashion-MNIST subset: deploy checkpoint, DDP (2 processes,
gloo) equivalence, SIGKILL + --resume, divergence stop and missing-data errors.

The end-to-end test trains the zoo's ``repan_repvgg_a0_w025``; the DDP / resume / divergence
tests use ``tinyrep_test`` (tests/tinyrep_models.py, three RepBlocks; subprocesses load it with
``--import tinyrep_models``). Every run is a few steps on a few hundred images.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import repan_zoo
import tinyrep_models  # noqa: F401  (registers tinyrep_test with timm)
from repan_zoo.checkpoint import load_into, read_checkpoint
from repan_zoo.data import FASHION_MNIST_DIR, eval_loader, load_splits
from repan_zoo.errors import RecipeError
from repan_zoo.train_cli import main, run

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                reason="apt-get install dataset-fashion-mnist")

TESTS = Path(__file__).resolve().parent
SMALL = ["--model", "tinyrep_test", "--train-subset", "256", "--val-size", "128", "--test-subset", "256",
         "--batch-size", "32", "--eval-batch-size", "128", "--lr", "0.05", "--calib-batches", "2",
         "--threads", "1", "--no-progress", "--no-plot", "--seed", "7"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), e.get("PYTHONPATH", "")])
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return e


def weights(path: Path) -> dict:
    return read_checkpoint(path)[0]


def max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        scale = max(float(a[k].abs().max()), 1e-12)
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    return worst


def test_amp_on_a_cpu_without_bf16_kernels_warns_and_each_epoch_records_bf16(tmp_path, monkeypatch, capsys):
    """--amp on a CPU without native bf16 kernels (AVX2 only) is emulated, about 10x slower than fp32:
    the run says so and names --no-amp; each epoch records the precision it trained in."""
    from repan_zoo.annealing import trainer

    monkeypatch.setattr(trainer, "cpu_bf16_native", lambda: False)
    out = tmp_path / "run"
    argv = ["--method", "baseline", "--cycles", "1", "--epochs", "1", "--max-steps-per-epoch", "2", "--amp",
            "--out", str(out), *SMALL]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "no native bf16 kernels" in said and "add --no-amp" in said
    assert [r["precision"] for r in json.loads((out / "metrics.json").read_text())] == ["bf16"]
    assert "precision" in (out / "metrics.csv").read_text().splitlines()[0].split(",")


def test_end_to_end_repan_deploy_checkpoint_reproduces_accuracy(tmp_path):
    import timm

    import repan_zoo.models  # noqa: F401  (registers repan_*)

    # a zoo model (RepVGG-A0 at 0.25 width). With 4 steps per epoch BN's running averages lag far
    # behind the weights, and Rep fuses the eval function: --precise-bn re-estimates them first.
    out = tmp_path / "run"
    argv = ["--method", "repan", "--cycles", "2", "--epochs", "2", "--max-steps-per-epoch", "4", "--k", "2",
            "--out", str(out), *SMALL, "--plot", "--model", "repan_repvgg_a0_w025", "--precise-bn", "2"]
    assert main(argv) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["recipe"]["cycles"] == 2 and final["recipe"]["k"] == 2 and final["method"] == "repan"
    assert final["exactness"]["model_rel_error"] <= 1e-5
    assert json.loads((out / "exactness.json").read_text())["model_rel_error"] <= 1e-5
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("cycle,epoch,global_epoch") and len(rows) == 5
    assert [r["cycle"] for r in json.loads((out / "metrics.json").read_text())] == [1, 1, 2, 2]
    assert {r["device"] for r in json.loads((out / "metrics.json").read_text())} == {"cpu"}  # per epoch
    assert {r["precision"] for r in json.loads((out / "metrics.json").read_text())} == {"fp32"}
    from repan_zoo.runtime import cpu_name  # the processor an epoch time was measured on, per epoch

    assert {r["processor"] for r in json.loads((out / "metrics.json").read_text())} == {cpu_name()}
    assert rows[0].endswith(",precision,processor")
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    # the deploy checkpoint loads into a fresh deploy-form timm model and gives the recorded accuracy
    state, meta = read_checkpoint(out / "deploy.safetensors")
    assert meta["form"] == "deploy" and meta["architecture"] == "repan_repvgg_a0_w025"
    model = timm.create_model("repan_repvgg_a0_w025", deploy=True, **{k: v for k, v in final["create_kwargs"].items()})
    load_into(model, state, meta)
    data = load_splits("fashion_mnist", val_size=128, train_subset=256, test_subset=256)
    norm = data.normalizer()
    correct = 0
    with torch.no_grad():
        for x, y in eval_loader(data.test, 100):
            correct += int((model.eval()(norm(x)).argmax(1) == y).sum())
    assert 100.0 * correct / len(data.test) == pytest.approx(final["test_top1"], abs=1e-9)
    assert final["reload_check"]["test_top1"] == final["test_top1"]

    # the same --out again without --resume is refused (it would overwrite the run)
    with pytest.raises(RecipeError, match="--resume"):
        run(argv)


def test_kd_run_with_teacher_from_checkpoint(tmp_path):
    teacher_out = tmp_path / "teacher"
    assert main(["--method", "baseline", "--cycles", "1", "--epochs", "1", "--max-steps-per-epoch", "3",
                 "--out", str(teacher_out), *SMALL]) == 0
    result = run(["--method", "kd", "--teacher", "tinyrep_test", "--teacher-checkpoint",
                  str(teacher_out / "deploy.safetensors"), "--init-checkpoint", str(teacher_out / "deploy.safetensors"),
                  "--kd-alpha", "0.5", "--kd-T", "4", "--cycles", "1",
                  "--epochs", "1", "--max-steps-per-epoch", "3", "--out", str(tmp_path / "kd"), *SMALL,
                  "--augment", "crop_flip_erase"])
    assert result.final["recipe"]["teacher"] == "tinyrep_test"
    assert result.history[0]["train_loss"] > 0
    # the teacher is named by content (a path is one machine's), the augmentation by policy and parameters
    from repan_zoo.checkpoint import sha256_file

    assert result.final["teacher"]["checkpoint_sha256"] == sha256_file(teacher_out / "deploy.safetensors")
    # so are the weights it started from (--init-checkpoint; unpublished here: no manifest name)
    assert result.final["init"] == {"checkpoint_sha256": sha256_file(teacher_out / "deploy.safetensors"), "manifest": None}
    assert json.loads((teacher_out / "final.json").read_text())["init"] is None
    assert result.final["data"]["augment"]["name"] == "crop_flip_erase"
    assert result.final["data"]["augment"]["crop_pad"] == 4 and result.final["recipe"]["augment"] == "crop_flip_erase"
    # the deploy file is what gets published: its recipe names the teacher and the start by content too,
    # never by this machine's path (was: teacher_checkpoint / init_checkpoint as absolute paths in the
    # metadata of every shipped KD checkpoint)
    _, meta = read_checkpoint(tmp_path / "kd" / "deploy.safetensors")
    recipe = json.loads(meta["recipe"])
    assert str(tmp_path) not in meta["recipe"]
    assert not {"teacher_checkpoint", "init_checkpoint", "data_dir"} & set(recipe)
    assert recipe["teacher_weights"] == {"model": "tinyrep_test", "sha256": sha256_file(teacher_out / "deploy.safetensors"),
                                         "manifest": None}
    assert recipe["init_weights"]["sha256"] == sha256_file(teacher_out / "deploy.safetensors")
    assert recipe["kd_alpha"] == 0.5 and recipe["augment"] == "crop_flip_erase"


def test_kd_run_with_a_pretrained_teacher_names_its_weights(tmp_path):
    """--teacher-pretrained: final.json and the deploy file's recipe name the weights the teacher
    loaded (zoo weights by manifest name and sha256; was: only "pretrained": true, which names no
    weights once the manifest's default tag changes), never the local file timm loaded them from."""
    from repan_zoo import manifest

    shipped = manifest.find_entry("repan_repvgg_a1_w025")
    result = run(["--method", "kd", "--teacher", "repan_repvgg_a1_w025", "--teacher-pretrained", "--cycles", "1",
                  "--epochs", "1", "--max-steps-per-epoch", "2", "--out", str(tmp_path / "kd"), *SMALL])
    teacher = result.final["teacher"]
    assert teacher["checkpoint_sha256"] == shipped.sha256 and teacher["manifest"] == shipped.name
    assert teacher["pretrained_source"]["tag"] == shipped.tag and "file" not in teacher["pretrained_source"]
    _, meta = read_checkpoint(tmp_path / "kd" / "deploy.safetensors")
    recipe = json.loads(meta["recipe"])
    assert recipe["teacher_weights"] == {"model": "repan_repvgg_a1_w025", "sha256": shipped.sha256,
                                         "manifest": shipped.name}
    assert str(Path(repan_zoo.__file__).parent) not in meta["recipe"] + json.dumps(result.final["teacher"])


def test_pretrained_source_of_a_timm_model_names_its_weights_not_a_path(tmp_path):
    """timm loads a cfg's ``file`` first, then ``hf_hub_id``, then ``url``: the record names that
    source, a local file by its sha256 only."""
    from repan_zoo.annealing.kd import pretrained_source
    from repan_zoo.fileio import sha256_file

    src = pretrained_source(timm.create_model("resnet18", pretrained=False))
    assert src == {"architecture": "resnet18", "tag": "a1_in1k", "hf_hub_id": "timm/resnet18.a1_in1k",
                   "checkpoint_sha256": None, "manifest": None}
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    src = pretrained_source(timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay={"file": str(f)}))
    assert src == {"architecture": "resnet18", "tag": "a1_in1k", "checkpoint_sha256": sha256_file(f), "manifest": None}


def test_channels_last_run_matches_the_contiguous_run(tmp_path):
    """--channels-last (here with --no-test-each-epoch) keeps the model (through Rep and Expand, which build new convs) and its
    inputs in NHWC and trains the same network up to convolution rounding (measured 3e-4 after one
    step per cycle: batch-32 BN amplifies the rounding; a wrong expansion or layout is O(1))."""
    common = ["--method", "repan", "--cycles", "2", "--epochs", "1", "--max-steps-per-epoch", "1", *SMALL]
    plain = run(common + ["--out", str(tmp_path / "nchw")])
    nhwc = run(common + ["--out", str(tmp_path / "nhwc"), "--channels-last", "--no-test-each-epoch"])
    # without per-epoch test evaluation the history has no test figures; the final network has one
    assert [r["test_top1"] for r in nhwc.history] == [None, None] and nhwc.final["test_top1"] > 0
    assert all(r["test_top1"] is not None for r in plain.history)
    assert nhwc.final["recipe"]["channels_last"] is True and plain.final["recipe"]["channels_last"] is False
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert nhwc.exactness["model_rel_error"] <= 1e-5
    assert max_rel_diff(weights(tmp_path / "nchw" / "deploy.safetensors"),
                        weights(tmp_path / "nhwc" / "deploy.safetensors")) < 5e-3


def test_two_process_torchrun_matches_one_process(tmp_path):
    """2 processes × 16 images (gloo, CPU) vs 1 process × 32 images, same global batches.

    BatchNorm normalises with the statistics of the batch a process sees, so plain per-process
    BN would differ from the one-process run by construction. ``--sync-bn`` makes each BN use
    the statistics of the global batch (all-reduced sums, also in the backward pass), which is
    exactly what the one process computes; DDP averages the gradients of the two halves, which is
    the gradient of the mean loss over the 32 images. Data order is one permutation dealt out
    by DistributedSampler, flips depend on (seed, epoch, image) only, and the expansion generator
    is seeded identically on both ranks. Two cycles (Rep, Expand, Restore, Calibrate in between).
    """
    common = ["--method", "repan", "--cycles", "2", "--epochs", "1", "--max-steps-per-epoch", "3", "--sync-bn",
              "--import", "tinyrep_models", *SMALL]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "repan_zoo.train_cli", "--out", str(tmp_path / "ddp"), *common]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert main(["--out", str(tmp_path / "one"), *common]) == 0
    ddp, one = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("ddp", "one"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    diff = max_rel_diff(weights(tmp_path / "ddp" / "deploy.safetensors"), weights(tmp_path / "one" / "deploy.safetensors"))
    assert diff <= 1e-5, diff
    hist_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    hist_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert [r["images"] for r in hist_ddp] == [r["images"] for r in hist_one] == [96, 96]
    for a, b in zip(hist_ddp, hist_one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def _run_and_kill(out: Path, after_epoch: int, args) -> None:
    """Start a training subprocess and SIGKILL it shortly after epoch ``after_epoch``'s checkpoint."""
    cmd = [sys.executable, "-m", "repan_zoo.train_cli", "--import", "tinyrep_models", "--out", str(out), *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if pointer.is_file() and json.loads(pointer.read_text())["progress"].get("global_epoch") == after_epoch:
                time.sleep(0.1)  # into the next epoch (6 steps × 0.04 s of sleep each)
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.json").exists()
    assert json.loads(pointer.read_text())["progress"]["global_epoch"] == after_epoch


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL during an epoch and resumed ends with the same weights as an
    uninterrupted run (deterministic CPU, one thread). Killed twice: in the first epoch of cycle 2
    (resume at a cycle boundary: Rep, Expand with the saved generator state, Calibrate) and in its
    second epoch (resume mid-cycle: optimiser momentum, λ, LR position). ``step_delay`` only
    sleeps in each training step so that the kill lands inside an epoch; it changes no number."""
    recipe = ["--method", "repan", "--cycles", "2", "--epochs", "2", "--max-steps-per-epoch", "6",
              "--deterministic", *SMALL]
    killed = tmp_path / "killed"
    slow = ["--model-kwargs", '{"step_delay": 0.04}']
    _run_and_kill(killed, 2, [*slow, *recipe])
    _run_and_kill(killed, 3, ["--resume", *slow, "--threads", "1", "--no-progress"])
    # last resume in-process; step_delay is a runtime knob, so override it back to none
    assert main(["--out", str(killed), "--resume", "--model-kwargs", "{}", "--threads", "1", "--no-progress"]) == 0
    assert main(["--out", str(tmp_path / "straight"), *recipe]) == 0
    resumed = json.loads((killed / "final.json").read_text())
    straight = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert resumed["test_top1"] == straight["test_top1"]
    assert len(json.loads((killed / "metrics.json").read_text())) == 4
    # the override of the last resume is part of the run's record, in final.json and in the deploy file's
    # recipe, with the epoch it took effect after (was: only in resume.json, which is not published)
    assert resumed["resumed_with"] == [{"after_epoch": 3, "overrides": {"model_kwargs": {}}}]
    assert "resumed_with" not in straight
    assert json.loads(read_checkpoint(killed / "deploy.safetensors")[1]["recipe"])["resumed_with"] == \
        resumed["resumed_with"]
    diff = max_rel_diff(weights(killed / "deploy.safetensors"), weights(tmp_path / "straight" / "deploy.safetensors"))
    assert diff <= 1e-5, diff


def test_resume_imports_the_plugins_the_run_started_with(tmp_path, monkeypatch):
    """A run of a model registered by an --import plugin resumes without repeating --import (was:
    "unknown model tinyrep_test" on every --resume that forgot it): recipe.json records the plugins."""
    out = tmp_path / "run"
    args = ["--method", "baseline", "--cycles", "1", "--epochs", "1", "--max-steps-per-epoch", "1", *SMALL]
    first = subprocess.run([sys.executable, "-m", "repan_zoo.train_cli", "--import", "tinyrep_models", "--out",
                            str(out), *args], env=env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((out / "recipe.json").read_text())["imports"] == ["tinyrep_models"]
    (out / "final.json").unlink()  # as if killed before the end: the resume finishes the run
    again = subprocess.run([sys.executable, "-m", "repan_zoo.train_cli", "--out", str(out), "--resume",
                            "--threads", "1", "--no-progress"], env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "importing tinyrep_models" in again.stdout and (out / "final.json").is_file()
    assert "· 1 epoch in 1 cycle · 1 process(es) on cpu" in first.stdout  # the whole budget in the first line
    # a plugin given as a .py file is recorded by its absolute path: a resume from another folder finds it
    plugin = tmp_path / "plug.py"
    plugin.write_text("import tinyrep_models  # noqa: F401\n")
    out2 = tmp_path / "run2"
    monkeypatch.chdir(tmp_path)
    assert main(["--import", "plug.py", "--out", str(out2), *args]) == 0
    assert json.loads((out2 / "recipe.json").read_text())["imports"] == [str(plugin)]


def test_a_resume_before_any_epoch_is_a_fresh_start_not_a_recipe_change(tmp_path):
    """--resume of a run killed before its first checkpoint (recipe.json only) trains from epoch 1
    with the options given: nothing of an earlier recipe went into it, so final.json and the deploy
    recipe record no resume change (was: resumed_with after_epoch None)."""
    out = tmp_path / "run"
    args = ["--method", "baseline", "--cycles", "1", "--epochs", "1", "--max-steps-per-epoch", "1", *SMALL]
    out.mkdir()
    from repan_zoo.annealing.config import TrainConfig

    (out / "recipe.json").write_text(json.dumps({**TrainConfig(method="baseline").as_dict(), "lr": 0.5}))
    assert main(["--out", str(out), "--resume", *args, "--lr", "0.06"]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["recipe"]["lr"] == 0.06 and "resumed_with" not in final and not (out / "resume.json").exists()


def test_a_resume_reads_the_last_checkpoint_once(tmp_path, monkeypatch):
    """--resume checks the recipe against the last checkpoint and the trainer continues from that
    same checkpoint (was: read and loaded twice, once for the check and once by the trainer)."""
    from repan_zoo.runtime.checkpointing import Checkpointer

    out = tmp_path / "run"
    args = ["--method", "repan", "--cycles", "2", "--epochs", "1", "--max-steps-per-epoch", "1", *SMALL]
    assert main(["--out", str(out), *args]) == 0
    (out / "final.json").unlink()  # as if killed after its last checkpoint
    reads = []
    real_load = Checkpointer.load
    monkeypatch.setattr(Checkpointer, "load", lambda self, *a, **k: reads.append(1) or real_load(self, *a, **k))
    assert main(["--out", str(out), "--resume", "--threads", "1", "--no-progress"]) == 0
    assert len(reads) == 1 and (out / "final.json").is_file()


def test_train_leaves_the_process_torch_settings_as_it_found_them(tmp_path, monkeypatch):
    """--threads and --deterministic are set for the run only (an in-process caller keeps its own)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    threads = torch.get_num_threads()
    assert main(["--method", "baseline", "--cycles", "1", "--epochs", "1", "--max-steps-per-epoch", "1",
                 "--deterministic", "--out", str(tmp_path), *SMALL, "--threads", str(threads + 1)]) == 0
    assert torch.backends.cudnn.benchmark and torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_divergence_exit_code_and_message(tmp_path, capsys):
    rc = main(["--method", "baseline", "--cycles", "1", "--epochs", "3", "--max-steps-per-epoch", "2",
               "--model-kwargs", '{"nan_after": 3}', "--out", str(tmp_path), *SMALL])
    assert rc == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "cycle 1, epoch 2/3, step 2" in err and "ep0001" in err
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["dir"] == "ep0001"


def test_missing_dataset_exit_code_and_message(tmp_path, capsys):
    rc = main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), *SMALL])
    assert rc == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "train-images-idx3-ubyte.gz" in err

"""Every console command refuses every bad option up front: exit status 2, one line on stderr that
names the option (and what to do), no traceback, and nothing created or changed on disk.

The table runs each command's ``main`` in this process (argparse errors included); one case per
command also runs as a real console process to show the same from the outside."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tinyrep_models  # noqa: F401  (registers tinyrep_test with timm)
from fake_hub import hub, make_deploy_run, register_test_model  # noqa: F401  (hub is a fixture)
from repan_zoo import cli, publish_cli, train_cli
from repan_zoo.data import FASHION_MNIST_DIR
from repan_zoo.detection import cli as detect_cli

TESTS = Path(__file__).resolve().parent
register_test_model()
HAVE_FMNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
TRAIN = ["--model", "tinyrep_test", "--train-subset", "256", "--val-size", "128", "--test-subset", "256",
         "--batch-size", "32", "--no-progress", "--no-plot", "--threads", "1"]

# (id, command main, argv with {tmp} for the test's folder, text the message must contain)
TRAIN_CASES = [
    ("val-size-0", ["--val-size", "0"], "--val-size"),
    ("eval-batch-size-0", ["--eval-batch-size", "0"], "--eval-batch-size"),
    ("threads-negative", ["--threads", "-1"], "--threads"),
    ("workers-negative", ["--workers", "-1"], "--workers"),
    ("seed-2**70", ["--seed", str(2**70)], "--seed"),
    ("seed-negative", ["--seed", "-3"], "--seed"),
    ("split-seed-2**70", ["--split-seed", str(2**70)], "--split-seed"),
    ("device-bogus", ["--device", "bogus"], "--device"),
    ("label-smoothing-negative", ["--label-smoothing", "-0.1"], "--label-smoothing"),
    ("label-smoothing-nan", ["--label-smoothing", "nan"], "--label-smoothing"),
    ("label-smoothing-1", ["--label-smoothing", "1"], "--label-smoothing"),
    ("min-lr-negative", ["--min-lr", "-1e-3"], "--min-lr"),
    ("min-lr-above-lr", ["--lr", "0.01", "--min-lr", "0.5"], "--min-lr"),
    ("clip-grad-negative", ["--clip-grad", "-1"], "--clip-grad"),
    ("warmup-epochs-negative", ["--warmup-epochs", "-1"], "--warmup-epochs"),
    ("warmup-epochs-longer-than-cycle", ["--epochs", "1", "--warmup-epochs", "3"], "--warmup-epochs"),
    ("lr-nan", ["--lr", "nan"], "--lr"),
    ("lr-inf", ["--lr", "inf"], "--lr"),
    ("lr-0", ["--lr", "0"], "--lr"),
    ("later-lr-nan", ["--later-lr", "nan"], "--later-lr"),
    ("wd-nan", ["--wd", "nan"], "--wd"),
    ("wd-negative", ["--wd", "-1e-4"], "--wd"),
    ("momentum-nan", ["--momentum", "nan"], "--momentum"),
    ("momentum-inf", ["--momentum", "inf"], "--momentum"),
    ("momentum-1", ["--momentum", "1"], "--momentum"),
    ("batch-size-0", ["--batch-size", "0"], "--batch-size"),
    ("cycles-0", ["--cycles", "0"], "--cycles"),
    ("epochs-0", ["--epochs", "0"], "--epochs"),
    ("k-6", ["--k", "6"], "--k"),
    ("kd-alpha-2", ["--kd-alpha", "2"], "--kd-alpha"),
    ("kd-T-0", ["--kd-T", "0"], "--kd-T"),
    ("lam-start-nan", ["--lam-start", "nan"], "--lam-start"),
    ("lam-end-2", ["--lam-end", "2"], "--lam-end"),
    ("lam-warmup-negative", ["--lam-warmup", "-0.5"], "--lam-warmup"),
    ("branch-gamma-nan", ["--branch-gamma", "nan"], "--branch-gamma"),
    ("calib-batches-negative", ["--calib-batches", "-1"], "--calib-batches"),
    ("precise-bn-negative", ["--precise-bn", "-1"], "--precise-bn"),
    ("train-subset-negative", ["--train-subset", "-5"], "--train-subset"),
    ("test-subset-0", ["--test-subset", "0"], "--test-subset"),
    ("img-size-0", ["--img-size", "0"], "--img-size"),
    ("keep-checkpoints-0", ["--keep-checkpoints", "0"], "--keep-checkpoints"),
    ("max-steps-per-epoch-0", ["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
    ("out-is-a-file", ["--out", "{tmp}/afile"], "--out"),
    ("out-under-a-file", ["--out", "{tmp}/afile/run"], "--out"),
    ("unknown-pretrained-tag", ["--model", "repan_repvgg_a1_w025.nosuchtag"], "nosuchtag"),
    ("model-with-a-weights-tag", ["--model", "repan_repvgg_a1_w025.fmnist_long_kd"], "--init-checkpoint"),
    ("device-mps-absent", ["--device", "mps"], "--device mps"),
    ("device-meta", ["--device", "meta"], "--device meta"),
    ("model-kwargs-num-classes", ["--model-kwargs", '{{"num_classes": 10}}'], "num_classes"),
    ("model-kwargs-features-only", ["--model-kwargs", '{{"features_only": true}}'], "features_only"),
    ("batch-size-above-the-split", ["--train-subset", "64", "--val-size", "32", "--batch-size", "128"], "--batch-size"),
    ("unknown-model", ["--model", "no_such_model"], "no_such_model"),
    ("init-checkpoint-missing", ["--init-checkpoint", "{tmp}/none.safetensors"], "--init-checkpoint"),
    ("teacher-checkpoint-missing", ["--method", "kd", "--teacher", "tinyrep_test", "--teacher-checkpoint",
                                    "{tmp}/none.safetensors"], "--teacher-checkpoint"),
    ("teacher-without-weights", ["--method", "kd", "--teacher", "tinyrep_test"], "--teacher-checkpoint"),
    ("repan-kd-teacher-without-weights", ["--method", "repan", "--cycles", "2", "--teacher", "tinyrep_test"],
     "--teacher-pretrained"),
    ("val-size-above-the-training-set", ["--train-subset", "none", "--val-size", "60000"], "--val-size"),
    ("train-subset-above-the-split", ["--train-subset", "59999"], "--train-subset"),
    ("test-subset-above-the-test-set", ["--test-subset", "10001"], "--test-subset"),
    ("seed-beyond-any-float", ["--seed", "1" + "0" * 400], "--seed"),
    ("flip-with-a-policy-without-flips", ["--augment", "none", "--flip"], "--flip"),
    ("img-size-of-a-dataset-that-does-not-resize", ["--img-size", "32"], "--img-size"),
    ("import-missing-module", ["--import", "no_such_plugin_module"], "--import"),
    ("import-missing-file", ["--import", "{tmp}/none.py"], "--import"),
]
EXPORT = ["export", "repan_repvgg_a0_w025", "--input-size", "1", "28", "28", "--num-classes", "10"]
REPAN_CASES = [
    ("unknown-option-named-by-its-command", ["profile", "repan_repvgg_a0_w025", "--json-out"],
     "repan profile: error: unrecognized arguments: --json-out (see repan profile --help)"),
    ("export-format-against-name", [*EXPORT, "--format", "torchscript", "--out", "{tmp}/m.onnx"], "--format"),
    ("export-onnx-named-pt", [*EXPORT, "--format", "onnx", "--out", "{tmp}/m.pt"], "--format"),
    ("export-int8-named-onnx", [*EXPORT, "--int8", "--out", "{tmp}/m.onnx"], "--int8"),
    ("export-int8-with-format", [*EXPORT, "--int8", "--format", "onnx", "--out", "{tmp}/m.pt2"], "--format onnx"),
    ("export-out-is-a-directory", [*EXPORT, "--out", "{tmp}"], "--out"),
    ("export-out-under-a-file", [*EXPORT, "--out", "{tmp}/afile/m.onnx"], "--out"),
    ("export-batch-size-0", [*EXPORT, "--out", "{tmp}/m.onnx", "--batch-size", "0"], "--batch-size"),
    ("export-opset-0", [*EXPORT, "--out", "{tmp}/m.onnx", "--opset", "0"], "--opset"),
    ("export-input-size-0", ["export", "repan_repvgg_a0_w025", "--input-size", "0", "28", "28", "--out",
                             "{tmp}/m.onnx"], "--input-size"),
    ("export-num-classes-negative", [*EXPORT, "--out", "{tmp}/m.onnx", "--num-classes", "-1"], "--num-classes"),
    ("export-unknown-pretrained-tag", ["export", "repan_repvgg_a1_w025.nosuchtag", "--pretrained", "--out",
                                       "{tmp}/m.onnx"], "nosuchtag"),
    ("export-unknown-model", ["export", "no_such_model", "--out", "{tmp}/m.onnx"], "no_such_model"),
    ("export-int8-calib-batches-0", [*EXPORT, "--out", "{tmp}/m.pt2", "--int8", "--calib-batches", "0"],
     "--calib-batches"),
    ("export-int8-calib-batch-size-nan", [*EXPORT, "--out", "{tmp}/m.pt2", "--int8", "--calib-batch-size", "nan"],
     "--calib-batch-size"),
    ("export-int8-probe-images-1", [*EXPORT, "--out", "{tmp}/m.pt2", "--int8", "--probe-images", "1"], "--probe-images"),
    ("profile-batch-size-0", ["profile", "repan_repvgg_a0_w025", "--batch-size", "0"], "--batch-size"),
    ("profile-threads-0", ["profile", "repan_repvgg_a0_w025", "--threads", "0"], "--threads"),
    ("profile-repeats-0", ["profile", "repan_repvgg_a0_w025", "--repeats", "0"], "--repeats"),
    ("profile-warmup-negative", ["profile", "repan_repvgg_a0_w025", "--warmup", "-1"], "--warmup"),
]
DETECT = ["--data-root", "{tmp}/nodata", "--out", "{tmp}/det"]
DETECT_CASES = [(f"detect-{opt[2:]}-{value}", [*DETECT, opt, value], opt) for opt, value in [
    ("--lr", "nan"), ("--lr", "-1"), ("--min-lr", "-1"), ("--wd", "inf"), ("--momentum", "nan"), ("--clip-grad", "-1"),
    ("--epochs", "0"), ("--batch-size", "0"), ("--seed", str(2**70)), ("--device", "bogus"), ("--threads", "-1"),
    ("--workers", "-1"), ("--score-thresh", "2"), ("--fpn-channels", "0"), ("--anchor-scale", "0"),
    ("--eval-batch-size", "0"), ("--eval-every", "0"), ("--lam-end", "nan"), ("--k", "-1"), ("--warmup-steps", "-1"),
]] + [
    ("detect-min-lr-above-lr", [*DETECT, "--lr", "0.01", "--min-lr", "0.1"], "--min-lr"),
    ("detect-out-is-a-file", ["--data-root", "{tmp}/nodata", "--out", "{tmp}/afile"], "--out"),
    ("detect-unknown-backbone", [*DETECT, "--backbone", "no_such_model"], "no_such_model"),
    ("detect-unknown-backbone-tag", [*DETECT, "--backbone", "repan_repvgg_a0_w025.nosuchtag"], "nosuchtag"),
    ("detect-backbone-checkpoint-missing", [*DETECT, "--backbone-checkpoint", "{tmp}/none.safetensors"],
     "--backbone-checkpoint"),
]
PUBLISH_CASES = [
    ("publish-max-bundle-mb-0", ["{ckpt}", "--metrics", "{metrics}", "--tag", "t", "--bundle", "--max-bundle-mb", "0"],
     "--max-bundle-mb"),
    ("publish-max-bundle-mb-nan", ["{ckpt}", "--metrics", "{metrics}", "--tag", "t", "--bundle", "--max-bundle-mb",
                                   "nan"], "--max-bundle-mb"),
    ("publish-out-is-a-file", ["{ckpt}", "--metrics", "{metrics}", "--tag", "t", "--repo", "org/x", "--out",
                               "{tmp}/afile"], "--out"),
    ("publish-unreachable-hub", ["{ckpt}", "--metrics", "{metrics}", "--tag", "t", "--repo", "org/unreachable"],
     "cannot reach the Hub"),
]


def tree(root: Path) -> dict:
    """Every path under ``root`` with its kind, size and mtime: what "nothing changed" compares."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def refused(main, argv, tmp_path: Path, capsys, must_contain: str) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    before = tree(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and must_contain in lines[0], err
    assert tree(tmp_path) == before, "a refused command changed the disk"


def fill(argv, **values):
    return [a.format(**values) for a in argv]


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize("argv,must", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_repan_train_refuses(argv, must, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "run")] if "--out" not in argv else []
    refused(train_cli.main, [*TRAIN, *out, *fill(argv, tmp=tmp_path)], tmp_path, capsys, must)


def test_repan_train_refuses_a_read_only_out(tmp_path, capsys, monkeypatch):
    """Root writes through file modes, so the read-only directory is what os.access reports."""
    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    refused(train_cli.main, [*TRAIN, "--out", str(ro / "run")], tmp_path, capsys, "--out")


def _refuses_creating_files(folder: str) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


UNWRITABLE = "/sys/kernel"  # sysfs: permission bits say writable to root, yet no file can be created there


@pytest.mark.skipif(not (os.path.isdir(UNWRITABLE) and os.access(UNWRITABLE, os.W_OK)
                         and _refuses_creating_files(UNWRITABLE)), reason="needs sysfs as root")
@pytest.mark.parametrize("main,argv", [
    (cli.main, ["export", "repan_repvgg_a0_w025", "--out", f"{UNWRITABLE}/m.onnx"]),
    (train_cli.main, [*TRAIN, "--out", f"{UNWRITABLE}/run"]),
], ids=["repan export", "repan-train"])
def test_an_out_the_file_system_refuses_is_named_before_any_work(main, argv, tmp_path, capsys, monkeypatch):
    """os.access answers from permission bits (yes, for root), not from whether the file system lets
    a file be made: --out is checked by making one (was: the whole export or the run's setup, then a
    PermissionError traceback naming a temp file)."""
    monkeypatch.chdir(tmp_path)
    refused(main, argv, tmp_path, capsys, "--out")


def test_a_file_system_error_during_a_command_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """A disk that fills up (or a file system that fails) in the middle of a command: one line, exit 2,
    the file and the OS's reason (was: a traceback, and exit 1, the status of a failed check)."""
    import repan_zoo.export as export_mod

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "m.onnx"))

    monkeypatch.setattr(export_mod, "export_onnx", full)
    code = cli.main(["export", "repan_repvgg_a0_w025", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{tmp_path / 'm.onnx'}: No space left on device" in err and "free space" in err

    def bug(*args, **kwargs):  # not a storage refusal: a missing file of the package is a bug, traceback kept
        raise FileNotFoundError(2, "No such file or directory", "/site-packages/repan_zoo/missing.json")

    monkeypatch.setattr(export_mod, "export_onnx", bug)
    with pytest.raises(FileNotFoundError):
        cli.main(["export", "repan_repvgg_a0_w025", "--out", str(tmp_path / "m.onnx")])


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize("contents", [["notes.txt"], ["final.json", "checkpoints/epoch_best/model.pt"]],
                         ids=["a-file", "run-like-names"])
def test_repan_train_refuses_an_out_holding_files_of_no_run(tmp_path, capsys, monkeypatch, contents):
    """A folder of the user's own files is not a run directory: refused, nothing touched (was: final.json
    replaced and every checkpoints/ep* folder pruned, the user's checkpoints/epoch_best included)."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    for name in contents:
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("keep me")
    refused(train_cli.main, [*TRAIN, "--out", str(mine)], tmp_path, capsys, "--out")


@pytest.mark.parametrize("argv,must", [c[1:] for c in REPAN_CASES], ids=[c[0] for c in REPAN_CASES])
def test_repan_refuses(argv, must, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(cli.main, fill(argv, tmp=tmp_path), tmp_path, capsys, must)


@pytest.mark.parametrize("argv,must", [c[1:] for c in DETECT_CASES], ids=[c[0] for c in DETECT_CASES])
def test_repan_detect_refuses(argv, must, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(detect_cli.main, fill(argv, tmp=tmp_path), tmp_path, capsys, must)


@pytest.mark.parametrize("argv,must", [c[1:] for c in PUBLISH_CASES], ids=[c[0] for c in PUBLISH_CASES])
def test_repan_publish_refuses(argv, must, hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    ckpt, metrics, _ = make_deploy_run(tmp_path / "run", seed=1)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.chdir(tmp_path)
    refused(publish_cli.main, fill(argv, tmp=tmp_path, ckpt=ckpt, metrics=metrics), tmp_path, capsys, must)


@pytest.mark.parametrize("module,argv,must", [
    ("repan_zoo.train_cli", ["--out", "{tmp}/run", "--lr", "nan"], "--lr"),
    ("repan_zoo.cli", ["export", "repan_repvgg_a0_w025", "--out", "{tmp}", "--batch-size", "1"], "--out"),
    ("repan_zoo.publish_cli", ["x.safetensors", "--metrics", "m.json", "--tag", "t", "--bundle", "--max-bundle-mb",
                               "-1"], "--max-bundle-mb"),
    ("repan_zoo.detection.cli", ["--out", "{tmp}/det", "--seed", str(2**70)], "--seed"),
    ("repan_zoo.cli", ["train", "--out", "{tmp}/run", "--lr", "nan"], "--lr"),
], ids=["repan-train", "repan", "repan-publish", "repan-detect", "repan train"])
def test_console_processes_refuse_in_one_line(module, argv, must, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    before = tree(tmp_path)
    proc = subprocess.run([sys.executable, "-m", module, *fill(argv, tmp=tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and must in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert tree(tmp_path) == before

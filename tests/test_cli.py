"""The ``repan`` console command: list, export, profile (repan_zoo.cli)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch

import repan_zoo
import repan_zoo.models  # noqa: F401  (registers the repan_* models with timm)
from repan_zoo.blocks import RepBlock
from repan_zoo.checkpoint import save_checkpoint
from repan_zoo.cli import build_parser, main
from repan_zoo.verify import relative_error

from helpers import hide_modules, make_input, randomize, single_thread  # noqa: F401 (single_thread: fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

MODEL = "repan_repvgg_a0_w025"  # 0.25× width: the CLI plumbing, quickly
SMALL = ["--input-size", "1", "28", "28", "--num-classes", "10"]  # the Fashion-MNIST setting of the w025 models

needs_model = pytest.mark.skipif(
    MODEL not in timm.list_models("repan_*"), reason=f"{MODEL} is not registered yet"
)


@needs_model
def test_console_script_lists_models():
    """The installed entry point runs in a fresh interpreter (setup.cfg: repan = repan_zoo.cli:main)."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from repan_zoo.cli import main; sys.exit(main(['list']))"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    names = out.stdout.split()
    assert MODEL in names and "repan_mobileone_s0" in names and all(n.startswith("repan_") for n in names)


def test_list_with_no_match(capsys):
    assert main(["list", "repan_no_such_family_*"]) == 1
    assert "no repan model matches" in capsys.readouterr().err


@needs_model
@pytest.mark.extras
def test_export_onnx(tmp_path, capsys):
    import onnx

    out = tmp_path / "a0.onnx"
    args = ["export", MODEL, "--format", "onnx", "--out", str(out), *SMALL, "--batch-size", "1", "--legacy-onnx", "--opset", "17"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out} (onnx, opset 17, probe 1×1×28×28, dynamic batch)")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    blocks = [m for m in timm.create_model(MODEL).modules() if isinstance(m, RepBlock)]
    assert ops.count("Conv") == len(blocks) and "BatchNormalization" not in ops


@needs_model
def test_export_takes_the_format_from_the_file_name(tmp_path, capsys):
    """--out m.pt without --format writes TorchScript, as the name says (was: an ONNX file named m.pt)."""
    out = tmp_path / "a0.pt"
    assert main(["export", MODEL, "--out", str(out), *SMALL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(out))


@needs_model
def test_export_torchscript_from_checkpoint(tmp_path, capsys):
    """--checkpoint: a deploy-form safetensors file is loaded strictly and is what gets exported."""
    model = randomize(timm.create_model(MODEL, num_classes=10), seed=9)
    ckpt = save_checkpoint(repan_zoo.reparameterize(model), tmp_path / "a0-deploy.safetensors", architecture=MODEL)
    out = tmp_path / "a0.pt"
    rc = main(["export", MODEL, "--format", "torchscript", "--out", str(out), "--checkpoint", str(ckpt), *SMALL, "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "torchscript" and report["max_rel_error_vs_source"] <= 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out))
    x = make_input(channels=1, size=28, batch=3, seed=5)
    with torch.no_grad():
        assert relative_error(model.eval()(x), loaded(x)) <= 1e-5


@needs_model
def test_export_names_the_weights_it_wrote(tmp_path, capsys):
    """The report says which weights the file holds, and an export of a freshly initialised model says
    so on stderr (was: `repan export MODEL --out F`, the README's usage line, wrote random weights
    without a word)."""
    out = tmp_path / "a0.pt"
    assert main(["export", MODEL, "--out", str(out), *SMALL, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["weights"] == {"source": "random init"}
    assert "random" in captured.err and "--pretrained" in captured.err and "--checkpoint" in captured.err
    model = randomize(timm.create_model(MODEL, num_classes=10), seed=9)
    ckpt = save_checkpoint(repan_zoo.reparameterize(model), tmp_path / "a0-deploy.safetensors", architecture=MODEL)
    assert main(["export", MODEL, "--out", str(out), "--checkpoint", str(ckpt), *SMALL]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"weights {ckpt}" in captured.out


@needs_model
def test_torchscript_export_of_a_dict_output_model(tmp_path):
    """A features_only model with dict outputs traces (non-strict tracer: its dict is of fixed keys)
    and the file is checked like any other (was: the tracer's RuntimeError as a traceback)."""
    from repan_zoo.export import export_torchscript

    model = randomize(timm.create_model(MODEL, features_only=True, feature_cls="dict"), seed=2)
    report = export_torchscript(model, tmp_path / "f.pt", input_size=(1, 28, 28))
    assert report["max_rel_error_vs_source"] <= 1e-5


@needs_model
@pytest.mark.extras
def test_onnx_export_refuses_an_opset_the_exporter_did_not_write(tmp_path):
    """torch.export's ONNX exporter writes its own opset when it cannot convert to the one asked for:
    refused, naming the legacy exporter, and no file (was: opset 18 written for --opset 13, exit 0)."""
    from repan_zoo.errors import ExportError
    from repan_zoo.export import export_onnx

    out = tmp_path / "a0.onnx"
    with pytest.raises(ExportError, match="(?s)opset 13.*dynamo=False"):
        export_onnx(timm.create_model(MODEL, num_classes=10), out, input_size=(1, 28, 28), opset=13)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@needs_model
def test_profile_json(capsys):
    rc = main(["profile", MODEL, *SMALL, "--repeats", "2", "--warmup", "1", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == MODEL and r["input_size"] == [1, 28, 28]
    assert r["deploy"]["params"] < r["train"]["params"] and 0 < r["deploy"]["flops"] <= r["train"]["flops"]


@needs_model
def test_profile_table(capsys):
    assert main(["profile", MODEL, "--input-size", "1", "16", "16", "--repeats", "1", "--warmup", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model |") and table[2].startswith(f"| {MODEL} | 1×16×16 | 1 |")


@needs_model
@pytest.mark.extras  # onnx: the refusal comes after the graph is written
def test_export_refusal_reaches_the_user(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(RepBlock, "reparameterize", lambda self: None)
    out = tmp_path / "half.onnx"
    assert main(["export", MODEL, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    print(err)
    assert err.startswith("repan export: error: refusing to export a half-fused graph") and not out.exists()


@needs_model
def test_export_without_the_export_extra_names_the_extra(tmp_path, capsys, monkeypatch):
    hide_modules(monkeypatch, "onnx")
    out = tmp_path / "a0.onnx"
    assert main(["export", MODEL, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repan export: error: ONNX export needs onnx") and "pip install 'repan-zoo[export]'" in err
    assert not out.exists()


def test_unknown_model_and_bad_arguments(tmp_path, capsys):
    assert main(["export", "no_such_model", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no_such_model'" in err and "repan list" in err
    assert main(["profile", "no_such_model", "--model-arg", "oops"]) == 2
    assert "--model-arg 'oops': write KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: --out is required, formats are a fixed choice
        build_parser().parse_args(["export", MODEL])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", MODEL, "--out", "x", "--format", "tflite"])


def _with_closed_stdout(code: str):
    """Run ``code`` in a child whose stdout reader has gone away (its pipe's read end closed)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    child.stdout.close()  # the reader goes away before the child writes
    _, err = child.communicate(timeout=300)
    return child.returncode, err.decode()


def test_a_closed_output_pipe_ends_a_command_quietly_and_does_not_stop_a_training_log():
    """``repan list | head -1``: no BrokenPipeError traceback but the documented status 141; the
    trainer's log (console_print) stops printing and the run goes on (was: the run died after its
    first log line with 'writing the run's files failed (Broken pipe)')."""
    code, err = _with_closed_stdout(
        "import sys, argparse\n"
        "from repan_zoo.cli.base import run_command\n"
        "def run(args):\n"
        "    for _ in range(2000): print('x' * 100)\n"
        "    return 0\n"
        "sys.exit(run_command('repan list', run, argparse.Namespace()))\n")
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err, (code, err)
    code, err = _with_closed_stdout(
        "import sys\n"
        "from repan_zoo.cli.base import console_print\n"
        "for _ in range(2000): console_print('x' * 100)\n"
        "print('trained on', file=sys.stderr)\n")
    assert code == 0 and "trained on" in err and "Traceback" not in err, (code, err)


def test_ctrl_c_is_one_line_naming_the_resume_and_status_130(tmp_path, capsys):
    """(was: about 40 lines of KeyboardInterrupt traceback from inside batch_norm; and, before the
    first epoch completed, a resume of epochs that were not there)."""
    import argparse

    from repan_zoo.cli.base import run_command

    def interrupted(args):
        raise KeyboardInterrupt

    args = argparse.Namespace(out=str(tmp_path / "run"), resume=False)
    assert run_command("repan-train", interrupted, args) == 130  # before the first epoch completed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no epoch had completed" in err and "--resume" not in err, err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text('{"dir": "ep0001"}')
    assert run_command("repan-train", interrupted, args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"repan-train --out {tmp_path / 'run'} --resume" in err and "Traceback" not in err
    assert run_command("repan list", interrupted, argparse.Namespace()) == 130
    assert capsys.readouterr().err == "repan list: interrupted\n"


def test_version_and_a_folder_given_as_a_checkpoint(tmp_path, capsys):
    from repan_zoo.cli import main
    from repan_zoo.cli.options import check_files_exist
    from repan_zoo.errors import RecipeError

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"repan-zoo {repan_zoo.__version__}"
    (tmp_path / "deploy.safetensors").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"--init-checkpoint .* is a folder, not a checkpoint file: .*\(it holds deploy.safetensors\)"):  # was 'no such file'
        check_files_exist(init_checkpoint=str(tmp_path))

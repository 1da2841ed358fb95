"""train_scripts/paper_recipes.py: every command is a valid repan-train command line carrying the
paper's Sec. 5.1 settings, and the equal-budget arms differ only where they should."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from repan_zoo.train_cli import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "train_scripts" / "paper_recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("paper_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(args):
    return build_parser().parse_args(args)


def test_cifar100_matches_the_paper(recipes, tmp_path):
    cmds = recipes.commands("cifar100", "DATA", tmp_path)
    assert list(cmds) == ["teacher", "baseline", "kd", "repan", "repan_kd"]
    a = {arm: parse(args) for arm, args in cmds.items()}
    for arm, ns in a.items():
        assert (ns.dataset, ns.batch_size, ns.lr, ns.wd) == ("cifar100", 128, 0.2, 1e-4), arm
        assert ns.out == str(tmp_path / arm)
    assert a["baseline"].cycles * a["baseline"].epochs == 160 and a["kd"].epochs == 160
    assert (a["repan"].cycles, a["repan"].epochs) == (5, 30) == (a["repan_kd"].cycles, a["repan_kd"].epochs)
    assert a["repan"].teacher is None and a["baseline"].teacher is None
    for arm in ("kd", "repan_kd"):
        assert (a[arm].kd_alpha, a[arm].kd_T) == (0.9, 10.0)
        assert a[arm].teacher_checkpoint == str(tmp_path / "teacher" / "deploy.safetensors")
    assert a["repan"].model == a["baseline"].model == "repan_repvgg_a1_w025"
    # RepAn as the paper runs it (was the Fashion-MNIST sweep's: cycle 1 plain, a generic conv_kxk + conv_1x1
    # pair): Alg. 1 line 2 fuses before cycle 1 and every Expand re-adds the network's own branch kinds (Sec. 3 (iii))
    for arm in ("repan", "repan_kd"):
        assert a[arm].first_cycle == "expand" and list(a[arm].branches) == ["arch"], arm


def test_imagenet_uses_torchrun_and_a_pretrained_teacher(recipes, tmp_path, capsys):
    assert recipes.main(["imagenet", "--data-dir", "IMNET", "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("--nproc_per_node=8" in line for line in lines)  # no teacher to train
    a = {arm: parse(args) for arm, args in recipes.commands("imagenet", "IMNET", tmp_path).items()}
    assert (a["repan"].cycles, a["repan"].epochs, a["baseline"].epochs) == (3, 40, 120)
    assert a["kd"].teacher_pretrained and a["kd"].kd_alpha == 0.5 and a["kd"].warmup_epochs == 5


def test_finished_arms_are_skipped(recipes, tmp_path, capsys):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "final.json").write_text("{}")
    (tmp_path / "repan" / "checkpoints").mkdir(parents=True)
    assert recipes.main(["cifar100", "--data-dir", "D", "--out", str(tmp_path), "--arms", "baseline", "repan",
                         "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "skip baseline" in out and out.count("repan_zoo.train_cli") == 1 and "--resume" in out

"""One ``repan`` command (repan_zoo.cli): its subcommands, the aliases that keep the old names, one
exit-status table and one message format for all of them, options generated from the config
dataclasses, and ``repan verify``."""
from __future__ import annotations

import argparse
import configparser
import dataclasses
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import pytest
import timm

import repan_zoo
from repan_zoo import cli, publish_cli, train_cli
from repan_zoo.annealing.config import TrainConfig
from repan_zoo.checkpoint import save_checkpoint
from repan_zoo.cli import base
from repan_zoo.cli.options import add_config_options, config_values
from repan_zoo.cli_types import CLI_KEY, OneLineParser, given_options, no_option, number, option
from repan_zoo.detection import cli as detect_cli
from repan_zoo.detection.config import FinetuneConfig
from repan_zoo.errors import (
    CheckpointError, DatasetNotFoundError, RecipeError, ReparameterizationError, TrainingDivergedError,
)
from repan_zoo.expansion import Expansion

from helpers import randomize

ROOT = Path(__file__).resolve().parents[1]
MODEL = "repan_repvgg_a0_w025"
SMALL = ["--input-size", "1", "28", "28", "--num-classes", "10"]
ALIASES = {"train": train_cli, "detect": detect_cli, "publish": publish_cli}


def minimal_argv(name: str, tmp: Path) -> list:
    """A command line of subcommand ``name`` that parses (what it then does is patched away)."""
    return {
        "train": ["--out", str(tmp / "run")],
        "detect": ["--out", str(tmp / "det"), "--data-root", str(tmp)],
        "publish": ["x.safetensors", "--metrics", "m.json", "--tag", "t", "--bundle"],
        "export": [MODEL, "--out", str(tmp / "m.onnx")],
        "profile": [MODEL],
        "list": [],
        "verify": [MODEL],
    }[name]


# -- one command, its subcommands, the old names -------------------------------------------------
def test_repan_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: repan ")
    for name in ("train", "detect", "publish", "export", "profile", "list", "verify"):
        assert f"\n    {name} " in out, name
    assert cli.SUBCOMMANDS == ("train", "detect", "publish", "export", "profile", "list", "verify")


@pytest.mark.parametrize("name", cli.SUBCOMMANDS)
def test_each_subcommand_has_its_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: repan {name} ")


def test_console_scripts_are_repan_and_the_three_aliases(capsys):
    """setup.cfg: ``repan`` plus the old names, each target importable and answering to its name."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert set(scripts) == {"repan", "repan-train", "repan-detect", "repan-publish"}
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        main = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {name} "), name


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_an_alias_has_exactly_the_options_of_its_subcommand(name, tmp_path):
    """``repan-train ARGS`` and ``repan train ARGS`` parse into the same namespace (old command lines keep working)."""
    argv = {
        "train": ["--out", str(tmp_path / "r"), "--lr", "0.05", "--no-nesterov", "--k", "2", "--branches", "conv_1x1",
                  "--import", "a", "--import", "b", "--kd-T", "4", "--train-subset", "all"],
        "detect": ["--out", str(tmp_path / "d"), "--data-root", "x", "--unfold", "--residual", "--export", "onnx",
                   "--out-indices", "1,2", "--no-flip", "--threads", "2"],
        "publish": ["c.safetensors", "--metrics", "m.json", "--tag", "t", "--repo", "o/r", "--out", str(tmp_path)],
    }[name]
    alias = vars(ALIASES[name].build_parser().parse_args(argv))
    sub = vars(cli.build_parser().parse_args([name, *argv]))
    assert sub.pop("command") == name and sub.pop("command_module") is cli.command_module(name)
    sub["_given_options"] -= {"command"}
    assert alias == sub


# -- one exit-status table, one message format ---------------------------------------------------
ERRORS = [
    (RecipeError("bad recipe"), 2),
    (DatasetNotFoundError("no data"), 2),
    (CheckpointError("bad checkpoint"), 2),
    (TrainingDivergedError("loss is nan"), 3),
    (ReparameterizationError("not exact"), 1),
    (base.CheckFailed("a check failed"), 1),
]


@pytest.mark.parametrize("error,code", ERRORS, ids=[type(e).__name__ for e, _ in ERRORS])
def test_the_same_error_exits_the_same_in_every_subcommand_and_alias(error, code, tmp_path, capsys, monkeypatch):
    def fail(args):
        raise error

    for name in cli.SUBCOMMANDS:
        monkeypatch.setattr(cli.command_module(name), "run", fail)
        entries = [(f"repan {name}", lambda argv, name=name: cli.main([name, *argv]))]
        if name in ALIASES:
            entries.append((ALIASES[name].PROG, ALIASES[name].main))
        for prog, main in entries:
            assert main(minimal_argv(name, tmp_path)) == code == base.exit_code(error), prog
            assert capsys.readouterr().err == f"{prog}: error: {error}\n"


def test_exit_table_order_most_specific_first():
    classes = [cls for cls, _ in base.EXIT_CODES]
    for i, a in enumerate(classes):
        assert not any(issubclass(a, b) for b in classes[:i]), f"{a.__name__} is shadowed by an earlier entry"
    assert base.exit_code(ValueError("a bug")) is None  # not a reported error: its traceback is kept


@pytest.mark.parametrize("name", ["train", "detect", "export", "profile", "verify"])
def test_an_unknown_model_is_refused_alike_everywhere(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    option = {"train": ["--model"], "detect": ["--backbone"], "export": [], "profile": [], "verify": []}[name]
    argv = minimal_argv(name, tmp_path)
    argv = [*argv, *option, "no_such_model"] if option else ["no_such_model", *argv[1:]]
    assert cli.main([name, *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"repan {name}: error: unknown model 'no_such_model'"), err


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_usage_errors_are_one_line_exit_2_under_both_names(name, tmp_path, capsys):
    bad = {"train": ["--out", str(tmp_path / "r"), "--lr", "nan"],
           "detect": ["--out", str(tmp_path / "d"), "--k", "9"],
           "publish": ["c", "--metrics", "m", "--tag", "t", "--bundle", "--max-bundle-mb", "0"]}[name]
    messages = []
    for prog, main in ((f"repan {name}", lambda argv: cli.main([name, *argv])), (ALIASES[name].PROG, ALIASES[name].main)):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: error: argument --") and err.count("\n") == 1
        messages.append(err[len(prog):].replace(prog, ""))
    assert messages[0] == messages[1]


def test_list_without_a_match_is_a_failed_check(capsys):
    assert cli.main(["list", "repan_no_such_family_*"]) == 1
    assert capsys.readouterr().err == "repan list: error: no repan model matches 'repan_no_such_family_*'\n"


# -- options generated from the config dataclasses ------------------------------------------------
def test_every_config_field_is_an_option_or_declared_not_one():
    for cls in (TrainConfig, FinetuneConfig, Expansion):
        for f in dataclasses.fields(cls):
            assert CLI_KEY in f.metadata, f"{cls.__name__}.{f.name}"
    parser = train_cli.build_parser()
    dests = {a.dest for a in parser._actions}
    assert set(TrainConfig.recipe_keys()) <= dests  # the flat recipe keys, Expansion's included
    detect = {a.dest for a in detect_cli.build_parser()._actions}
    assert set(FinetuneConfig(out="", train_images="", train_annotations="", val_images="",
                              val_annotations="").as_dict()) - detect == {"compare_images"}


def test_a_new_config_field_becomes_an_option():
    @dataclass(frozen=True)
    class Inner:
        depth: int = field(default=2, metadata=option("how deep", type=number(int, 1)))

    @dataclass
    class Recipe:
        name: str = field(default="a", metadata=option("a name", choices=("a", "b"), group="basics"))
        ratio: float = field(default=0.5, metadata=option(type=number(float, 0.0, 1.0)))
        fast: bool = field(default=True, metadata=option("go fast", negatable=True))
        dry: bool = field(default=False, metadata=option("only check"))
        tags: Tuple[str, ...] = field(default=("x",), metadata=option(type=lambda s: s.split(",")))
        inner: Inner = field(default_factory=Inner, metadata=option(group="inner"))
        seen: Optional[int] = field(default=None, metadata=no_option())

    parser = OneLineParser(prog="t")
    groups = add_config_options(parser, Recipe)
    assert list(groups) == ["basics", "inner"]
    args = parser.parse_args(["--ratio", "0.25", "--no-fast", "--dry", "--depth", "3", "--tags", "p,q"])
    assert config_values(Recipe, args) == {"name": "a", "ratio": 0.25, "fast": False, "dry": True, "tags": ["p", "q"],
                                           "inner": {"depth": 3}}
    assert given_options(args) == {"ratio", "fast", "dry", "depth", "tags"}
    defaults = parser.parse_args([])
    assert defaults.tags == ["x"] and defaults.fast is True and not hasattr(defaults, "seen")
    for bad in (["--ratio", "2"], ["--depth", "0"], ["--name", "c"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)

    @dataclass
    class Forgotten:
        undeclared: int = 1

    with pytest.raises(TypeError, match="Forgotten.undeclared declares no command-line option"):
        add_config_options(OneLineParser(prog="t"), Forgotten)


def test_given_options_seen_through_a_subcommand(tmp_path):
    """``repan train --resume`` overrides the saved recipe with exactly the options given: argparse
    parses a subcommand into a fresh namespace, the parser still records which were given."""
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--lr", "0.2", "--import", "x", "--k", "2"])
    assert given_options(args) >= {"lr", "imports", "k", "out"} and "wd" not in given_options(args)
    assert args.wd == TrainConfig().wd and args.lr == 0.2 and args.imports == ["x"]


@pytest.mark.parametrize("entry", ["repan train", "repan-train"])
def test_resume_overrides_only_what_was_given(entry, tmp_path):
    from repan_zoo.cli.train import _resolve_recipe

    saved = {**TrainConfig().as_dict(), "lr": 0.5, "epochs": 3}
    (tmp_path / "recipe.json").write_text(json.dumps(saved))
    argv = ["--out", str(tmp_path), "--resume", "--lr", "0.1", "--wd", str(saved["wd"]), "--train-subset", "none"]
    args = (cli.build_parser().parse_args(["train", *argv]) if entry == "repan train"
            else train_cli.build_parser().parse_args(argv))
    recipe = _resolve_recipe(args, tmp_path, log=lambda msg: None)
    assert args.recipe_overrides == {"lr": 0.1}  # --wd equals the saved value; None is never an override
    assert recipe["lr"] == 0.1 and recipe["epochs"] == 3  # epochs not given: the saved recipe's


@pytest.mark.parametrize("option,value,saved_lacks", [
    ("--split-seed", "1", None), ("--val-size", "100", None), ("--train-subset", "50", None),
    ("--test-subset", "10", None), ("--dataset", "cifar10", None), ("--img-size", "32", None),
    ("--val-size", "100", "val_size"),  # a recipe.json without the key: the run took the default
    ("--train-subset", "none", None)])  # all images, where the run trained on a subset
def test_resume_refuses_overrides_that_change_the_data_split(tmp_path, option, value, saved_lacks):
    """The split is fixed when a run starts: resuming with another --split-seed / --val-size /
    --train-subset / --dataset would train on images the run validated on (and report val / test
    figures of other images in one curve). Refused before anything is written; --data-dir (the same
    files moved) and the other recipe options stay overridable; a dataset named another way is the
    same dataset; with no checkpoint yet (no epoch trained) the split may still change."""
    from repan_zoo.cli.train import _resolve_recipe
    from repan_zoo.errors import RecipeError

    saved = {k: v for k, v in {**TrainConfig().as_dict(), "train_subset": 5000}.items() if k != saved_lacks}
    (tmp_path / "recipe.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"dir": "ep0001", "progress": {}}))
    args = train_cli.build_parser().parse_args(["--out", str(tmp_path), "--resume", option, value])
    with pytest.raises(RecipeError, match=re.escape(option) + ".*split.*new --out"):
        _resolve_recipe(args, tmp_path, log=lambda msg: None)
    assert json.loads((tmp_path / "recipe.json").read_text()) == saved and not (tmp_path / "resume.json").exists()
    args = train_cli.build_parser().parse_args(["--out", str(tmp_path), "--resume", "--data-dir", str(tmp_path),
                                                "--lr", "0.1", "--dataset", "Fashion-MNIST"])
    _resolve_recipe(args, tmp_path, log=lambda msg: None)
    assert args.recipe_overrides == {"data_dir": str(tmp_path), "lr": 0.1}
    (tmp_path / "checkpoints" / "latest.json").unlink()  # killed before its first epoch completed
    args = train_cli.build_parser().parse_args(["--out", str(tmp_path), "--resume", option, value])
    assert _resolve_recipe(args, tmp_path, log=lambda msg: None)[option[2:].replace("-", "_")] == args.__dict__[
        option[2:].replace("-", "_")]


def test_resume_names_the_recipe_keys_the_saved_recipe_lacks(tmp_path):
    """A recipe.json without some options (written before they existed, or edited) resumes with their
    defaults, and the log says which and what (was: they fell back silently)."""
    from repan_zoo.cli.train import _resolve_recipe

    saved = {k: v for k, v in TrainConfig().as_dict().items() if k not in ("epochs", "wd")}
    (tmp_path / "recipe.json").write_text(json.dumps(saved))
    args = train_cli.build_parser().parse_args(["--out", str(tmp_path), "--resume", "--epochs", "7"])
    logged = []
    recipe = _resolve_recipe(args, tmp_path, log=logged.append)
    assert recipe["epochs"] == 7 and "wd" not in recipe
    missing = [m for m in logged if "recipe.json has no" in m]
    assert len(missing) == 1 and f"wd={TrainConfig().wd!r}" in missing[0] and "epochs" not in missing[0]


# -- repan verify ----------------------------------------------------------------------------------
def test_verify_a_fresh_model_with_random_bn_statistics(capsys):
    assert cli.main(["verify", MODEL, *SMALL, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["random_bn"] and r["exact"] and r["input_shape"] == [2, 1, 28, 28]
    for step in ("reparameterize", "unfold", "round_trip"):
        assert 0 < r[step]["model_rel_error"] <= 1e-5, step
    assert r["reparameterize"]["worst_block"] and r["reparameterize"]["worst_block_rel_error"] <= 1e-5


def test_verify_a_checkpoint_prints_the_figures(tmp_path, capsys):
    model = randomize(timm.create_model(MODEL, num_classes=10, in_chans=1), seed=3)
    ckpt = save_checkpoint(repan_zoo.reparameterize(model), tmp_path / "d.safetensors", architecture=MODEL)
    assert cli.main(["verify", MODEL, *SMALL, "--checkpoint", str(ckpt), "--branches", "conv_kxk,conv_1x1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{MODEL} (BN statistics of the weights; probe 2×1×28×28; tolerance 1e-05)")
    assert [line.split()[0] for line in lines[1:]] == ["reparameterize", "unfold", "round_trip"]


def test_verify_beyond_the_tolerance_exits_1(capsys):
    assert cli.main(["verify", MODEL, *SMALL, "--tolerance", "1e-12"]) == 1
    assert capsys.readouterr().err.startswith("repan verify: error: ")


def test_verify_refuses_an_expansion_that_fits_no_block(capsys):
    assert cli.main(["verify", "repan_resnet18_w025", *SMALL]) == 2  # plain blocks: no branch kinds of their own
    err = capsys.readouterr().err
    assert "name the kinds to attach" in err and "--branches conv_kxk,conv_1x1" in err  # the flag, not only Python


def test_run_options_parse_the_same_in_train_and_detect(tmp_path):
    argv = ["--out", str(tmp_path / "o"), "--device", "cpu", "--workers", "1", "--threads", "2", "--resume"]
    t = train_cli.build_parser().parse_args(argv)
    d = detect_cli.build_parser().parse_args(argv)
    for k in ("out", "device", "workers", "threads", "resume"):
        assert getattr(t, k) == getattr(d, k), k
    assert isinstance(t, argparse.Namespace) and t.progress is None and d.progress is True  # their own defaults


@pytest.mark.parametrize("value,expected", [("0", None), ("none", None), ("2.5", 2.5)])
def test_detect_clip_grad_zero_or_none_turns_clipping_off_and_the_config_checks(tmp_path, value, expected):
    from repan_zoo.cli.detect import config_from_args

    args = detect_cli.build_parser().parse_args(["--out", str(tmp_path / "o"), "--data-root", str(tmp_path),
                                                 "--clip-grad", value])
    cfg = config_from_args(args)
    cfg.check()
    assert cfg.clip_grad == expected

"""Every argparse help string in the repository formats: argparse expands ``%(default)s`` and the
like in each help text when ``--help`` is printed, so a bare ``%`` ("21 % accuracy") turns ``--help``
into a traceback (``benchmarks/inference.py --help`` did). Checked statically over all scripts and
the package, without running any of them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("repan_zoo", "benchmarks", "train_scripts", "tests")


class _Params(dict):
    """What argparse offers a help string: ``%(name)s`` for any name."""

    def __missing__(self, key):
        return ""


def help_strings():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                    for kw in node.keywords:
                        if kw.arg == "help" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            yield f"{path.relative_to(ROOT)}:{kw.value.lineno}", kw.value.value


HELP_STRINGS = list(help_strings())  # parsed once, at collection


def test_there_are_help_strings_to_check():
    assert len(HELP_STRINGS) > 100


@pytest.mark.parametrize("where,text", [pytest.param(w, t, id=w) for w, t in HELP_STRINGS if "%" in t])
def test_help_string_formats(where, text):
    try:
        text % _Params()
    except (ValueError, TypeError, KeyError) as exc:
        pytest.fail(f"{where}: help text {text!r} does not format ({exc}); write a literal percent sign as '%%'")

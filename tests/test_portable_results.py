"""Committed result files and the weights manifest name no path of one machine (issue #14, point 8):
a recipe that says ``/work/main/runs/...`` or ``/root/...`` cannot be followed anywhere else."""
import json
import re
from pathlib import Path

import pytest

from repan_zoo.runtime.report import portable

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = [ROOT / "weights_manifest", ROOT / "benchmarks" / "results", ROOT / "benchmarks" / "accuracy" / "results"]
#: an absolute path into a machine's own folders (a user's home, a checkout, temp, an interpreter, a dataset copy)
MACHINE_PATH = re.compile(r"(?<![\w.$~-])/(?:work|root|home|Users|tmp|usr|opt|var|mnt|srv|data|scratch)/")


def _text_files():
    for base in COMMITTED:
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".txt", ".md", ".csv"):
                yield path


def test_there_are_result_files_to_check():
    assert len(list(_text_files())) > 20


def test_no_committed_result_file_names_a_machine_path():
    offenders = {}
    for path in _text_files():
        hits = MACHINE_PATH.findall(path.read_text(errors="replace"))
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits[:3]
    assert not offenders, f"absolute machine paths in committed files: {offenders}"


def test_no_bundled_weight_file_names_a_machine_path_in_its_metadata():
    """The shipped files carry their recipe in the safetensors header (``safe_open(...).metadata()``):
    a published recipe too (was: the teacher's and the start's absolute paths on the training machine)."""
    from safetensors import safe_open

    from repan_zoo import manifest

    files = sorted((ROOT / "repan_zoo" / "weights").glob("*.safetensors"))
    assert files and {e.filename for e in manifest.load_manifest().values() if e.source == "bundled"} <= {
        f.name for f in files}
    offenders = {}
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        hits = [hit for value in meta.values() for hit in MACHINE_PATH.findall(value)]
        if hits:
            offenders[path.name] = hits[:3]
    assert not offenders, f"absolute machine paths in the metadata of bundled weights: {offenders}"


def test_the_guard_catches_what_it_is_for():
    for bad in ['"/work/main/runs/teacher/deploy.safetensors"', "python /root/.pyenv/bin/python", '"/tmp/x"']:
        assert MACHINE_PATH.search(bad)
    for fine in ['"$REPAN_RUNS/long/main/teacher/deploy.safetensors"', "debian:dataset-fashion-mnist", "a/b/c"]:
        assert not MACHINE_PATH.search(fine)


def test_portable_rewrites_nested_values_longest_prefix_first():
    roots = {"/w/runs": "$REPAN_RUNS", "/w/": "", "/usr/bin/python3": "python"}
    value = {"cmd": "/usr/bin/python3 -m x --out /w/runs/a", "list": ["/w/runs/b", 3, None], "file": "/w/setup.cfg"}
    assert portable(value, roots) == {"cmd": "python -m x --out $REPAN_RUNS/a", "list": ["$REPAN_RUNS/b", 3, None],
                                      "file": "setup.cfg"}
    assert json.dumps(portable(value, roots))

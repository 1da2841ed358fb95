"""repan_zoo.manifest: the schema, reading and writing the family files, the timm cfgs it drives,
and where an installed package finds it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repan_zoo import manifest
from repan_zoo.errors import ManifestError
from repan_zoo.manifest import WeightEntry

REPO_ROOT = Path(__file__).resolve().parents[1]


def hub_entry(**change):
    d = {
        "model": "repan_repvgg_a0_w025", "tag": "fmnist", "source": "hub", "hf_hub_id": "org/repvgg",
        "revision": "a" * 40, "filename": "model.safetensors", "sha256": "b" * 64, "size": 1234,
        "num_classes": 10, "input_size": [1, 28, 28], "mean": [0.286], "std": [0.353],
        "metrics": {"fashion_mnist": {"top1": 91.5}}, "recipe": {"method": "repan", "cycles": 5},
        "exactness": {"model_rel_error": 3e-7, "tolerance": 1e-5}, "license": "apache-2.0",
    }
    d.update(change)
    return {k: v for k, v in d.items() if v is not None}


def bundled_entry(**change):
    fields = dict(source="bundled", hf_hub_id=None, revision=None, filename="a0-fmnist.safetensors")
    fields.update(change)
    return hub_entry(**fields)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(tmp_path / "manifest"))
    monkeypatch.setenv("REPAN_ZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    manifest.reload_manifest()
    yield tmp_path / "manifest"
    manifest.reload_manifest()


def write_family(folder: Path, name: str, entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"family": name, "entries": entries}))
    manifest.reload_manifest()
    return path


def test_entry_round_trip_keeps_unknown_fields():
    raw = hub_entry(model_kwargs={"width_mult": 0.25}, notes="x")
    entry = WeightEntry.from_dict(raw)
    assert entry.name == "repan_repvgg_a0_w025.fmnist" and entry.input_size == (1, 28, 28)
    assert entry.extra == {"model_kwargs": {"width_mult": 0.25}, "notes": "x"}
    assert entry.as_dict() == raw
    assert WeightEntry.from_dict(bundled_entry()).hf_hub_id is None


@pytest.mark.parametrize("change, words", [
    ({"sha256": None}, "lacks field"),
    ({"source": "url"}, "source must be one of"),
    ({"revision": "main"}, "40-character commit"),
    ({"revision": None}, "40-character commit"),
    ({"hf_hub_id": "no-namespace"}, "hf_hub_id"),
    ({"sha256": "B" * 64}, "sha256"),
    ({"size": 0}, "size"),
    ({"size": True}, "size"),
    ({"num_classes": -1}, "num_classes"),
    ({"input_size": [1, 28]}, "input_size"),
    ({"mean": [0.1, 0.2]}, "mean must hold C=1"),
    ({"std": [0.0]}, "std values must be positive"),
    ({"metrics": {}}, "metrics"),
    ({"metrics": {"fashion_mnist": {"top5": 99.0}}}, "numeric top-1"),
    ({"exactness": "ok"}, "exactness must be an object"),
    ({"license": " "}, "license"),
    ({"filename": "model.bin"}, "safetensors"),
    ({"filename": "../escape.safetensors"}, "relative path"),
    ({"tag": "bad tag"}, "tag"),
])
def test_schema_violations_are_named(change, words):
    with pytest.raises(ManifestError, match=words) as info:
        WeightEntry.from_dict(hub_entry(**change), where="repvgg.json")
    assert "repvgg.json" in str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"filename": "sub/a.safetensors"}, "plain file name"),
    ({"revision": "a" * 40}, "has no revision"),
])
def test_bundled_entries_are_plain_package_files(change, words):
    with pytest.raises(ManifestError, match=words):
        WeightEntry.from_dict(bundled_entry(**change))


def test_load_validates_every_file(folder):
    write_family(folder, "repvgg", [hub_entry(), hub_entry(tag="cifar", num_classes=100)])
    entries = manifest.load_manifest()
    assert list(entries) == [("repan_repvgg_a0_w025", "fmnist"), ("repan_repvgg_a0_w025", "cifar")]
    assert manifest.find_entry("repan_repvgg_a0_w025").tag == "fmnist"  # first listed is the default
    assert manifest.find_entry("repan_repvgg_a0_w025", "cifar").num_classes == 100
    assert manifest.find_entry("repan_repvgg_a0_w025", "nope") is None

    write_family(folder, "other", [hub_entry()])
    with pytest.raises(ManifestError, match="listed twice"):
        manifest.load_manifest(strict=True)
    (folder / "other.json").write_text("{not json")
    manifest.reload_manifest()
    with pytest.raises(ManifestError, match="not valid JSON"):
        manifest.load_manifest(strict=True)
    (folder / "other.json").write_text(json.dumps({"family": "other", "entries": [hub_entry(size=-5, tag="x")]}))
    manifest.reload_manifest()
    with pytest.raises(ManifestError, match="other.json entry repan_repvgg_a0_w025.x: size"):
        manifest.load_manifest(strict=True)


def test_write_entry_replaces_in_place_atomically(folder):
    first = WeightEntry.from_dict(hub_entry())
    second = WeightEntry.from_dict(hub_entry(tag="cifar"))
    file = manifest.write_entry(first)
    assert file == folder / "repvgg.json"  # family from the model name
    manifest.write_entry(second)
    manifest.write_entry(WeightEntry.from_dict(hub_entry(revision="c" * 40)))  # republished: same tag
    doc = json.loads(file.read_text())
    assert [(e["tag"], e["revision"]) for e in doc["entries"]] == [("fmnist", "c" * 40), ("cifar", "a" * 40)]
    assert manifest.find_entry("repan_repvgg_a0_w025").revision == "c" * 40
    assert sorted(p.name for p in folder.iterdir()) == ["repvgg.json"]  # no temp files left
    with pytest.raises(ManifestError, match="already listed in repvgg.json"):
        manifest.write_entry(first, family="elsewhere")


def test_family_names():
    assert manifest.family_for("repan_repvgg_a0_w025") == "repvgg"
    assert manifest.family_for("repan_mobileone_s0") == "mobileone"
    assert manifest.family_for("repan_resnet50_dbb") == "resnet"


def test_timm_cfgs_follow_the_manifest(folder, tmp_path):
    base = {"num_classes": 1000, "input_size": (3, 224, 224), "first_conv": "stem", "classifier": "head.fc"}
    assert manifest.timm_cfgs("repan_repvgg_a0_w025", base) == {"repan_repvgg_a0_w025": base}
    write_family(folder, "repvgg", [hub_entry(), bundled_entry(tag="small")])
    # entries for another input / class count than the architecture's: tags after the bare cfg, which
    # stays timm's default (models/repan.py keeps it in front)
    cfgs = manifest.timm_cfgs("repan_repvgg_a0_w025", base)
    assert list(cfgs) == ["repan_repvgg_a0_w025", "repan_repvgg_a0_w025.fmnist", "repan_repvgg_a0_w025.small"]
    fitting = dict(base, num_classes=10, input_size=(1, 28, 28))
    cfgs = manifest.timm_cfgs("repan_repvgg_a0_w025", fitting)
    assert list(cfgs) == ["repan_repvgg_a0_w025.fmnist", "repan_repvgg_a0_w025.small"]
    hub_cfg, bundled_cfg = cfgs.values()
    assert hub_cfg["hf_hub_id"] == "org/repvgg@" + "a" * 40 and hub_cfg["hf_hub_filename"] == "model.safetensors"
    assert (hub_cfg["num_classes"], hub_cfg["input_size"], hub_cfg["mean"]) == (10, (1, 28, 28), (0.286,))
    assert hub_cfg["first_conv"] == "stem" and "file" not in hub_cfg
    assert bundled_cfg["file"] == str(tmp_path / "weights" / "a0-fmnist.safetensors") and "hf_hub_id" not in bundled_cfg


def test_manifest_location(monkeypatch, tmp_path):
    monkeypatch.delenv("REPAN_ZOO_MANIFEST_DIR", raising=False)
    assert manifest.manifest_dir() == REPO_ROOT / "weights_manifest"  # source checkout
    installed = tmp_path / "site-packages" / "repan_zoo"
    monkeypatch.setattr(manifest, "_package_dir", lambda: installed)
    assert manifest.manifest_dir() == installed / "weights" / "manifest"
    assert manifest.bundled_dir() == installed / "weights"
    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(tmp_path / "mine"))
    assert manifest.manifest_dir() == tmp_path / "mine"


def test_build_copies_the_manifest_into_the_package(tmp_path, monkeypatch):
    """setup.py's build_py puts weights_manifest/*.json into repan_zoo/weights/manifest/ (what a wheel holds),
    where the installed package finds it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "repan_zoo", src / "repan_zoo", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    write_family(src / "weights_manifest", "repvgg", [hub_entry()])
    build = tmp_path / "build"
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
        cwd=src, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    packaged = build / "repan_zoo" / "weights" / "manifest" / "repvgg.json"
    assert json.loads(packaged.read_text())["entries"] == [hub_entry()]
    monkeypatch.delenv("REPAN_ZOO_MANIFEST_DIR", raising=False)
    monkeypatch.setattr(manifest, "_package_dir", lambda: build / "repan_zoo")
    manifest.reload_manifest()
    try:
        assert manifest.find_entry("repan_repvgg_a0_w025", "fmnist").revision == "a" * 40
    finally:
        manifest.reload_manifest()

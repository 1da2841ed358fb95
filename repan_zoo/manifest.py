"""The weights manifest: one JSON file per model family under ``weights_manifest/``.

A weight is a value carrying its metrics, recipe and preprocessing (as torchvision's
``WeightsEnum``): each entry says where the bytes are (a Hugging Face Hub repo pinned to
a 40-character commit, or a file bundled in the package), what they must hash to, and
what they measured. The manifest drives timm's ``pretrained_cfg`` (``model.tag`` names).

File layout::

    {"family": "repvgg", "entries": [ {<entry>}, ... ]}

Entry fields (validated on load, see :data:`REQUIRED_FIELDS` and ``weights_manifest/README.md``):
``model``, ``tag``, ``source`` ("hub" | "bundled"), ``hf_hub_id`` + ``revision`` (hub),
``filename``, ``sha256``, ``size``, ``num_classes``, ``input_size``, ``mean``, ``std``,
``metrics`` (dataset → top-1), ``recipe``, ``exactness``, ``license``. Unknown fields are
kept (``WeightEntry.extra``) and written back unchanged.

Where the manifest is read from (:func:`manifest_dir`): ``$REPAN_ZOO_MANIFEST_DIR``; else the
repository's top-level ``weights_manifest/`` (source checkout / editable install: the source
of truth); else ``repan_zoo/weights/manifest/`` inside the installed package, which the build
(``setup.py``'s ``build_py``) fills with a copy of ``weights_manifest/*.json`` so that a wheel
carries the manifest. Bundled weight files live in ``repan_zoo/weights/`` (package data),
or ``$REPAN_ZOO_WEIGHTS_DIR``.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import ManifestError
from .jsonio import is_number

__all__ = [
    "ManifestError",
    "WeightEntry",
    "manifest_dir",
    "bundled_dir",
    "load_manifest",
    "reload_manifest",
    "entries_for",
    "find_entry",
    "name_for_sha256",
    "published_recipe",
    "check_weights_available",
    "family_for",
    "check_entry",
    "write_entry",
    "remove_entry",
    "is_valid_tag",
    "is_valid_repo_id",
    "timm_cfgs",
    "REQUIRED_FIELDS",
    "SOURCES",
]

REQUIRED_FIELDS = (
    "model", "tag", "source", "filename", "sha256", "size", "num_classes", "input_size",
    "mean", "std", "metrics", "recipe", "exactness", "license",
)
SOURCES = ("hub", "bundled")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*/[A-Za-z0-9][A-Za-z0-9_\-.]*$")


@dataclass(frozen=True)
class WeightEntry:
    """One published weight: where its bytes are, what they hash to, what they measured."""

    model: str
    tag: str
    source: str
    filename: str
    sha256: str
    size: int
    num_classes: int
    input_size: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    metrics: Dict[str, Any]
    recipe: Dict[str, Any]
    exactness: Dict[str, Any]
    license: str
    hf_hub_id: Optional[str] = None
    revision: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        extra = d.pop("extra")
        d.update(extra)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "manifest") -> "WeightEntry":
        """Validate ``d`` against the schema and build the entry; :class:`ManifestError` names the field."""
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: every entry must be a JSON object, got {type(d).__name__}")
        label = f"{where} entry {d.get('model', '?')}.{d.get('tag', '?')}"
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise ManifestError(f"{label} lacks field(s) {missing}; every entry needs {list(REQUIRED_FIELDS)}")
        _validate(d, label)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in d.items() if k not in known}
        kwargs = {k: d[k] for k in known if k in d}
        kwargs["input_size"] = tuple(int(v) for v in d["input_size"])
        kwargs["mean"], kwargs["std"] = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        return cls(**kwargs, extra=extra)


def _validate(d: Dict[str, Any], label: str) -> None:
    def fail(what: str) -> None:
        raise ManifestError(f"{label}: {what} (schema: weights_manifest/README.md)")

    if not isinstance(d["model"], str) or not _NAME.match(d["model"]):
        fail(f"model must be a timm model name, got {d['model']!r}")
    if not isinstance(d["tag"], str) or not _TAG.match(d["tag"]):
        fail(f"tag must be a non-empty name of letters, digits, '_', '-', '.', got {d['tag']!r}")
    if d["source"] not in SOURCES:
        fail(f"source must be one of {SOURCES}, got {d['source']!r}")
    filename = d["filename"]
    parts = str(filename).replace("\\", "/").split("/")
    if not isinstance(filename, str) or not filename or filename.startswith("/") or ".." in parts:
        fail(f"filename must be a relative path inside the repo / weights folder, got {filename!r}")
    if not filename.endswith(".safetensors"):
        fail(f"filename must be a .safetensors file (weights are never pickles), got {filename!r}")
    if d["source"] == "hub":
        if not isinstance(d.get("hf_hub_id"), str) or not _REPO_ID.match(d["hf_hub_id"]):
            fail(f"a hub entry needs hf_hub_id 'org/name', got {d.get('hf_hub_id')!r}")
        if not _COMMIT.match(str(d.get("revision", ""))):
            fail(f"revision must be a 40-character commit hash (a branch or tag can move), got {d.get('revision')!r}")
    else:
        if len(parts) != 1:
            fail(f"a bundled filename is a plain file name in repan_zoo/weights/, got {filename!r}")
        for key in ("hf_hub_id", "revision"):
            if d.get(key) is not None:
                fail(f"a bundled entry has no {key} (set source='hub' for Hub weights)")
    if not isinstance(d["sha256"], str) or not _SHA256.match(d["sha256"]):
        fail("sha256 must be 64 lowercase hex digits")
    if not isinstance(d["size"], int) or isinstance(d["size"], bool) or d["size"] <= 0:
        fail(f"size must be a positive byte count, got {d['size']!r}")
    if not isinstance(d["num_classes"], int) or isinstance(d["num_classes"], bool) or d["num_classes"] <= 0:
        fail(f"num_classes must be a positive integer, got {d['num_classes']!r}")
    size = d["input_size"]
    if (
        not isinstance(size, (list, tuple)) or len(size) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        fail(f"input_size is [C, H, W] of positive integers, got {size!r}")
    for key in ("mean", "std"):
        vals = d[key]
        if not isinstance(vals, (list, tuple)) or len(vals) != size[0] or not all(is_number(v) for v in vals):
            fail(f"{key} must hold C={size[0]} numbers (one per input channel), got {vals!r}")
    if any(float(v) <= 0 for v in d["std"]):
        fail("std values must be positive")
    metrics = d["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        fail("metrics must map dataset → top-1 (a number, or an object with 'top1'); it is empty or not an object")
    for dataset, value in metrics.items():
        top1 = value.get("top1") if isinstance(value, dict) else value
        if not is_number(top1):
            fail(f"metrics[{dataset!r}] needs a numeric top-1, got {value!r}")
    for key in ("recipe", "exactness"):
        if not isinstance(d[key], dict):
            fail(f"{key} must be an object")
    if not isinstance(d["license"], str) or not d["license"].strip():
        fail("license must be a non-empty SPDX-style identifier, e.g. 'apache-2.0'")


def is_valid_tag(tag: Any) -> bool:
    """A pretrained tag: letters, digits, ``_``, ``-``, ``.`` (``fmnist``, ``fmnist_repan.r5``)."""
    return isinstance(tag, str) and bool(_TAG.match(tag))


def is_valid_repo_id(repo_id: Any) -> bool:
    """A Hub model repo id ``org/name``."""
    return isinstance(repo_id, str) and bool(_REPO_ID.match(repo_id))


# -- locations -------------------------------------------------------------------------------
def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def manifest_dir() -> Path:
    """``$REPAN_ZOO_MANIFEST_DIR``, else the repository's ``weights_manifest/`` (a source checkout,
    recognised by its ``setup.cfg``), else the copy installed inside the package
    (``repan_zoo/weights/manifest``)."""
    env = os.environ.get("REPAN_ZOO_MANIFEST_DIR")
    if env:
        return Path(env)
    here = _package_dir()
    repo = here.parent / "weights_manifest"
    if repo.is_dir() and (here.parent / "setup.cfg").is_file():
        return repo
    return here / "weights" / "manifest"


def bundled_dir() -> Path:
    """Folder of the bundled (``source: bundled``) weight files: ``$REPAN_ZOO_WEIGHTS_DIR`` or
    ``repan_zoo/weights/`` inside the package."""
    env = os.environ.get("REPAN_ZOO_WEIGHTS_DIR")
    return Path(env) if env else _package_dir() / "weights"


# -- reading ---------------------------------------------------------------------------------
def _read_document(file: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{file} is not valid JSON: {exc}; fix or restore it (git checkout the file)") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ManifestError(f"{file} must hold {{'family': ..., 'entries': [...]}}")
    return doc


@dataclass(frozen=True)
class _Scan:
    entries: Dict[Tuple[str, str], WeightEntry]
    #: (file stem, models its entries name, as far as they can be read, the error) per malformed file
    broken: Tuple[Tuple[str, frozenset, ManifestError], ...]


def _models_named(file: Path) -> frozenset:
    try:
        rows = json.loads(file.read_text(encoding="utf-8")).get("entries", [])
        return frozenset(r.get("model") for r in rows if isinstance(r, dict) and isinstance(r.get("model"), str))
    except (ValueError, AttributeError, OSError):
        return frozenset()


@lru_cache(maxsize=8)
def _scan(directory: str) -> _Scan:
    """Every file of the folder, validated file by file: a malformed file (bad JSON, an entry off
    the schema, a duplicate) is set aside whole, with its error, and a warning names it."""
    entries: Dict[Tuple[str, str], WeightEntry] = {}
    broken = []
    path = Path(directory)
    for file in sorted(path.glob("*.json")) if path.is_dir() else []:
        new: Dict[Tuple[str, str], WeightEntry] = {}
        try:
            for raw in _read_document(file)["entries"]:
                entry = WeightEntry.from_dict(raw, where=file.name)
                key = (entry.model, entry.tag)
                if key in entries or key in new:
                    raise ManifestError(f"{file.name}: {entry.name} is listed twice; keep one entry per model and tag")
                new[key] = entry
        except ManifestError as exc:
            broken.append((file.stem, _models_named(file), exc))
            warnings.warn(f"weights manifest: {exc}. The entries of {file.name} are skipped; the models themselves "
                          "still work (pretrained=False)", stacklevel=2)
            continue
        entries.update(new)
    return _Scan(entries, tuple(broken))


def _load(directory: str) -> Dict[Tuple[str, str], WeightEntry]:
    return _scan(directory).entries


def load_manifest(directory: Optional[os.PathLike] = None, *, strict: bool = False) -> Dict[Tuple[str, str], WeightEntry]:
    """All valid entries, keyed by ``(model, tag)`` (cached per folder, see :func:`reload_manifest`).
    A malformed file is skipped with a warning; ``strict=True`` raises its :class:`ManifestError`."""
    scan = _scan(str(directory or manifest_dir()))
    if strict and scan.broken:
        raise scan.broken[0][2]
    return scan.entries


def check_weights_available(model: str, directory: Optional[os.PathLike] = None) -> None:
    """Raise the :class:`ManifestError` of a malformed manifest file that lists ``model`` (or is
    its family's file): weights asked from a broken file fail with its precise error."""
    for stem, models, exc in _scan(str(directory or manifest_dir())).broken:
        if model in models or stem == family_for(model):
            raise exc


def reload_manifest() -> None:
    """Forget the cached manifests (after the files were edited)."""
    _scan.cache_clear()


def entries_for(model: str, directory: Optional[os.PathLike] = None) -> List[WeightEntry]:
    return [e for (m, _), e in load_manifest(directory).items() if m == model]


def find_entry(model: str, tag: Optional[str] = None, directory: Optional[os.PathLike] = None) -> Optional[WeightEntry]:
    """The entry for ``model`` and ``tag`` (the first listed one when ``tag`` is None). Raises the
    :class:`ManifestError` of a malformed manifest file that lists the model."""
    check_weights_available(model, directory)
    entries = entries_for(model, directory)
    if tag is None:
        return entries[0] if entries else None
    return next((e for e in entries if e.tag == tag), None)


def name_for_sha256(sha256: Optional[str], directory: Optional[os.PathLike] = None) -> Optional[str]:
    """``'model.tag'`` of the first entry whose file has this sha256 (the published name of a
    checkpoint known by content, e.g. a KD teacher); ``None`` when none has, or ``sha256`` is empty."""
    if not sha256:
        return None
    return next((f"{m}.{t}" for (m, t), e in load_manifest(directory).items() if e.sha256 == sha256), None)


#: recipe options holding a path of the training machine (never published as such)
_PATH_OPTIONS = ("data_dir", "teacher_checkpoint", "init_checkpoint")


def published_recipe(recipe: Dict[str, Any], teacher: Any = None, init: Any = None,
                     resumed_with: Any = None) -> Dict[str, Any]:
    """The recipe as published: the teacher and the starting weights named by content and, where
    the zoo ships them, by manifest name (``teacher_weights``: model, sha256, ``model.tag``;
    ``init_weights``: sha256, ``model.tag``) instead of ``teacher_checkpoint`` / ``init_checkpoint``,
    paths on the training machine that no reader can follow; and no ``data_dir`` (where the dataset
    lay there, e.g. a copy of Debian's Fashion-MNIST files beside a GPU machine's checkout:
    ``dataset`` names the data). ``teacher`` and ``init`` are ``final.json``'s records of them
    (``checkpoint_sha256``); without one, the sha256 of the path's file where it still exists.
    The recipe of a manifest entry, and the one the trainer writes into a deploy checkpoint's
    metadata (the file that gets published): neither names a path of the training machine.
    ``resumed_with`` (``final.json``'s recipe changes on resumes) is kept as ``resumed_with`` with
    the changed paths named by option only (``changed_paths``)."""
    recipe = dict(recipe)
    if resumed_with:
        recipe["resumed_with"] = [_published_change(c) for c in resumed_with]
    paths = {k: recipe.pop(k, None) for k in _PATH_OPTIONS}
    teacher_path, init_path = paths["teacher_checkpoint"], paths["init_checkpoint"]
    if init_path:
        recipe["init_weights"] = _weights_by_content(init_path, init)
    if recipe.get("teacher"):
        recipe["teacher_weights"] = {"model": recipe["teacher"], **_weights_by_content(teacher_path, teacher)}
        source = teacher.get("pretrained_source") if isinstance(teacher, dict) else None
        if not recipe["teacher_weights"]["sha256"] and isinstance(source, dict):  # timm's weights, not pinned
            recipe["teacher_weights"]["source"] = {k: source[k] for k in ("architecture", "tag", "hf_hub_id", "url")
                                                   if source.get(k)}
    return recipe


def _published_change(change: Any) -> Any:
    """One ``resumed_with`` record without paths: path options moved to ``changed_paths`` by name."""
    if not isinstance(change, dict) or not isinstance(change.get("overrides"), dict):
        return change
    overrides = change["overrides"]
    out = {**change, "overrides": {k: v for k, v in overrides.items() if k not in _PATH_OPTIONS}}
    paths = [k for k in overrides if k in _PATH_OPTIONS]
    if paths:
        out["changed_paths"] = paths
    return out


def _weights_by_content(path: Optional[str], record: Any) -> Dict[str, Any]:
    """``{"sha256", "manifest"}`` of weights a recipe used: the sha256 from the run's ``record``
    (``checkpoint_sha256``), else of ``path``'s file where it exists (None when neither); the
    manifest name that ships those bytes now, else the one the run recorded when it trained (a
    checkpoint superseded since keeps its name in the recipes that started from it)."""
    sha = record.get("checkpoint_sha256") if isinstance(record, dict) else None
    if path and not sha and Path(path).is_file():
        from .fileio import sha256_file

        sha = sha256_file(path)
    recorded = record.get("manifest") if isinstance(record, dict) else None
    return {"sha256": sha, "manifest": name_for_sha256(sha) or recorded}


# -- writing ---------------------------------------------------------------------------------
def family_for(model: str) -> str:
    """Manifest file (family) of a model name: its first word after ``repan_``, without a trailing
    depth: ``repan_repvgg_a0`` → ``repvgg``, ``repan_resnet50_dbb`` → ``resnet``, ``repan_mobileone_s0``
    → ``mobileone``."""
    name = model[len("repan_"):] if model.startswith("repan_") else model
    return re.sub(r"\d+$", "", name.split("_", 1)[0]) or model


def check_entry(entry: WeightEntry, *, family: Optional[str] = None, directory: Optional[os.PathLike] = None) -> Path:
    """What :func:`write_entry` checks before it writes, with nothing written: the schema, the family
    name, that ``model.tag`` is not listed in another family file, and that the family file can be
    written (no file in the way of its folder). Returns the family file. Raises
    :class:`ManifestError` (or ``OSError`` for the path), so a caller can check before it writes
    anything else (the weights a bundle copies)."""
    from .fileio import check_file_target

    WeightEntry.from_dict(entry.as_dict(), where="new")  # the schema
    folder = Path(directory or manifest_dir())
    family = family or family_for(entry.model)
    if not _NAME.match(family):
        raise ManifestError(f"family {family!r} is not a valid file name (letters, digits, '_', '-')")
    file = check_file_target(folder / f"{family}.json")
    other = _file_listing(folder, entry.model, entry.tag)
    if other is not None and other != file:
        raise ManifestError(
            f"{entry.name} is already listed in {other.name}; update it there (pass that family) or use another tag"
        )
    return file


def write_entry(entry: WeightEntry, *, family: Optional[str] = None, directory: Optional[os.PathLike] = None,
                default: bool = False) -> Path:
    """Add ``entry`` to ``<directory>/<family>.json``, replacing the entry of the same model and tag
    (in place, so the listed order, and hence timm's default tag, is kept). ``default=True`` lists it
    first among its model's entries instead, so that ``timm.create_model(model, pretrained=True)``
    (no tag) loads it. Written atomically; the whole folder is re-validated afterwards. Returns the file."""
    file = check_entry(entry, family=family, directory=directory)
    folder = file.parent
    doc = _read_document(file) if file.exists() else {"family": family or family_for(entry.model), "entries": []}
    new = entry.as_dict()
    rows = doc["entries"]
    same = [i for i, row in enumerate(rows) if _is_row(row, entry.model, entry.tag)]
    if default:
        rows[:] = [row for i, row in enumerate(rows) if i not in same]
        first = next((i for i, row in enumerate(rows) if row.get("model") == entry.model), len(rows))
        rows.insert(first, new)
    elif same:
        rows[same[0]] = new
    else:
        rows.append(new)
    _write_document(file, doc, folder)
    return file


def remove_entry(model: str, tag: str, *, directory: Optional[os.PathLike] = None) -> Tuple[WeightEntry, Path]:
    """Take ``model.tag`` out of the manifest (its family file, written atomically, the folder
    re-validated). Returns the removed entry and the file it was in. The weight file itself is
    not touched: a Hub revision stays downloadable by its pinned commit, and a bundled file is the
    caller's to delete (:func:`repan_zoo.hub.publish.retire` does both steps).

    Raises:
        ManifestError: ``model.tag`` is not listed (the message names the tags that are).
    """
    folder = Path(directory or manifest_dir())
    file = _file_listing(folder, model, tag)
    if file is None:
        listed = sorted(t for (m, t) in load_manifest(folder) if m == model)
        raise ManifestError(f"{model}.{tag} is not in the weights manifest ({folder}); listed tags of {model}: "
                            f"{', '.join(listed) or 'none'}")
    doc = _read_document(file)
    i = next(i for i, row in enumerate(doc["entries"]) if _is_row(row, model, tag))
    removed = WeightEntry.from_dict(doc["entries"].pop(i), where=file.name)
    _write_document(file, doc, folder)
    return removed, file


def _is_row(row: Dict[str, Any], model: str, tag: str) -> bool:
    return (row.get("model"), row.get("tag")) == (model, tag)


def _file_listing(folder: Path, model: str, tag: str) -> Optional[Path]:
    """The family file of ``folder`` whose entries hold ``model.tag`` (None: no file does)."""
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if any(_is_row(row, model, tag) for row in _read_document(file)["entries"]):
            return file
    return None


def _write_document(file: Path, doc: Dict[str, Any], folder: Path) -> None:
    from .fileio import atomic_write

    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    reload_manifest()
    load_manifest(folder, strict=True)  # fail loudly now, as the writer, rather than warn at the next import


# -- timm ------------------------------------------------------------------------------------
def timm_cfgs(model: str, base: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """timm ``default_cfgs`` for ``model``: one ``model.tag`` cfg per manifest entry (listed order,
    the first is the default), or the bare ``base`` cfg when the manifest has none. Entries for
    another input or class count than ``base`` (Fashion-MNIST weights of an ImageNet
    architecture) come after the others and, when no entry fits ``base``, after ``base`` itself:
    ``timm.create_model("repan_mobileone_s0")`` stays the ImageNet network.

    Hub entries set ``hf_hub_id='org/name@<revision>'`` (timm's own pinning syntax); bundled
    entries set ``file`` to the bundled file. Loading itself goes through
    :func:`repan_zoo.hub.load_pretrained`, which verifies size and sha256 first."""
    cfgs: Dict[str, Dict[str, Any]] = {}
    entries = list(entries_for(model))

    def fits(entry) -> bool:  # trained for the architecture's own input and classes
        return entry.num_classes == base.get("num_classes") and tuple(entry.input_size) == tuple(base.get("input_size", ()))

    if entries and not any(fits(e) for e in entries):
        cfgs[model] = dict(base)  # e.g. Fashion-MNIST weights of an ImageNet model: a tag, not the default
    for entry in sorted(entries, key=lambda e: not fits(e)):
        cfg = dict(base)
        cfg.update(
            num_classes=entry.num_classes,
            input_size=tuple(entry.input_size),
            test_input_size=tuple(entry.input_size),
            mean=tuple(entry.mean),
            std=tuple(entry.std),
            license=entry.license,
        )
        if entry.source == "hub":
            cfg["hf_hub_id"] = f"{entry.hf_hub_id}@{entry.revision}"
            cfg["hf_hub_filename"] = entry.filename
        else:
            cfg["file"] = str(bundled_dir() / entry.filename)
        cfgs[f"{model}.{entry.tag}"] = cfg
    if not cfgs:
        cfgs[model] = dict(base)
    return cfgs

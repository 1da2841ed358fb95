"""Typed safetensors checkpoints: every file says which form it holds, and loading is strict.

Metadata written into every file (safetensors string metadata):

``format``        ``"pt"``
``form``          ``"train"`` | ``"deploy"`` (the Rep blocks' form)
``architecture``  the timm model name, or the model's class name
``repan_zoo``     package version
``exactness``     JSON of the last conversion check (``model.repan_exactness``), when known
``branches``      train form only: JSON ``{block: [branch kinds]}`` so the structure can be rebuilt
``lambdas``       train form only: JSON ``{block: λ}`` (λ is also in the state dict, ``<block>.lam``;
                  files written before that have only this)

A state dict of the other form is recognised (from metadata, else from its keys) and
converted exactly (:func:`load_into`), never loaded with ``strict=False``.
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from .errors import CheckpointError, RepanError
from .fileio import TEMP_SUFFIX, PathLike, atomic_write, remove_stale_temps, sha256_file  # noqa: F401 (re-exported)
from .jsonio import dumps
from .blocks import rep_blocks
from .blocks.rep_block import unfold_loaded

__all__ = [
    "state_dict_form",
    "model_form",
    "save_checkpoint",
    "read_checkpoint",
    "read_metadata",
    "rewrite_metadata",
    "load_into",
    "strict_load",
    "metadata_json",
    "strip_wrapper_prefixes",
    "wrapper_prefix_hint",
    # re-exported from repan_zoo.fileio (their home), for the callers of the old path
    "atomic_write",
    "sha256_file",
    "remove_stale_temps",
    "TEMP_SUFFIX",
]

#: key prefixes a wrapper adds to its model's state dict: DataParallel / DistributedDataParallel and
#: timm's model EMA (``module.``), ``torch.compile``'s OptimizedModule (``_orig_mod.``)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` with the wrappers' key prefixes (:data:`WRAPPER_PREFIXES`, nested in any
    order) removed: timm's ``clean_state_dict`` (what ``timm.models.load_checkpoint`` applies),
    repeated until nothing changes (older timm removes one layer, in one order)."""
    state = dict(state_dict)
    while any(k.startswith(WRAPPER_PREFIXES) for k in state):
        cleaned = clean_state_dict(state)
        if list(cleaned) == list(state):
            break
        state = cleaned
    return state


def wrapper_prefix_hint(keys) -> str:
    """For a mismatch message: a sentence naming the wrapper prefix the ``keys`` carry, and the
    fix (empty when they carry none)."""
    found = [p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in keys)]
    if not found:
        return ""
    return (
        f" The keys start with {' / '.join(repr(p) for p in found)}: this is the state dict of a wrapper "
        "(DataParallel / DistributedDataParallel, torch.compile, a model EMA), not of the model: load "
        "timm.models.clean_state_dict(state_dict), or save the model itself (timm.utils.unwrap_model(model))."
    )


def state_dict_form(state_dict: Mapping[str, Any]) -> Optional[str]:
    """``"deploy"`` if the Rep blocks are fused convs, ``"train"`` if they hold branches, else None."""
    keys = list(state_dict)
    if any(k.endswith("reparam_conv.weight") for k in keys):
        return "deploy"
    if any(k.endswith("trunk.conv.weight") for k in keys):
        return "train"
    return None


def model_form(model: nn.Module) -> Optional[str]:
    """Form of a model's Rep blocks: ``"train"``, ``"deploy"``, ``"mixed"``, or None without blocks."""
    forms = {("deploy" if b.deploy else "train") for _, b in rep_blocks(model)}
    if not forms:
        return None
    return forms.pop() if len(forms) == 1 else "mixed"


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or getattr(model, "repan_architecture", None) or type(model).__name__


def _canonical_header(path: PathLike, updates: Optional[Mapping[str, str]] = None) -> None:
    """Rewrite a safetensors header with sorted ``__metadata__`` keys: safetensors writes its
    metadata map in a random (hash) order, so two saves of the same tensors differed in bytes
    and sha256. ``updates`` replace metadata fields (strings) on the way. The data section is
    untouched (its offsets are relative to it): the tensors stay byte for byte what they were."""
    import struct

    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
        if "__metadata__" in header or updates:
            header["__metadata__"] = dict(sorted({**header.get("__metadata__", {}), **(updates or {})}.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-(8 + len(text)) % 8)  # keep the data 8-byte aligned, as safetensors does
        if len(text) == n:
            fh.seek(8)
            fh.write(text)
            return
        fh.seek(8 + n)
        data = fh.read()
        fh.seek(0)
        fh.write(struct.pack("<Q", len(text)) + text + data)
        fh.truncate()


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    architecture: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Save ``model``'s state dict as a typed safetensors file, atomically. A wrapper (DataParallel /
    DistributedDataParallel, ``torch.compile``, timm's model EMA) is saved as the model it wraps
    (``timm.utils.unwrap_model``): its keys, architecture and form."""
    from safetensors.torch import save_file

    model = unwrap_model(model)
    form = model_form(model)
    if form == "mixed":
        raise CheckpointError(
            "the model has both fused and unfused Rep blocks; call repan_zoo.reparameterize(model) "
            "(or unfold) first so the checkpoint has one form"
        )
    meta: Dict[str, str] = {
        "format": "pt",
        "form": form or "plain",
        "architecture": architecture or _architecture(model),
        "repan_zoo": _version(),
    }
    exactness = getattr(model, "repan_exactness", None)
    if exactness is not None:
        meta["exactness"] = dumps(exactness)
    if form == "train":
        blocks = rep_blocks(model)
        meta["branches"] = json.dumps({name: b.branch_kinds for name, b in blocks})
        meta["lambdas"] = json.dumps({name: float(b.lam) for name, b in blocks})
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else dumps(value)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(tmp):
        save_file(tensors, tmp, metadata=meta)
        _canonical_header(tmp)

    return atomic_write(path, write)


def rewrite_metadata(src: PathLike, dest: PathLike, updates: Mapping[str, Any]) -> Path:
    """Copy the checkpoint ``src`` to ``dest`` (atomically; ``dest`` may be ``src``) with the
    metadata fields ``updates`` replaced (a non-string value is stored as JSON) and the tensor
    data byte for byte unchanged: e.g. a published recipe in place of one that named the training
    machine's paths. The file's sha256 changes with its header; its weights do not.

    Raises:
        CheckpointError: ``src`` is not a readable safetensors file.
    """
    import shutil

    read_checkpoint(src)  # a readable safetensors file, or a CheckpointError naming it
    fields = {k: v if isinstance(v, str) else dumps(v) for k, v in updates.items()}

    def write(tmp):
        shutil.copyfile(src, tmp)
        _canonical_header(tmp, fields)

    return atomic_write(dest, write)


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``. A missing, truncated or foreign file (or a
    folder) raises :class:`CheckpointError`."""
    return _read(path, tensors=True)


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The string metadata of a safetensors file (``architecture``, ``form``, ...; see the module
    docstring), without reading its tensors; errors as :func:`read_checkpoint`."""
    return _read(path, tensors=False)[1]


def _read(path: PathLike, tensors: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: pass a .safetensors file"
                              + (f" (it holds {', '.join(found[:5])})" if found else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte header length, then the JSON header ('{'); else a zip archive (torch.save) or a pickle
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is a torch.save file (a pickle), not safetensors: repan_zoo reads safetensors only. Convert "
            "a file you trust with safetensors.torch.save_file(timm.models.load_state_dict(path), "
            "'model.safetensors') (weights_only=True; it takes the weights out of a timm train.py checkpoint, "
            "the EMA's first, without DDP's 'module.' prefix), or load it with timm.create_model(name, "
            "checkpoint_path=path) and save with repan_zoo.checkpoint.save_checkpoint(model, 'model.safetensors'), "
            "which also records the Rep form and branches")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            data = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except Exception as exc:  # safetensors raises its own error types for bad headers / short files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or not a checkpoint. Give a "
            "safetensors checkpoint (repan_zoo.checkpoint.save_checkpoint writes them); if this one was cut short, "
            "save or download it again"
        ) from exc
    return data, meta


def _legacy_lambda(key: str, train_blocks) -> bool:
    block, _, leaf = key.rpartition(".")
    return leaf == "lam" and block in train_blocks


def _mismatch_message(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                      cast_floats: bool = False) -> Optional[str]:
    expected = model.state_dict()
    train_blocks = {name for name, b in rep_blocks(model) if not b.deploy}
    # a train-form block fills a missing λ itself (state dicts written before λ was saved)
    missing = [k for k in expected if k not in state_dict and not _legacy_lambda(k, train_blocks)]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    dtypes = [
        f"{k}: checkpoint {state_dict[k].dtype} vs model {expected[k].dtype}"
        for k in expected
        if k in state_dict and state_dict[k].dtype != expected[k].dtype
        and not (cast_floats and state_dict[k].is_floating_point() and expected[k].is_floating_point())
    ]
    if not (missing or unexpected or shapes or dtypes):
        return None

    def head(items):
        return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {head(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {head(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {head(shapes)}")
    if dtypes:
        parts.append(f"{len(dtypes)} dtype mismatch(es): {head(dtypes)} (a load never casts silently; "
                     "pass cast_floats=True to cast between float types)")
    return (
        f"{what} does not match {_architecture(model)}: " + "; ".join(parts) + ". "
        "Check the model name and its num_classes / in_chans / width kwargs; a timm-native state dict "
        "goes through repan_zoo.models.checkpoint_filter." + wrapper_prefix_hint(unexpected)
    )


def strict_load(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, *,
                cast_floats: bool = False) -> None:
    """``load_state_dict(strict=True)`` that first names every missing / unexpected / mis-shaped key,
    and every tensor whose dtype differs from the model's, in a :class:`CheckpointError`.
    ``cast_floats=True`` allows a float-to-float cast (e.g. a float16 file into a float32 model);
    any other dtype change (int → float, float → int, bool ...) is always refused."""
    message = _mismatch_message(model, state_dict, what, cast_floats)
    if message:
        raise CheckpointError(message)
    model.load_state_dict(state_dict, strict=True)


@torch.no_grad()
def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Optional[Mapping[str, str]] = None,
    *,
    what: str = "state dict",
    cast_floats: bool = False,
) -> nn.Module:
    """Load strictly into ``model`` (in place), converting between forms exactly when needed.

    * same form: strict load.
    * deploy checkpoint → train-form model: the blocks are fused, loaded, then unfolded
      into their own branch kinds with zero-γ output BNs (an exact no-op that training grows).
    * train checkpoint → deploy model: the blocks are unfolded into the checkpoint's branch
      structure (metadata ``branches``, else the model's architecture), loaded, λ set from
      the metadata, then fused.
    Anything that still does not match raises :class:`CheckpointError` naming the keys, shapes,
    dtypes (``cast_floats=True``: float-to-float casts allowed) and forms — or, when the metadata
    names another architecture than the model's, that architecture; the model is then left
    exactly as it was (a failed load loses nothing).

    A wrapper's state dict (keys ``module.*`` / ``_orig_mod.*``) is taken as timm's
    ``load_checkpoint`` takes it (:func:`strip_wrapper_prefixes`); a wrapped ``model`` is loaded
    through the model it wraps. Returns ``model``.
    """
    wrapper, model = model, unwrap_model(model)
    state_dict = strip_wrapper_prefixes(state_dict)
    metadata = dict(metadata or {})
    key_form = state_dict_form(state_dict)
    meta_form = metadata.get("form")
    if meta_form in ("train", "deploy") and key_form is not None and meta_form != key_form:
        raise CheckpointError(
            f"{what} is labelled form={meta_form!r} in its metadata but its keys are {key_form}-form "
            f"({'*.reparam_conv.*' if key_form == 'deploy' else '*.trunk.*, *.extras.*'}): the file was mislabelled. "
            "Re-save it with repan_zoo.checkpoint.save_checkpoint (which records the form), or pass "
            "metadata=None to load_into to trust the keys"
        )
    form = meta_form or key_form
    mform = model_form(model)
    # only a load that reshapes Rep blocks before the strict check can leave a half-changed model behind;
    # a same-form load is checked before anything is written, so it needs no snapshot (no copy of big models)
    reshapes = form in ("train", "deploy") and mform is not None and (
        form != mform or (form == "train" and "branches" in metadata))
    snapshot = copy.deepcopy(model) if reshapes else None
    with naming_the_architecture(model, metadata, what):
        try:
            _load_into(model, state_dict, metadata, form, what, cast_floats)
            return wrapper
        except BaseException:
            if snapshot is not None:
                model.__dict__.clear()  # give the caller back the model as it was before the call
                model.__dict__.update(snapshot.__dict__)
            raise


@contextlib.contextmanager
def naming_the_architecture(model: nn.Module, metadata: Mapping[str, str], what: str) -> Iterator[None]:
    """A :class:`~repan_zoo.errors.RepanError` of a load (keys, shapes, the classifier's fit) becomes a
    :class:`CheckpointError` naming the architecture ``metadata`` records when it is not ``model``'s:
    the mismatch is then the file's, whichever check found it first."""
    try:
        yield
    except RepanError as exc:
        trained_for, arch = metadata.get("architecture"), _architecture(model)
        if not trained_for or trained_for == arch:
            raise
        raise CheckpointError(
            f"{what} is a checkpoint of {trained_for}, and the model is {arch}: build the model with "
            f"timm.create_model({trained_for!r}, ...) to load it ({type(exc).__name__}: {exc})") from exc


def metadata_json(metadata: Mapping[str, str], key: str) -> Any:
    """``json.loads`` of one metadata field; a field that is not JSON raises :class:`CheckpointError`."""
    try:
        return json.loads(metadata[key])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"the checkpoint's metadata field {key!r} is not JSON ({exc}): the file was not written by "
            "repan_zoo.checkpoint.save_checkpoint or was edited; re-save it with save_checkpoint"
        ) from None


def _load_into(model: nn.Module, state_dict, metadata: Dict[str, str], ckpt_form: Optional[str], what: str,
               cast_floats: bool = False) -> nn.Module:
    if ckpt_form == "plain":
        ckpt_form = None
    mform = model_form(model)
    blocks = rep_blocks(model)
    if ckpt_form is None or mform is None or ckpt_form == mform:
        if ckpt_form == "train" and mform == "train":
            _shape_like_checkpoint(blocks, metadata)
        strict_load(model, state_dict, what, cast_floats=cast_floats)
        if ckpt_form == "train":
            _set_lambdas(blocks, metadata)
        return model
    if mform == "mixed":
        raise CheckpointError("the model mixes fused and unfused Rep blocks; reparameterize or unfold it first")
    if ckpt_form == "deploy":  # into a train-form model
        lams = {name: b.lam_value for name, b in blocks}
        for _, b in blocks:
            b.reparameterize()
        strict_load(model, state_dict, f"{what} (a deploy-form checkpoint: the train-form model is fused to take it, then unfolded)",
                    cast_floats=cast_floats)
        for name, b in blocks:
            unfold_loaded(b, b.arch_branches, lam=lams[name], name=name)
        return model
    # train checkpoint into a deploy model
    branches = metadata_json(metadata, "branches") if "branches" in metadata else {}
    for name, b in blocks:
        kinds = branches.get(name, b.arch_branches)
        b.unfold(kinds, k=1, lam=1.0, restore="normalized")
    strict_load(model, state_dict, f"{what} (a train-form checkpoint: the deploy model is unfolded to take it, then fused)",
                cast_floats=cast_floats)
    _set_lambdas(blocks, metadata)
    for _, b in blocks:
        b.reparameterize()
    return model


def _shape_like_checkpoint(blocks, metadata: Mapping[str, str]) -> None:
    """Give train-form blocks the checkpoint's branch structure (after RepAn expansion it differs
    from the architecture's)."""
    if "branches" not in metadata:
        return
    branches = metadata_json(metadata, "branches")
    for name, b in blocks:
        kinds = branches.get(name)
        if kinds is not None and list(kinds) != b.branch_kinds:
            b.unfold(kinds, k=1, lam=b.lam_value, restore="normalized")


def _set_lambdas(blocks, metadata: Mapping[str, str]) -> None:
    if "lambdas" not in metadata:
        return
    lambdas = metadata_json(metadata, "lambdas")
    for name, b in blocks:
        if name in lambdas and not b.deploy:
            b.set_lambda(lambdas[name])


def _version() -> str:
    from . import __version__

    return __version__

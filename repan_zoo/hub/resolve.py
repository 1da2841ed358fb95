"""Which bytes a model's ``pretrained_cfg`` asks for: a manifest entry, or a Hub repo named by timm.

Order of resolution (:func:`resolve_source`):

0. What the user named (``pretrained_cfg_overlay=dict(file=...)`` / ``url=`` / ``hf_hub_id=``, or the
   same keys in a ``pretrained_cfg`` dict, timm's documented way to load other weights): that file,
   URL or Hub repo, never a manifest entry instead (a ``hf_hub_id`` without ``@revision`` is the repo's
   ``main``, as in timm and huggingface_hub; one naming a manifest entry's repo and pinned commit is
   verified by that entry). Local files and URLs are the user's: nothing to verify them against. ``source == 'hf-hub'`` (``timm.create_model('hf-hub:org/name[@rev]')``): that repo and revision.
   The file's size and hash then come from the Hub's own metadata (LFS sha256, or the git blob
   id of a non-LFS file); when a manifest entry pins the same repo, file and commit, its sha256
   and size must match as well.
2. ``source == 'local-dir'`` (``timm.create_model('local-dir:/path')``): the user's own folder
   (``model.safetensors`` in it), loaded as given: nothing is downloaded, so there is nothing
   published to compare with. (A cfg ``file`` is otherwise ignored: bundled files are found
   through the manifest, which carries their hashes.)
3. The manifest entry of ``(architecture, tag)``: pinned commit, sha256 and size — unless the
   cfg's ``hf_hub_id`` names another repo or revision. An untagged name (``tag`` None) takes the
   first entry trained for the cfg's own input size and classes; when the architecture has
   weights only under other tags (e.g. Fashion-MNIST weights of an ImageNet model) it raises
   :class:`WeightsNotFoundError` naming them, rather than loading other weights than the cfg describes.
4. A cfg ``hf_hub_id`` without (or overriding) a manifest entry, e.g.
   ``pretrained_cfg_overlay=dict(hf_hub_id='org/name@rev')``: as in 1.
5. Otherwise :class:`UnknownTagError` (the model has weights, but not of that tag) or
   :class:`WeightsNotFoundError` (none at all).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import manifest
from ..errors import UnknownTagError, WeightsNotFoundError
from ..manifest import WeightEntry

__all__ = ["WeightSource", "resolve_source", "split_hf_hub_id", "user_source", "DEFAULT_FILENAME", "USER_SOURCE_KEYS"]

DEFAULT_FILENAME = "model.safetensors"
#: pretrained_cfg keys by which a user names their own weights (timm's ``file`` / ``url`` / ``hf_hub_id``)
USER_SOURCE_KEYS = ("file", "url", "hf_hub_id")


@dataclass(frozen=True)
class WeightSource:
    """Where one model's weights come from. ``kind``: ``hub`` | ``bundled`` | ``local`` | ``url``.

    ``entry`` is the manifest entry when the bytes are pinned by it (hub or bundled);
    ``revision`` is a 40-char commit for pinned hub weights, a branch/tag/commit or None (main)
    for a repo named by timm's ``hf-hub:`` prefix."""

    model: str
    tag: Optional[str]
    kind: str
    filename: str
    hf_hub_id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[Path] = None
    entry: Optional[WeightEntry] = None
    url: Optional[str] = None
    #: the caller named this file / URL (``pretrained_cfg_overlay=dict(file=...)`` / ``url=``): errors
    #: name it as theirs, not by the manifest tag of the model name
    user: bool = False

    @property
    def label(self) -> str:
        return f"{self.model}.{self.tag}" if self.tag and not self.user else self.model

    @property
    def where(self) -> str:
        if self.kind == "hub":
            return f"{self.hf_hub_id}@{self.revision or 'main'}/{self.filename}"
        if self.kind == "url":
            return str(self.url)
        return str(self.path)


def split_hf_hub_id(hf_hub_id: str) -> Tuple[str, Optional[str]]:
    """timm's ``org/name@revision`` → ``(org/name, revision or None)``."""
    repo, sep, rev = hf_hub_id.partition("@")
    return repo, (rev or None) if sep else None


def _hub_source(model: str, tag: Optional[str], hf_hub_id: str, filename: Optional[str]) -> WeightSource:
    repo, revision = split_hf_hub_id(hf_hub_id)
    return WeightSource(model, tag, "hub", filename or DEFAULT_FILENAME, hf_hub_id=repo, revision=revision)


def from_entry(entry: WeightEntry) -> WeightSource:
    if entry.source == "bundled":
        return WeightSource(
            entry.model, entry.tag, "bundled", entry.filename, path=manifest.bundled_dir() / entry.filename, entry=entry
        )
    return WeightSource(
        entry.model, entry.tag, "hub", entry.filename, hf_hub_id=entry.hf_hub_id, revision=entry.revision, entry=entry
    )


def _overridden(entry: WeightEntry, hf_hub_id: Optional[str]) -> bool:
    """Whether the cfg names another Hub repo/revision than the manifest entry (a user's
    ``pretrained_cfg_overlay=dict(hf_hub_id=...)``): then that repo is loaded, verified by its metadata."""
    if not hf_hub_id:
        return False
    repo, revision = split_hf_hub_id(hf_hub_id)
    return repo != entry.hf_hub_id or (revision is not None and revision != entry.revision)


def _available(model: str) -> str:
    tags = [e.tag for e in manifest.entries_for(model)]
    return ", ".join(tags) if tags else "none"


def user_source(*cfgs: Any) -> Dict[str, str]:
    """The ``file`` / ``url`` / ``hf_hub_id`` a user set in ``pretrained_cfg_overlay`` or in a
    ``pretrained_cfg`` dict (later arguments win, as timm merges them); ``{}`` when none."""
    out: Dict[str, str] = {}
    for cfg in cfgs:
        if isinstance(cfg, Mapping):
            out.update({k: str(cfg[k]) for k in USER_SOURCE_KEYS if cfg.get(k)})
    return out


def _local_source(model: str, tag: Optional[str], file: str, filename: Optional[str]) -> WeightSource:
    path = Path(file).expanduser()
    if path.is_dir():
        path = path / (filename or DEFAULT_FILENAME)
    return WeightSource(model, tag, "local", path.name, path=path)


def _fits(entry: WeightEntry, cfg: Mapping[str, Any]) -> bool:
    """Whether ``entry`` was trained for the cfg's input size and classes."""
    return entry.num_classes == cfg.get("num_classes") and tuple(entry.input_size) == tuple(cfg.get("input_size") or ())


def _describe(entry: WeightEntry) -> str:
    return f"{entry.tag} ({'×'.join(map(str, entry.input_size))}, {entry.num_classes} classes)"


def _related(model: str) -> List[WeightEntry]:
    """Manifest entries of the model's other variants (names one ``_suffix`` apart: ``repan_mobileone_s0``
    ↔ ``repan_mobileone_s0_w050``, ``repan_resnet18`` ↔ ``repan_resnet18_w025``)."""
    return [e for e in manifest.load_manifest().values()
            if e.model != model and (e.model.startswith(model + "_") or model.startswith(e.model + "_"))]


def resolve_source(cfg: Mapping[str, Any], user: Optional[Mapping[str, str]] = None) -> WeightSource:
    """The weights a ``pretrained_cfg`` asks for (see the module docstring for the order); ``user``:
    the caller's own ``file`` / ``url`` / ``hf_hub_id`` (:func:`user_source`), loaded as given."""
    model = cfg.get("architecture")
    if not model:
        raise WeightsNotFoundError(
            "the model's pretrained_cfg has no 'architecture', so its weights cannot be looked up; "
            "build it with timm.create_model('repan_...') (after `import repan_zoo`)",
        )
    tag = cfg.get("tag") or None
    filename = cfg.get("hf_hub_filename") or None
    user = dict(user or {})
    if user.get("file"):
        return replace(_local_source(model, tag, user["file"], filename), user=True)
    if user.get("url"):
        url = user["url"]
        return WeightSource(model, tag, "url", url.rstrip("/").rsplit("/", 1)[-1] or DEFAULT_FILENAME, url=url,
                            user=True)
    if user.get("hf_hub_id"):  # as timm and huggingface_hub: no '@revision' is the repo's main
        pinned = manifest.find_entry(model, tag) if tag else None
        if pinned is not None and pinned.source == "hub" and split_hf_hub_id(user["hf_hub_id"]) == (
                pinned.hf_hub_id, pinned.revision):  # the pinned commit itself: verified by its manifest entry
            return from_entry(pinned)
        return _hub_source(model, tag, user["hf_hub_id"], filename)
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        return _hub_source(model, tag, cfg["hf_hub_id"], filename)
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return _local_source(model, tag, cfg["file"], filename)
    if tag is None:
        manifest.check_weights_available(model)  # a malformed manifest file listing it: its ManifestError
        entries = manifest.entries_for(model)
        entry = next((e for e in entries if _fits(e, cfg)), None)
        if entry is None and entries and not cfg.get("hf_hub_id"):
            shape = "×".join(map(str, cfg.get("input_size") or ()))
            config = f" ({shape}, {cfg['num_classes']} classes)" if shape and cfg.get("num_classes") else ""
            raise WeightsNotFoundError(
                f"{model} has no untagged weights for its default config{config}; "
                f"its weights are tagged: {', '.join(_describe(e) for e in entries)}. Ask for one by tag, e.g. "
                f"timm.create_model('{model}.{entries[0].tag}', pretrained=True), or load your own file with "
                "pretrained_cfg_overlay=dict(file='....safetensors')",
                model=model,
            )
    else:
        entry = manifest.find_entry(model, tag)
    if entry is not None and not _overridden(entry, cfg.get("hf_hub_id")):
        return from_entry(entry)
    if cfg.get("hf_hub_id"):
        return _hub_source(model, tag, cfg["hf_hub_id"], filename)
    where = manifest.manifest_dir()
    if tag is not None:
        raise UnknownTagError(
            f"{model} has no pretrained weights tagged {tag!r} in the weights manifest ({where}); "
            f"tags it has: {_available(model)}. Use one of them (timm.create_model('{model}.<tag>', pretrained=True)), "
            "or pretrained=False",
            model=model, available=[e.tag for e in manifest.entries_for(model)],
        )
    related = _related(model)
    twin = _timm_twin_weights(model)
    raise WeightsNotFoundError(
        f"{model} has no pretrained weights in the weights manifest ({where}). "
        + (f"Variants of it have: {', '.join(f'{e.model}.{_describe(e)}' for e in related)}; e.g. "
           f"timm.create_model('{related[0].model}.{related[0].tag}', pretrained=True). " if related else "")
        + (f"timm's own ImageNet weights of {twin[0]} load into it, converted to its form "
           f"(repan_zoo.models.timm_compat): timm.create_model('{model}', pretrained=True, "
           f"pretrained_cfg_overlay=dict(hf_hub_id='{twin[1]}')). " if twin else "")
        + ("Or use " if related or twin else "Use ")
        + "pretrained=False, load a checkpoint with repan_zoo.checkpoint, or publish weights with `repan-publish`",
        model=model,
    )


def _timm_twin_weights(model: str) -> Optional[Tuple[str, str]]:
    """``(timm model, its default weights' hf_hub_id)`` for a ``repan_*`` architecture that has a
    timm twin (:class:`repan_zoo.models.families.ModelDef`) with weights on the Hub; else None."""
    from timm.models import get_pretrained_cfg

    from ..models.families import MODELS

    mdef = MODELS.get(model)
    twin = mdef.timm_twin if mdef is not None else None
    cfg = get_pretrained_cfg(twin) if twin else None
    return (twin, cfg.hf_hub_id) if cfg is not None and cfg.hf_hub_id else None

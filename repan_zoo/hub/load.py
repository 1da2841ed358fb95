"""``load_pretrained(model)``: what a model entrypoint calls for ``pretrained=True``.

resolve (:mod:`.resolve`) → fetch + verify size and sha256 (:mod:`.download`, before any tensor
is read) → :func:`repan_zoo.checkpoint.read_checkpoint` → adapt the stem to ``in_chans`` and
drop a classifier of another ``num_classes`` (as timm does) → :func:`repan_zoo.checkpoint.load_into`,
which loads deploy weights into a deploy model and unfolds them, function preserved, into a
train-form model.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..blocks import RepBlock
from ..checkpoint import load_into, naming_the_architecture, read_checkpoint
from ..models.timm_compat import adapt_input_kernel, checkpoint_filter, detect_source
from ..errors import CheckpointError, WeightsNotFoundError
from .download import Fetched, fetch
from .resolve import WeightSource, resolve_source, user_source

__all__ = ["load_pretrained", "adapt_classifier", "adapt_input_channels", "describe_loaded", "user_source"]


#: ``pretrained_cfg`` entries that say how to feed the model, not which weights it holds: a caller's
#: ``pretrained_cfg_overlay`` value wins over the manifest's, as timm's overlay wins over its cfg.
USER_PREPROCESSING_KEYS = ("input_size", "mean", "std")


def load_pretrained(
    model: nn.Module, *, cache_dir: Optional[str] = None, user: Optional[Mapping[str, str]] = None,
    features_only: bool = False,
) -> nn.Module:
    """Load the verified pretrained weights named by ``model.pretrained_cfg`` into ``model`` (in place).

    ``user``: the caller's ``pretrained_cfg_overlay`` (and ``pretrained_cfg`` dict) entries; a
    ``file`` / ``url`` / ``hf_hub_id`` in it is loaded, never a manifest entry instead, and its
    ``input_size`` / ``mean`` / ``std`` stay in the loaded cfg (:data:`USER_PREPROCESSING_KEYS`).
    The weights' classifier is dropped for ``features_only`` and for a model built with another
    ``num_classes`` than the cfg's; one that does not fit otherwise is refused (:func:`adapt_classifier`).
    Floats are cast to the model's dtype (``create_model(..., dtype=torch.bfloat16)``), as timm does. Any state dict the checkpoint
    filter knows goes in: ours in either form, timm's ``repvgg_*`` / ``mobileone_*`` / ``resnet*``.
    Afterwards ``model.pretrained_cfg`` describes the loaded weights (:func:`describe_loaded`).

    Raises the typed errors of :mod:`repan_zoo.errors` (``UnknownTagError``, ``WeightsNotFoundError``,
    ``UnknownRevisionError``, ``OfflineError``, ``ChecksumMismatchError``, ``SizeMismatchError``,
    ``TruncatedDownloadError``, ``CheckpointError``), each naming the model, the file and the fix.
    Sets ``model.repan_weights`` (source, file, sha256) for provenance."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if not cfg:
        raise WeightsNotFoundError(
            f"{type(model).__name__} has no pretrained_cfg, so its weights cannot be looked up; build it with "
            "timm.create_model('repan_...') (after `import repan_zoo`)"
        )
    cfg = dict(cfg)
    preprocessing = {k: user[k] for k in USER_PREPROCESSING_KEYS if user and user.get(k) is not None}
    user = user_source(user or {})
    source = resolve_source(cfg, user)
    fetched = fetch(source, cache_dir=cache_dir)
    state_dict, metadata = read_checkpoint(fetched.path)
    if user and detect_source(state_dict) != "repan":  # a user's file in timm's key layout: renamed to ours
        state_dict, metadata = checkpoint_filter(state_dict, model), {}
    if source.entry is not None:
        check_entry_against_tensors(source.entry, state_dict, cfg)
    what = f"pretrained weights {source.label} ({source.where})"
    with naming_the_architecture(model, metadata, what):  # a file of another model: said so, not its head's fit
        state_dict = adapt_input_channels(model, state_dict, cfg.get("first_conv"), source)
        loaded = {**describe_loaded(cfg, source, state_dict), **preprocessing}  # the channels the model takes
        classes = getattr(model, "num_classes", None)
        new_head = features_only or (cfg.get("num_classes") is not None and classes != cfg.get("num_classes"))
        state_dict = adapt_classifier(model, state_dict, cfg.get("classifier"), new_head=new_head, label=what)
    load_into(model, state_dict, metadata, what=what,  # names the architecture itself
              cast_floats=True)  # a model built with dtype=: timm casts the file's floats too
    model.repan_weights = _provenance(source, fetched)
    model.pretrained_cfg = loaded
    if hasattr(model, "default_cfg"):
        model.default_cfg = loaded
    return model


def describe_loaded(cfg: Mapping[str, object], source: WeightSource, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """The ``pretrained_cfg`` of the weights actually loaded: a manifest entry's tag, classes, input
    size, mean / std and location; for a user's file / URL / repo its location, its classes and
    input channels as read from the tensors (classifier, first conv), tag None."""
    out = dict(cfg)
    entry = source.entry
    if entry is not None:
        out.update(
            tag=entry.tag, num_classes=entry.num_classes, input_size=tuple(entry.input_size),
            mean=tuple(entry.mean), std=tuple(entry.std), license=entry.license,
        )
        return out
    if source.kind == "hub" and cfg.get("source") == "hf-hub":
        return out  # timm read the repo's own config.json into the cfg
    out.update(tag=None, hf_hub_id=None, file=None, url=None)
    if source.kind == "local":
        out["file"] = str(source.path)
    elif source.kind == "url":
        out["url"] = source.url
    else:
        out["hf_hub_id"] = f"{source.hf_hub_id}@{source.revision}" if source.revision else source.hf_hub_id
    for name in _names(cfg.get("classifier")):
        weight = state_dict.get(f"{name}.weight")
        if weight is not None:
            out["num_classes"] = int(weight.shape[0])
    first = next((state_dict[k] for n in _names(cfg.get("first_conv")) for k in _input_conv_keys(n) if k in state_dict), None)
    size = tuple(cfg.get("input_size") or ())
    if first is not None and first.ndim == 4 and len(size) == 3 and first.shape[1] != size[0]:
        out["input_size"] = (int(first.shape[1]), *size[1:])  # channels as stored (grouped stems are not adapted)
    return {k: v for k, v in out.items() if v is not None or k in ("tag",)}
def check_entry_against_tensors(entry, state_dict: Dict[str, torch.Tensor], cfg) -> None:
    """The manifest entry's ``num_classes`` and input channels (``input_size[0]``) must be those of
    the file it names (classifier rows, first conv's input channels), else the model would be
    built for one and silently handed a fresh head (or an adapted stem). Raises
    :class:`~repan_zoo.errors.ManifestError` naming the entry, the field and both values."""
    from ..errors import ManifestError

    def refuse(field: str, listed, found, key: str) -> None:
        raise ManifestError(
            f"manifest entry {entry.name}: {field} is {listed}, but its file {entry.filename} holds {found} "
            f"({key}); the entry does not describe its weights. Correct the entry (or re-publish with repan-publish)")

    for name in _names(cfg.get("classifier")):
        key = f"{name}.weight"
        if key in state_dict and state_dict[key].shape[0] != entry.num_classes:
            refuse("num_classes", entry.num_classes, state_dict[key].shape[0], f"{key} {tuple(state_dict[key].shape)}")
    for name in _names(cfg.get("first_conv")):
        key = next((k for k in _input_conv_keys(name) if k in state_dict), None)
        if key is None or state_dict[key].ndim != 4:
            continue
        chans = state_dict[key].shape[1]  # the zoo's stems are ungrouped convs
        if chans != entry.input_size[0]:
            refuse("input_size[0] (input channels)", entry.input_size[0], chans, f"{key} {tuple(state_dict[key].shape)}")


def _provenance(source: WeightSource, fetched: Fetched) -> Dict[str, object]:
    info: Dict[str, object] = {"name": source.label, "source": source.kind, "file": str(fetched.path)}
    if source.kind == "hub":
        info.update(hf_hub_id=source.hf_hub_id, revision=fetched.revision, filename=source.filename)
    expected = fetched.expected
    if expected is None:
        info["verified_by"] = "nothing (a local-dir folder of the user's)"
    else:
        info.update(sha256=expected.sha256, git_sha1=expected.git_sha1, size=expected.size, verified_by=expected.origin)
    return {k: v for k, v in info.items() if v is not None}


def _names(value) -> Tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@torch.no_grad()
def adapt_classifier(model: nn.Module, state_dict: Dict[str, torch.Tensor], classifier, *,
                     new_head: bool = False, label: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """Drop the pretrained classifier (``pretrained_cfg['classifier']``) when the model has none
    (``num_classes=0``) or asked for another one, as timm does: the model keeps its freshly
    initialised classifier, and everything else still loads strictly. A classifier of the same
    shape always loads (also a user's file whose classes differ from the cfg's, where timm drops it).

    Args:
        new_head: the caller asked for a classifier not from the weights (a ``num_classes`` other
            than the cfg's, or ``features_only``); otherwise one of another shape is refused, as
            timm's strict load refuses it.

    Raises:
        CheckpointError: the weights' classifier does not fit and no new one was asked for, naming
            its classes / features and the fix (``num_classes=``, or ``reset_classifier`` after loading).
    """
    own = model.state_dict()
    out = dict(state_dict)
    for name in _names(classifier):
        weight = f"{name}.weight"
        if weight in own and weight in out and own[weight].shape != out[weight].shape:
            theirs, mine = tuple(out[weight].shape), tuple(own[weight].shape)
            if not new_head:
                if theirs[0] != mine[0]:
                    raise CheckpointError(
                        f"pretrained weights {label}: their classifier {weight} has {theirs[0]} classes, the model "
                        f"{mine[0]}; pass num_classes={theirs[0]} to load it, or another num_classes to train a "
                        "new head on the pretrained features")
                pool = getattr(model, "global_pool", None)
                pool = getattr(pool, "pool_type", pool)
                raise CheckpointError(
                    f"pretrained weights {label}: their classifier {weight} takes {theirs[1:]} input features, the "
                    f"model's {mine[1:]} (global_pool={pool!r}); build the model with the weights' pooling and call "
                    f"model.reset_classifier({mine[0]}, global_pool={pool!r}) after loading to train a new head "
                    "over this pooling")
        for key in (f"{name}.weight", f"{name}.bias"):
            if key not in out:
                continue
            if key not in own:
                del out[key]
            elif own[key].shape != out[key].shape:
                out[key] = own[key].clone()
    return out


def _input_conv_keys(name: str) -> Iterable[str]:
    """Checkpoint keys the first conv may have: the conv itself, or a Rep block in either form."""
    yield f"{name}.weight"
    yield f"{name}.reparam_conv.weight"
    if name.endswith(".trunk.conv"):
        yield f"{name[: -len('.trunk.conv')]}.reparam_conv.weight"
    if name.endswith(".reparam_conv"):
        yield f"{name[: -len('.reparam_conv')]}.trunk.conv.weight"


def _module_for(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The conv or Rep block that takes the input at ``name`` (a first conv of the cfg): the module
    itself, or the Rep block owning it in either form (``stem.conv.extras.0.conv`` of a train-form
    checkpoint is ``stem.conv`` of a deploy model)."""
    parts = name.split(".")
    owners = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    for candidate in (name, *owners):
        try:
            module = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(module, (RepBlock, nn.Conv2d)):
            return module
        first = next((m for m in module.modules() if isinstance(m, (RepBlock, nn.Conv2d))), None)
        if first is not None:
            return first
    return None


@torch.no_grad()
def adapt_input_channels(
    model: nn.Module, state_dict: Dict[str, torch.Tensor], first_conv, source: Optional[WeightSource] = None
) -> Dict[str, torch.Tensor]:
    """Adapt the first conv (``pretrained_cfg['first_conv']``) to the model's ``in_chans`` with timm's
    ``adapt_input_conv`` (sum for 1 channel, repeat and rescale for more). In a deploy checkpoint
    the stem Rep block is one fused conv, and the adaptation is linear in the input channels, so
    adapting the fused kernel equals adapting every branch (:func:`~repan_zoo.models.timm_compat.adapt_input_kernel`)."""
    out = dict(state_dict)
    label = source.label if source is not None else "the checkpoint"
    for name in _names(first_conv):
        key = next((k for k in _input_conv_keys(name) if k in out), None)
        module = _module_for(model, name)
        if key is None or module is None:
            continue
        if isinstance(module, RepBlock):
            target, groups = module.in_channels, module.spec.groups
        else:
            target, groups = module.in_channels, module.groups
        weight = out[key]
        if weight.ndim != 4:
            continue
        if weight.shape[1] * groups == target:
            continue
        out[key] = adapt_input_kernel(weight, target, groups=groups,
                                      context=f"pretrained weights {label}: the first conv {name}")
    return out

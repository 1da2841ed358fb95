"""The weights hub: sha256-verified pretrained weights through huggingface_hub, bundled
weights that work offline, and publishing.

* :func:`load_pretrained` — what ``pretrained=True`` calls (resolve → download → verify → load).
* :func:`fetch_weights` / :func:`list_pretrained` — the verified file of ``'model.tag'``, and what exists.
* :func:`publish` / :func:`bundle` — put a deploy checkpoint on the Hub (or in the package) and
  record it in the manifest (console script ``repan-publish``); :func:`retire` takes superseded
  weights out of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from .. import manifest
from .download import fetch
from .load import load_pretrained
from .publish import bundle, publish, retire
from .resolve import WeightSource, resolve_source

__all__ = ["load_pretrained", "fetch_weights", "list_pretrained", "resolve_source", "WeightSource", "publish", "bundle", "retire"]


def fetch_weights(name: str, *, cache_dir: Optional[str] = None) -> Path:
    """The verified local file of ``'model.tag'``, or of ``'model'``: the weights
    ``timm.create_model('model', pretrained=True)`` loads (its registered default config), or the
    same error. Errors: as :func:`load_pretrained` (``UnknownTagError``, ``WeightsNotFoundError``,
    ``OfflineError``, ``IntegrityError`` ...)."""
    from timm.models import get_pretrained_cfg

    model, _, tag = name.partition(".")
    default = None if tag else get_pretrained_cfg(model)
    cfg = default.to_dict() if default is not None else {"architecture": model, "tag": tag or None}
    return fetch(resolve_source(cfg), cache_dir=cache_dir).path


def list_pretrained(pattern: Optional[str] = "*") -> List[str]:
    """``model.tag`` names of the manifest's weights matching ``pattern`` (fnmatch; None or ``""``:
    all of them, as timm's ``list_pretrained(filter='')``)."""
    from fnmatch import fnmatch

    pattern = pattern or "*"
    return [f"{m}.{t}" for (m, t) in manifest.load_manifest() if fnmatch(f"{m}.{t}", pattern)]

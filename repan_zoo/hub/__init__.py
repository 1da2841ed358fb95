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
    """The verified local file of ``'model.tag'`` (or ``'model'``: its default tag)."""
    model, _, tag = name.partition(".")
    return fetch(resolve_source({"architecture": model, "tag": tag or None}), cache_dir=cache_dir).path


def list_pretrained(pattern: str = "*") -> List[str]:
    """``model.tag`` names of the manifest's weights matching ``pattern`` (fnmatch)."""
    from fnmatch import fnmatch

    return [f"{m}.{t}" for (m, t) in manifest.load_manifest() if fnmatch(f"{m}.{t}", pattern)]

"""Strict JSON out: every file and metadata field the package writes parses with any JSON reader.

Python's ``json.dumps`` writes ``NaN`` / ``Infinity`` for non-finite floats, which is not JSON
(RFC 8259); :func:`dumps` writes ``null`` in their place (a NaN loss, an undefined metric)."""
from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite", "is_number"]


def is_number(v: Any) -> bool:
    """True for a finite int or float that is not a bool: a value a metric or count field may hold
    (``True`` is an ``int`` in Python, and NaN/inf are not JSON numbers, see :func:`finite`)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf), at any depth of dicts, lists and tuples,
    replaced by ``None``; everything else unchanged."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity (see :func:`finite`) and refuses anything
    else that is not JSON (``allow_nan=False``); other keyword arguments as ``json.dumps``."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)

"""argparse value types shared by the command-line tools (repan-train, repan-detect)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

__all__ = ["json_dict", "csv_list", "int_list", "optional_int"]


def json_dict(text: str) -> Dict[str, Any]:
    """A JSON object, e.g. ``'{"width_mult": 0.25}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"width_mult\": 0.25}}', got {text!r}")
    return value


def csv_list(text: str) -> List[str]:
    """Comma-separated names, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> List[int]:
    """Comma-separated integers."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None


def optional_int(text: str) -> Optional[int]:
    """An integer, or none/all/'' for no limit."""
    return None if text.lower() in ("", "none", "all") else int(text)

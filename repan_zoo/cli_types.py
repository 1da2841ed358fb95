"""argparse value types shared by the command-line tools (repan, repan-train, repan-publish, repan-detect)."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    "json_dict", "csv_list", "int_list", "optional_int", "number", "device", "writable_dir_problem",
    "writable_file_problem", "OneLineParser",
]


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




# -- checked numbers and paths ----------------------------------------------------------------
# Every numeric option is checked where it is parsed: a value out of range (or NaN / inf) is
# refused by argparse itself, so a bad command line stops before anything is read or written.

def _bound_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    """``≥ 1``, ``> 0 and < 1`` ...: the allowed range in words."""
    def show(v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {show(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {show(hi)}")
    return " and ".join(parts)


def number(kind: type = float, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
           none: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` (int or float) and refuses NaN, ±inf and values
    outside ``[lo, hi]`` (``lo_open`` / ``hi_open``: the bound itself is excluded) with a message
    that states the allowed range. ``none=True`` also accepts none/all/'' (→ ``None``: no limit)."""
    rule = _bound_text(lo, hi, lo_open, hi_open)

    def parse(text: str):
        if none and text.strip().lower() in ("", "none", "all"):
            return None
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}{' ' + rule if rule else ''}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + rule if rule else ''}, got {text!r}")
        if ((lo is not None and (value < lo or (lo_open and value == lo)))
                or (hi is not None and (value > hi or (hi_open and value == hi)))):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def device(text: str) -> str:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), checked by ``torch.device``."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    return text


def writable_dir_problem(path: os.PathLike) -> Optional[str]:
    """Why a run directory cannot be created or written at ``path`` (None: it can). Checks only:
    creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory; choose a directory path"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, so {path} cannot be created under it; choose another path"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user; choose a writable directory"
    return None


def writable_file_problem(path: os.PathLike) -> Optional[str]:
    """Why a file cannot be written at ``path`` (None: it can). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory; give a file name (e.g. {path / 'model.onnx'})"
    return writable_dir_problem(path.parent) if path.parent != path else None


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr (the problem and where
    to look for the fix), exit status 2 — no usage block, no traceback."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: an integer, or none/all/'' for no limit
optional_int = number(int, none=True)


def check_model_name(name: str, option: str = "model") -> None:
    """Refuse a model name timm cannot build: an unregistered architecture (``ValueError``) or a
    pretrained tag the architecture does not have (:class:`~repan_zoo.errors.UnknownTagError`,
    listing the tags it has). Call it after plugins (``--import``) registered their models."""
    import timm

    from . import models  # noqa: F401  (registers the repan_* families with timm)
    from .errors import UnknownTagError

    if name.startswith(("hf-hub:", "local-dir:")):
        return  # timm resolves these itself (a Hub repo or a folder), the weights loader verifies them
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        known = [n for n in timm.list_models("repan_*")]
        raise ValueError(f"unknown model {name!r} ({option}); registered repan models: {', '.join(known)} "
                         "(`repan list` shows them)")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise UnknownTagError(
                f"{option} {name!r}: {arch} has no pretrained tag {tag!r}; tags it has: {', '.join(tags) or 'none'} "
                f"(write {arch}.<tag>, or {arch} for the default)", model=arch, available=tags)

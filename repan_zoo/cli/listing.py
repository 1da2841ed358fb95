"""``repan list [PATTERN] [--pretrained]``: the registered ``repan_*`` models, one a line (exit 1
when none matches)."""
from __future__ import annotations

import argparse

from .base import CheckFailed
from .model_options import MODEL_PREFIX, list_models

NAME = "list"
HELP = "list the registered repan_* models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=MODEL_PREFIX + "*", help="timm wildcard")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")


def run(args: argparse.Namespace) -> int:
    """Print the matching names.

    Raises:
        CheckFailed: no model matches (exit status 1).
    """
    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        raise CheckFailed(f"no repan model matches {args.pattern!r}")
    print("\n".join(names))
    return 0

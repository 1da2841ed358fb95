"""``repan-publish``: the alias of ``repan publish`` (:mod:`repan_zoo.cli.publish`); also
``python -m repan_zoo.publish_cli`` and ``train_scripts/publish.py``."""
from __future__ import annotations

import sys
from typing import List, Optional

from .cli import publish as _command
from .cli.base import alias_main, standalone_parser

__all__ = ["main", "build_parser"]

PROG = "repan-publish"


def build_parser():
    """The ``repan-publish`` parser (the options of ``repan publish``)."""
    return standalone_parser(_command, PROG)


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; exit statuses as ``repan`` (:mod:`repan_zoo.cli.base`)."""
    return alias_main(_command, PROG, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

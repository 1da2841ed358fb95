"""``repan-detect``: the alias of ``repan detect`` (:mod:`repan_zoo.cli.detect`); also
``python -m repan_zoo.detection.cli`` and ``train_scripts/finetune_detection.py`` (under ``torchrun`` too)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..cli import detect as _command
from ..cli.base import alias_main, standalone_parser

__all__ = ["build_parser", "config_from_args", "main"]

PROG = "repan-detect"


def build_parser() -> argparse.ArgumentParser:
    """The ``repan-detect`` parser (the options of ``repan detect``)."""
    return standalone_parser(_command, PROG)


def config_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None):
    """The :class:`~repan_zoo.detection.FinetuneConfig` of parsed options (:func:`repan_zoo.cli.detect.config_from_args`;
    ``parser`` is accepted for compatibility and unused)."""
    return _command.config_from_args(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; exit statuses as ``repan`` (:mod:`repan_zoo.cli.base`)."""
    return alias_main(_command, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

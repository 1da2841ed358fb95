"""``repan-train``: the alias of ``repan train`` (:mod:`repan_zoo.cli.train`); also
``python -m repan_zoo.train_cli`` (under ``torchrun`` too) and ``train_scripts/train.py``."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from .cli import train as _command
from .cli.base import alias_main, standalone_parser
from .cli.train import check_recipe
from .cli_types import SEED_MAX

__all__ = ["build_parser", "run", "main", "check_recipe", "SEED_MAX"]

PROG = "repan-train"


def build_parser():
    """The ``repan-train`` parser (the options of ``repan train``)."""
    return standalone_parser(_command, PROG)


def run(argv: Optional[Sequence[str]] = None):
    """Parse ``argv`` and train.

    Args:
        argv: ``repan-train`` arguments (default: ``sys.argv[1:]``).

    Returns:
        The :class:`~repan_zoo.annealing.TrainResult`.

    Raises:
        RepanError: typed subclasses propagate (:func:`main` turns them into exit statuses).
    """
    return _command.train(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; exit statuses as ``repan`` (:mod:`repan_zoo.cli.base`): 0 done, 1 the
    deploy model not exact, 2 refused (recipe, data, checkpoint …), 3 training diverged."""
    return alias_main(_command, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

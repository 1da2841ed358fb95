"""The ``repan`` command: one entry point, one module per subcommand.

::

    repan train   --out DIR [recipe options]      train with RepAn (Algorithm 1), plain or KD
    repan detect  --out DIR --data-root DIR ...   fine-tune a detector on a Rep backbone
    repan publish CHECKPOINT --metrics JSON --tag TAG (--repo ORG/NAME | --bundle)
    repan export  MODEL --out FILE [--format onnx|torchscript | --int8]
    repan profile MODEL [--input-size C H W]
    repan list    [PATTERN] [--pretrained]
    repan verify  MODEL [--checkpoint FILE] [--model-kwargs JSON]

``repan-train``, ``repan-detect`` and ``repan-publish`` are aliases of ``repan train`` / ``detect``
/ ``publish`` (as are ``python -m repan_zoo.train_cli``, ``python -m repan_zoo.detection.cli``,
``python -m repan_zoo.publish_cli`` and ``train_scripts/*.py``). Exit statuses and the error
message format are the same in all of them (:mod:`repan_zoo.cli.base`): 0 done, 1 a check found
a problem, 2 refused (usage, recipe, model, data, checkpoint, weights …), 3 training diverged.
Recipe options are generated from the config dataclasses (:mod:`repan_zoo.cli.options`).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Sequence

from ..cli_types import OneLineParser
from .base import add_parser, run_command
from .model_options import MODEL_PREFIX, create_model, list_models

__all__ = ["main", "build_parser", "command_module", "SUBCOMMANDS", "create_model", "list_models", "MODEL_PREFIX"]

#: the subcommands, in ``repan --help`` order
SUBCOMMANDS = ("train", "detect", "publish", "export", "profile", "list", "verify")
_MODULE_NAMES = {"list": "listing"}  # a module named ``list`` would shadow the builtin here


def command_module(name: str) -> ModuleType:
    """The module of the subcommand ``name`` (``repan_zoo.cli.train`` …)."""
    return importlib.import_module(f"{__name__}.{_MODULE_NAMES.get(name, name)}")


def build_parser() -> OneLineParser:
    """The ``repan`` parser with every subcommand mounted."""
    from .. import __version__

    parser = OneLineParser(prog="repan", description="RepAn Zoo: train, fine-tune, publish, export, profile, list "
                           "and verify repan_* models")
    parser.add_argument("--version", action="version", version=f"repan-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.subcommand_parsers = {name: add_parser(sub, command_module(name)) for name in SUBCOMMANDS}
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``repan`` console script.

    Args:
        argv: the arguments after ``repan`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status (:data:`repan_zoo.cli.base.EXIT_CODES`): 0 done, 1 a check found a problem,
        2 refused, 3 training diverged. A usage error exits 2 through ``SystemExit``.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand's parser: `repan profile: error: ...`, with its --help
        parser.subcommand_parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return run_command(f"repan {args.command}", lambda a: a.command_module.run(a), args)

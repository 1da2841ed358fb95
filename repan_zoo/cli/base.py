"""What every subcommand shares: the exit status of each outcome, the one error-message format,
and how a subcommand module is mounted under ``repan`` or run alone under an alias name.

Exit status (the same for the same error in every subcommand and alias):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     done
1     the command ran, and a check it makes found a problem: ``repan verify`` / a conversion
      not exact (:class:`~repan_zoo.errors.ReparameterizationError`), ``repan list`` matched
      nothing (:class:`CheckFailed`)
2     refused: a bad option (argparse), recipe, model, dataset, checkpoint, weights, export …
      (any other :class:`~repan_zoo.errors.RepanError`); nothing was written. Also a file the
      operating system refused mid-way (permission, disk full, read-only, I/O error: the message
      names it; a run's completed epochs are kept)
3     training diverged (:class:`~repan_zoo.errors.TrainingDivergedError`; the message names
      cycle, epoch, step and the last good checkpoint)
130   interrupted (Ctrl-C): one line naming how to resume a run, not a traceback
141   the reader of stdout went away (``repan list | head -1``): the output stops quietly, as a
      shell tool's does on SIGPIPE; a training run only stops printing and goes on
====  ==========================================================================================

Every error is one line on stderr: ``<prog>: error: <message>``, where ``<prog>`` is
``repan <subcommand>`` (or the alias: ``repan-train``, ``repan-detect``, ``repan-publish``).
Any other exception is a bug and keeps its traceback.

A subcommand is a module with ``NAME``, ``HELP`` (its line in ``repan --help``), a docstring
(its first paragraph is the description), ``add_arguments(parser)`` and ``run(args) -> int``;
:func:`add_parser` mounts it under ``repan``, :func:`alias_main` runs it alone.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from types import ModuleType
from typing import Callable, Optional, Sequence, Tuple, Type

from ..cli_types import HelpFormatter, OneLineParser
from ..errors import RepanError, ReparameterizationError, TrainingDivergedError

__all__ = ["EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_REFUSED", "EXIT_DIVERGED", "EXIT_CODES", "CheckFailed",
           "exit_code", "report", "add_parser", "standalone_parser", "run_command", "alias_main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_REFUSED = 2  # also argparse's own status for a usage error
EXIT_DIVERGED = 3


class CheckFailed(RepanError):
    """The command ran, and the check it makes found a problem (exit status 1)."""


#: error class → exit status, most specific first; the first class the error is an instance of decides
EXIT_CODES: Tuple[Tuple[Type[BaseException], int], ...] = (
    (TrainingDivergedError, EXIT_DIVERGED),
    (ReparameterizationError, EXIT_CHECK_FAILED),
    (CheckFailed, EXIT_CHECK_FAILED),
    (RepanError, EXIT_REFUSED),
)


def exit_code(exc: BaseException) -> Optional[int]:
    """The exit status of an error.

    Args:
        exc: the exception a command raised.

    Returns:
        Its status from :data:`EXIT_CODES` (the first class it is an instance of), or None for an
        exception that is not a reported error (a bug: it keeps its traceback).
    """
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), None)


def report(prog: str, message: object) -> None:
    """Print the one error-message format, ``<prog>: error: <message>``, as one line on stderr.

    Args:
        prog: ``repan <subcommand>`` or the alias name.
        message: the error (its ``str``).
    """
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def _description(module: ModuleType) -> str:
    """The first paragraph of the module's docstring, without reST markup."""
    text = (module.__doc__ or "").strip().split("\n\n")[0]
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def add_parser(subparsers, module: ModuleType) -> argparse.ArgumentParser:
    """Mount a subcommand under ``repan``.

    Args:
        subparsers: the action ``add_subparsers()`` returned.
        module: the subcommand's module (``NAME``, ``HELP``, ``add_arguments``, ``run``).

    Returns:
        The subcommand's parser (``repan <NAME>``); its namespace carries ``command_module``.
    """
    parser = subparsers.add_parser(module.NAME, help=module.HELP, description=_description(module),
                                   formatter_class=HelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(command_module=module)
    return parser


def standalone_parser(module: ModuleType, prog: str) -> OneLineParser:
    """The parser of one subcommand on its own, for an alias.

    Args:
        module: the subcommand's module.
        prog: the alias name, e.g. ``repan-train``.

    Returns:
        A parser with exactly the subcommand's options.
    """
    parser = OneLineParser(prog=prog, description=_description(module),
                           formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser


#: exit status after Ctrl-C (the shells' 128 + SIGINT)
EXIT_INTERRUPTED = 130

#: exit status when the reader of stdout went away (``repan list | head -1``): the shells' 128 + SIGPIPE
EXIT_PIPE = 141


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null (its reader went away), so that later writes, and the interpreter's
    flush at exit, do not raise ``BrokenPipeError`` again (Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def console_print(msg: str) -> None:
    """``print(msg, flush=True)`` that survives a closed stdout: when its reader went away, the
    rest of the output is dropped and the caller goes on (a training run piped into ``head``)."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()


#: errno of the storage failures reported as one line (disk full, quota, read-only, I/O, file too large)
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def run_command(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, turning a reported error into its message and exit status.

    Args:
        prog: the name in the error message.
        run: the subcommand's ``run``.
        args: its parsed namespace.

    Returns:
        ``run(args)``'s status, or the error's from :data:`EXIT_CODES`.

    Raises:
        Exception: anything that is neither a :class:`~repan_zoo.errors.RepanError` nor a storage
            ``OSError`` naming a file (a bug) propagates.
    """
    try:
        return run(args)
    except RepanError as exc:
        code = exit_code(exc)
        report(prog, exc)
        return code
    except BrokenPipeError:  # the reader of the output went away: nothing to report, and nowhere to
        _stdout_to_devnull()
        return EXIT_PIPE
    except OSError as exc:
        if exc.filename is None or not (isinstance(exc, PermissionError) or exc.errno in _STORAGE_ERRNOS):
            raise  # not a file system's refusal (a missing file of the package, say): a bug, with its traceback
        report(prog, f"{exc.filename}: {exc.strerror or exc}; check the path, its permissions and the free space "
                     "on its disk, then run the command again")
        return EXIT_REFUSED
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever the run was
        out = getattr(args, "out", None)
        resume = ""
        if out is not None and hasattr(args, "resume"):  # a run: say whether there is anything to resume
            from ..runtime.checkpointing import Checkpointer

            resume = (f"; every completed epoch in {out} is kept: continue with `{prog} --out {out} --resume`"
                      if Checkpointer(out).exists() else
                      f"; no epoch had completed, so {out} holds nothing to continue: run the command again")
        print(f"{prog}: interrupted{resume}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def alias_main(module: ModuleType, prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of an alias (``repan-train`` = ``repan train``): the same options, run and exit
    statuses, with ``prog`` in its messages.

    Args:
        module: the subcommand's module.
        prog: the alias name.
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status; a usage error exits 2 through ``SystemExit`` (argparse).
    """
    args = standalone_parser(module, prog).parse_args(argv)
    return run_command(prog, module.run, args)

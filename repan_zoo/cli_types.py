"""argparse value types shared by the ``repan`` command and its subcommands, and the declaration of
a config field's command-line option (:func:`option`, read by :mod:`repan_zoo.cli.options`).

This module imports nothing from ``repan_zoo`` at import time, so the config dataclasses
(:class:`~repan_zoo.annealing.TrainConfig`, :class:`~repan_zoo.detection.FinetuneConfig`,
:class:`~repan_zoo.expansion.Expansion`) can declare their options next to their fields.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import tempfile
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, MutableMapping, Optional, Sequence, Union

__all__ = [
    "json_dict", "csv_list", "int_list", "optional_int", "number", "device", "writable_dir", "writable_file",
    "writable_dir_problem", "writable_file_problem", "OneLineParser", "HelpFormatter", "given_options", "Option", "option",
    "no_option", "CLI_KEY", "SEED_MAX",
]

#: seeds are 63-bit (torch.manual_seed takes a signed 64-bit integer)
SEED_MAX = 2**63 - 1


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


def _plain_number(value: Any) -> Any:
    """A numpy (or other ``numbers``) integer as ``int`` and real as ``float``, as timm's own models
    take them; anything else as it is."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, numbers.Integral):  # numpy.bool_ is no Integral: refused like bool
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def number(kind: type = float, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
           none: bool = False, words: Sequence[str] = ()) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` (int or float) and refuses NaN, ±inf and values
    outside ``[lo, hi]`` (``lo_open`` / ``hi_open``: the bound itself is excluded) with a message
    that states the allowed range. ``none=True`` also accepts none/all/'' (→ ``None``: no limit);
    each of ``words`` (e.g. ``"auto"``) is accepted in any case and returned as written in ``words``.
    The returned function has ``.check(value)``: the same rule for a value already parsed (the
    Python API, a saved recipe), raising ``argparse.ArgumentTypeError`` and returning the value, a
    numpy number as the Python ``int`` / ``float`` it stands for (:func:`check_fields` applies it
    to every option field of a config)."""
    rule = _bound_text(lo, hi, lo_open, hi_open)
    alternatives = "".join(f" or {w!r}" for w in words)
    expected = f"expected {'an integer' if kind is int else 'a number'}{' ' + rule if rule else ''}{alternatives}"

    def check(value, shown=None):
        shown = repr(value) if shown is None else shown
        if (value is None and none) or (isinstance(value, str) and value in words):
            return value
        value = _plain_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise argparse.ArgumentTypeError(f"{expected}, got {shown}")
        try:  # an int stands for itself, exactly, unless a float is wanted and it has none
            finite = math.isfinite(float(value)) if kind is float or isinstance(value, float) else True
        except OverflowError:
            finite = False
        if not finite:
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + rule if rule else ''}, got {shown}")
        if ((lo is not None and (value < lo or (lo_open and value == lo)))
                or (hi is not None and (value > hi or (hi_open and value == hi)))):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {shown}")
        return value

    def parse(text: str):
        if none and text.strip().lower() in ("", "none", "all"):
            return None
        for word in words:
            if text.strip().lower() == word.lower():
                return word
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        return check(value, repr(text))

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    parse.check = check
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
    """Why a run directory cannot be created or written at ``path`` (None: it can). Leaves nothing
    behind: the nearest existing folder is tried with a temporary file, deleted at once."""
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
    if probe.is_dir():  # os.access reads permission bits (all yes for root); a read-only or virtual
        try:            # file system (sysfs, a read-only mount) refuses only when a file is made
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            return f"{probe} does not take new files ({exc.strerror or exc}); choose a writable directory"
    return None


def writable_file_problem(path: os.PathLike) -> Optional[str]:
    """Why a file cannot be written at ``path`` (None: it can). Leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory; give a file name (e.g. {path / 'model.onnx'})"
    return writable_dir_problem(path.parent) if path.parent != path else None


def writable_dir(text: str) -> str:
    """A run directory that can be created or written (:func:`writable_dir_problem`); leaves nothing behind."""
    problem = writable_dir_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def writable_file(text: str) -> str:
    """A file path that can be written (:func:`writable_file_problem`); leaves nothing behind."""
    problem = writable_file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


class _Unset:
    def __repr__(self) -> str:
        return "<not given>"


_UNSET = _Unset()
_GIVEN = "_given_options"
_ACCUMULATING = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, unless the help already says it or there is none
    (None, an off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr (the problem and where
    to look for the fix), exit status 2 — no usage block, no traceback.

    It also records which options the command line gave (:func:`given_options`), subparsers
    included: ``repan-train --resume`` lets exactly those override the saved recipe."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # argparse fills in a default only where the namespace lacks the attribute: pre-set
        # markers show which options were given (actions that add to the value start from None)
        namespace = argparse.Namespace() if namespace is None else namespace
        marked = []
        for action in self._actions:
            if argparse.SUPPRESS in (action.dest, action.default) or hasattr(namespace, action.dest):
                continue
            setattr(namespace, action.dest, None if isinstance(action, _ACCUMULATING) else _UNSET)
            marked.append(action)
        namespace, rest = super().parse_known_args(args, namespace)
        given = set(getattr(namespace, _GIVEN, ()))
        for action in marked:
            value = getattr(namespace, action.dest)
            if value is _UNSET or (value is None and isinstance(action, _ACCUMULATING)):
                default = action.default
                setattr(namespace, action.dest, self._get_value(action, default) if isinstance(default, str) else default)
            else:
                given.add(action.dest)
        setattr(namespace, _GIVEN, frozenset(given))
        return namespace, rest


def given_options(args: argparse.Namespace) -> FrozenSet[str]:
    """The destinations (``lr``, ``kd_T`` …) whose options were on the command line that
    :class:`OneLineParser` parsed into ``args``."""
    return frozenset(getattr(args, _GIVEN, ()))


# -- options declared on config fields ------------------------------------------------------------
#: the key of a dataclass field's ``metadata`` that holds its :class:`Option` (None: not an option)
CLI_KEY = "cli"


@dataclass(frozen=True)
class Option:
    """How a config field is offered on the command line; :func:`repan_zoo.cli.options.add_config_options`
    turns it into an argparse option (``--field-name``, ``dest=field_name``, the field's default).

    Attributes:
        help: the ``--help`` text.
        type: the argparse ``type=`` (e.g. ``number(int, 1)``); None: the string as given.
        choices: the allowed values, or a callable that returns them when the parser is built.
        flag: the option string when it is not ``--`` + the name with ``_`` → ``-``.
        group: title of the ``--help`` section this field and the fields after it belong to.
        negatable: a bool field as ``--x / --no-x``; otherwise a bool is a ``store_true`` flag.
        run: one of the shared run options (:data:`repan_zoo.cli.options.RUN_OPTIONS`, e.g. ``--out``,
            ``--device``): defined there, with this field's default.
    """

    help: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None
    choices: Union[Sequence[Any], Callable[[], Sequence[Any]], None] = None
    flag: Optional[str] = None
    group: Optional[str] = None
    negatable: bool = False
    run: bool = False


def option(help: Optional[str] = None, **kwargs: Any) -> Dict[str, Option]:
    """Field metadata that makes the field a command-line option, e.g.
    ``lr: float = field(default=0.2, metadata=option("peak learning rate", type=number(float, 0.0, lo_open=True)))``.

    Args:
        help: the ``--help`` text.
        **kwargs: the other fields of :class:`Option`.

    Returns:
        ``{CLI_KEY: Option(...)}``, to pass as ``dataclasses.field(metadata=...)``.
    """
    return {CLI_KEY: Option(help, **kwargs)}


def check_fields(config: Any, error: Callable[[str], Exception]) -> None:
    """Check every field of the dataclass ``config`` whose :class:`Option` type has a ``check``
    (:func:`number`) against that rule, so that a config built in Python or read from a saved
    recipe holds what the command line enforces (``None`` passes where it is the field's default).
    Raises ``error("--flag must be …, got …")``."""
    for f in dataclasses.fields(config):
        spec = f.metadata.get(CLI_KEY)
        check = getattr(getattr(spec, "type", None), "check", None)
        value = getattr(config, f.name)
        if check is None or (value is None and f.default is None):  # None as the default: "not given"
            continue
        try:
            check(value)
        except argparse.ArgumentTypeError as exc:
            raise error(f"{spec.flag or '--' + f.name.replace('_', '-')} {exc}") from None


def check_values(values: Any, rules: Dict[str, Callable[[str], Any]], error: Callable[[str], Exception],
                 notes: Optional[Dict[str, str]] = None, *, none_passes: bool = True) -> None:
    """Check each ``name`` of ``rules`` (:func:`number` rules) on ``values`` (a mapping, or an
    object's attributes) the way the command line would; ``None`` means "not given" and passes
    unless ``none_passes=False``; in a mapping, a numpy number is replaced by the Python number it
    stands for. Raises ``error("name=value: must be …, got …" + notes[name])``:
    for keyword arguments and config fields that are not command-line options (:func:`check_fields`
    covers those that are)."""
    for name, rule in rules.items():
        value = values.get(name) if isinstance(values, Mapping) else getattr(values, name)
        if value is None and none_passes:
            continue
        try:
            checked = rule.check(value)
        except argparse.ArgumentTypeError as exc:
            raise error(f"{name}={value!r}: {exc}{(notes or {}).get(name, '')}") from None
        if checked is not value and isinstance(values, MutableMapping):
            values[name] = checked  # a numpy number as the Python number it stands for


def no_option() -> Dict[str, None]:
    """Field metadata of a field that is deliberately not a command-line option."""
    return {CLI_KEY: None}


#: an integer, or none/all/'' for no limit
optional_int = number(int, none=True)


def check_model_name(name: str, option: str = "model") -> None:
    """Refuse a model name timm cannot build: an unregistered architecture (:class:`~repan_zoo.errors.UnknownModelError`, a ``ValueError``) or a
    pretrained tag the architecture does not have (:class:`~repan_zoo.errors.UnknownTagError`,
    listing the tags it has). Call it after plugins (``--import``) registered their models."""
    import timm

    from . import models  # noqa: F401  (registers the repan_* families with timm)
    from .errors import UnknownModelError
    from .models.repan import check_pretrained_tag

    if name.startswith(("hf-hub:", "local-dir:")):
        return  # timm resolves these itself (a Hub repo or a folder), the weights loader verifies them
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        known = [n for n in timm.list_models("repan_*")]
        raise UnknownModelError(f"unknown model {name!r} ({option}); registered repan models: {', '.join(known)} "
                         "(`repan list` shows them)")
    if tag:
        check_pretrained_tag(arch, tag, option)

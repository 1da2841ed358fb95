"""Options generated from the config dataclasses, the shared run options, and the checks across
options that several subcommands make.

One generator, :func:`add_config_options`, turns the fields of a config dataclass into argparse
options: each field declares its option in ``metadata`` with :func:`repan_zoo.cli_types.option`
(help, type, choices, flag, help section); a field whose default is itself a dataclass
(``expansion: Expansion``) contributes its own fields, flattened (``--branches``, ``--k`` …), the
same flat names ``as_dict()`` records. :func:`config_values` reads them back from the parsed
namespace. A new config field becomes an option by declaring it::

    warmup_epochs: float = field(default=0.0, metadata=option("linear LR warmup per cycle", type=number(float, 0.0)))

A field with ``metadata=no_option()`` is not an option; a field that declares neither is refused
when a parser is built, so a new field cannot be forgotten.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from ..cli_types import CLI_KEY, Option, device, number, writable_dir

__all__ = [
    "add_config_options", "config_values", "RUN_OPTIONS", "add_run_options", "check_model_names",
    "check_files_exist",
]

#: Options of a run that are no recipe field (or the same for every recipe): defined once here,
#: added by :func:`add_run_options` and by config fields declared ``option(run=True)``.
RUN_OPTIONS: Dict[str, Dict[str, Any]] = {
    "out": dict(required=True, type=writable_dir, help="run directory (checkpoints, metrics, deploy checkpoint)"),
    "resume": dict(action="store_true", help="continue the run in --out from its last completed epoch"),
    "device": dict(type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)"),
    "workers": dict(type=number(int, 0), default=0, help="DataLoader worker processes"),
    "threads": dict(type=number(int, 1), default=None, help="torch CPU threads per process"),
    "progress": dict(action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars (rank 0)"),
}


def add_run_options(group, *names: str, **changes: Dict[str, Any]) -> None:
    """Add the shared run options ``names`` (keys of :data:`RUN_OPTIONS`) to ``group``.

    Args:
        group: an argparse parser or argument group.
        *names: the options, in ``--help`` order.
        **changes: per option, argparse keywords that replace the shared ones (e.g. a default).
    """
    for name in names:
        group.add_argument("--" + name.replace("_", "-"), **{**RUN_OPTIONS[name], **changes.get(name, {})})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None  # a required field: given on the command line, or filled in by the command


def _declared(cls: type) -> Iterator[Tuple[str, Option, Any]]:
    """``(name, option, default)`` of every option-bearing field of ``cls``, nested dataclasses
    flattened (their fields follow in the place of the field that holds them)."""
    for f in dataclasses.fields(cls):
        if CLI_KEY not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} declares no command-line option: give the field "
                            "metadata=option(...) (repan_zoo.cli_types), or metadata=no_option()")
        spec, default = f.metadata[CLI_KEY], _default(f)
        if spec is None:
            continue
        if dataclasses.is_dataclass(default):
            if spec.group:
                yield "", spec, None  # only opens the section
            yield from _declared(type(default))
        else:
            yield f.name, spec, default


def add_config_options(parser: argparse.ArgumentParser, cls: type) -> Dict[str, Any]:
    """Add one option per field of the config dataclass ``cls`` (see the module docstring).

    Each option is ``--name-with-dashes`` (or ``Option.flag``) with ``dest`` the field name and
    the field's default (tuples as lists, the JSON form); a bool field is a ``store_true`` flag, or
    ``--x / --no-x`` when ``negatable``. A field's ``group`` opens a ``--help`` section that the
    fields after it join; run options (``Option.run``) go to the ``run`` section, last.

    Args:
        parser: the parser (a subcommand's) to add to.
        cls: a dataclass whose fields all declare ``metadata=option(...)`` or ``no_option()``.

    Returns:
        The argument groups by title, for a command to add its own options to.

    Raises:
        TypeError: a field of ``cls`` declares neither.
    """
    groups: Dict[str, Any] = {}
    group: Any = parser
    run = []
    for name, spec, default in _declared(cls):
        if spec.group:
            group = groups.get(spec.group) or groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        if spec.run:
            run.append((name, default))
        elif name:
            _add(group, name, spec, default)
    if run:
        group = groups.get("run") or groups.setdefault("run", parser.add_argument_group("run"))
        add_run_options(group, *(name for name, _ in run), **{name: {"default": d} for name, d in run if d is not None})
    return groups


def _add(group, name: str, spec: Option, default: Any) -> None:
    kwargs: Dict[str, Any] = dict(dest=name, help=spec.help, default=list(default) if isinstance(default, tuple) else default)
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction if spec.negatable else "store_true"
    else:
        kwargs["type"] = spec.type
        kwargs["choices"] = spec.choices() if callable(spec.choices) else spec.choices
    group.add_argument(spec.flag or "--" + name.replace("_", "-"), **kwargs)


def config_values(cls: type, args: argparse.Namespace) -> Dict[str, Any]:
    """The keyword arguments of ``cls`` that ``args`` holds, by field name; a nested dataclass
    field (``expansion``) as a dict of its own fields (the configs coerce it).

    Args:
        cls: the config dataclass the options were generated from.
        args: the parsed namespace.

    Returns:
        ``{field: value}`` for every option-bearing field present in ``args``.
    """
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get(CLI_KEY) is None:
            continue
        default = _default(f)
        if dataclasses.is_dataclass(default):
            values[f.name] = config_values(type(default), args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return values


# -- checks across options (before anything is read or written) ----------------------------------
def check_model_names(**names: Optional[str]) -> None:
    """Refuse model names timm cannot build, by option (``check_model_names(model=..., teacher=...)``).

    Raises:
        RecipeError: an unregistered architecture, naming the option and the registered models.
        UnknownTagError: a pretrained tag the architecture does not have.
    """
    from ..cli_types import check_model_name
    from ..errors import RecipeError

    for option, name in names.items():
        if name:
            try:
                check_model_name(name, "--" + option.replace("_", "-"))
            except ValueError as exc:
                raise RecipeError(str(exc)) from None


def check_files_exist(**paths: Optional[str]) -> None:
    """Refuse checkpoint options that name no file (``check_files_exist(init_checkpoint=...)``).

    Raises:
        RecipeError: naming the option and the path.
    """
    from ..checkpoint import read_metadata
    from ..errors import CheckpointError, RecipeError

    for option, path in paths.items():
        if path and Path(path).is_dir():
            try:
                read_metadata(path)  # names the folder and the checkpoints in it
            except CheckpointError as exc:
                raise RecipeError(f"--{option.replace('_', '-')} {exc}") from None
        if path and not Path(path).is_file():
            raise RecipeError(f"--{option.replace('_', '-')} {path}: no such file; give the path of a safetensors "
                              "checkpoint")

"""The two operations every name → thing registry of the package shares (branch kinds, stage block
types, datasets, probe adapters, ...): add under a new name, and look a name up with an error that
lists the registered names and says how to add one."""
from __future__ import annotations

from typing import Dict, Type, TypeVar

__all__ = ["add", "lookup"]

T = TypeVar("T")


def add(registry: Dict[str, T], name: str, value: T, *, what: str, error: Type[Exception] = ValueError) -> T:
    """``registry[name] = value`` for a new ``name``.

    Args:
        registry: the registry dict.
        name: the new name.
        value: what it names.
        what: the kind of thing, for the message (``"dataset"``).
        error: the exception type raised for a taken name.

    Returns:
        ``value``.

    Raises:
        ``error``: ``name`` is already registered.
    """
    if name in registry:
        raise error(f"{what} {name!r} is already registered; choose another name")
    registry[name] = value
    return value


def lookup(registry: Dict[str, T], name: str, *, what: str, how: str, error: Type[Exception] = KeyError) -> T:
    """``registry[name]``.

    Args:
        registry: the registry dict.
        name: the name asked for.
        what: the kind of thing, for the message (``"dataset"``).
        how: how to add one (``"register new ones with repan_zoo.datasets.register_dataset"``).
        error: the exception type raised for an unknown name.

    Raises:
        ``error``: ``name`` is not registered; the message lists the registered names and ``how``.
    """
    try:
        return registry[name]
    except KeyError:
        raise error(f"unknown {what} {name!r}; registered: {sorted(registry)} ({how})") from None

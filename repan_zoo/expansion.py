"""The Expand + Restore settings of Algorithm 1 (lines 4–5) as one value: :class:`Expansion`.

Every place that expands a network — :func:`repan_zoo.unfold`, the classification trainer
(:class:`repan_zoo.annealing.TrainConfig`), detection fine-tuning
(:class:`repan_zoo.detection.FinetuneConfig`) and both command lines — takes one
``Expansion``; it validates itself when built, so a wrong setting is refused once, by name,
before anything trains. The defaults are the paper's (Sec. 3, step iii; Sec. 3.3).

Adding a Restore rule is one function with :func:`repan_zoo.algebra.register_restore_rule`
(``Expansion(restore=name)`` and ``--restore name`` accept it at once); adding a branch kind
is one class with :func:`repan_zoo.blocks.register_branch`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Tuple, Union

from .cli_types import csv_list, number, option
from .errors import RecipeError

__all__ = ["Expansion", "ARCH_BRANCHES", "GENERIC_BRANCHES", "DEFAULT_BRANCHES", "MAX_K", "ExpansionError", "flat_fields"]

#: ``branches=("arch",)``: each block re-gets the branch kinds of its own architecture
#: (``RepBlock.arch_branches``: RepVGG's 1×1 + identity, ACNet's k×1 + 1×k, DBB's, MobileOne's k
#: parallel k×k + scale + identity) — the paper's Sec. 3 (iii), Rep and Expand repeated with the
#: network's own multi-branch structure. The default expansion.
ARCH_BRANCHES: Tuple[str, ...] = ("arch",)
#: The generic pair: one new k×k and one new 1×1 conv+BN per block (findings-cpu-scale.md).
GENERIC_BRANCHES: Tuple[str, ...] = ("conv_kxk", "conv_1x1")
DEFAULT_BRANCHES = ARCH_BRANCHES
#: The most new parallel branches per kind and block the paper measures (Table 5: k = 1..5).
MAX_K = 5


class ExpansionError(RecipeError):
    """An invalid :class:`Expansion` (unknown branch kind or restore rule, k out of range, …)."""


@dataclass(frozen=True)
class Expansion:
    """How Expand + Restore (Algorithm 1, lines 4–5; Eq. 3 and the inverse of Eq. 2) rebuild a block.

    Attributes:
        branches: branch kinds attached to every expanded block (names of
            :data:`repan_zoo.blocks.BRANCH_KINDS`), or :data:`ARCH_BRANCHES` ``("arch",)`` for each
            block's own kinds; ``()`` restores only.
        k: new parallel branches per kind and block, ``0..MAX_K`` (Table 5).
        restore: the Restore rule (:data:`repan_zoo.algebra.RESTORE_RULES`; ``"inherit"``: Sec. 3.3).
        residual: also attach the residual BN branch ``BN_res(X)`` of Eq. 3 where shapes allow.
        branch_gamma: γ of each new branch's output BN (0: it starts as an exact no-op,
            ``findings-cpu-scale.md``); finite.

    Raises:
        ExpansionError: at construction, naming the field, the registered choices and the fix.
    """

    branches: Tuple[str, ...] = field(default=ARCH_BRANCHES, metadata=option(
        "branch kinds attached at each Expand (comma-separated), or 'arch' for each block's own kinds",
        type=csv_list))
    k: int = field(default=1, metadata=option(
        f"new parallel branches per kind and block (1..{MAX_K}, Table 5; 0: Restore only, no new branch)",
        type=number(int, 0, MAX_K)))
    restore: str = field(default="inherit", metadata=option(
        "inverse of Eq. 2: inherit | normalized | identity | a registered rule (repan_zoo.algebra.RESTORE_RULES)"))
    residual: bool = field(default=False, metadata=option(
        "also attach the residual BN branch BN_res(X) of Eq. 3 where shapes allow", negatable=True))
    branch_gamma: float = field(default=0.0, metadata=option(
        "γ of each new branch's output BN (0: the branch starts as an exact no-op)", type=number(float, 0.0)))

    def __post_init__(self) -> None:
        if isinstance(self.branches, str):
            object.__setattr__(self, "branches", tuple(b for b in self.branches.split(",") if b))
        object.__setattr__(self, "branches", tuple(self.branches))
        self._validate()

    def _validate(self) -> None:
        from .algebra import RESTORE_RULES
        from .blocks import BRANCH_KINDS

        unknown = [b for b in self.branches if b != "arch" and b not in BRANCH_KINDS]
        if unknown:
            raise ExpansionError(f"branches {unknown}: unknown branch kind(s); registered: {sorted(BRANCH_KINDS)} "
                                 "or 'arch' (each block's own kinds)")
        if "arch" in self.branches and len(self.branches) > 1:
            raise ExpansionError("branches ('arch',) (each block's own kinds) cannot be mixed with named kinds")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 <= self.k <= MAX_K:
            raise ExpansionError(f"k={self.k!r}: the number of new parallel branches per kind is 0..{MAX_K} (Table 5)")
        if self.restore not in RESTORE_RULES:
            raise ExpansionError(f"restore {self.restore!r}: choose one of {tuple(RESTORE_RULES)} "
                                 "(or register a rule with repan_zoo.algebra.register_restore_rule)")
        if not isinstance(self.residual, bool):
            raise ExpansionError(f"residual={self.residual!r} must be True or False")
        if not isinstance(self.branch_gamma, (int, float)) or not math.isfinite(self.branch_gamma):
            raise ExpansionError(f"branch_gamma={self.branch_gamma!r} must be a finite number (0: new branches "
                                 "start as exact no-ops)")

    @property
    def arch(self) -> bool:
        """True when every block re-gets its own kinds (``branches == ("arch",)``)."""
        return self.branches == ARCH_BRANCHES

    def replace(self, **changes: Any) -> "Expansion":
        """A copy with ``changes`` applied (validated). Raises ``TypeError`` for an unknown field."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"Expansion has no field(s) {unknown}; fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        """The fields as JSON values (``branches`` a list), the form recipes record."""
        return {"branches": list(self.branches), "k": self.k, "restore": self.restore, "residual": self.residual,
                "branch_gamma": self.branch_gamma}

    @classmethod
    def of(cls, value: Union["Expansion", str, Sequence[str], Dict[str, Any], None] = None, **changes: Any) -> "Expansion":
        """Coerce ``value`` — an ``Expansion``, branch kinds (a sequence, or a string of
        comma-separated kinds as ``branches=`` and the command line take), a dict of fields
        (:meth:`as_dict`'s form) or None (the defaults) — and apply ``changes``."""
        if value is None:
            base = cls()
        elif isinstance(value, Expansion):
            base = value
        elif isinstance(value, dict):
            base = cls().replace(**value)
        else:
            base = cls(branches=value if isinstance(value, str) else tuple(value))
        return base.replace(**changes) if changes else base


def flat_fields(config: Any) -> Dict[str, Any]:
    """The fields of the dataclass ``config`` as JSON values, an :class:`Expansion` field replaced
    by its own fields (:meth:`Expansion.as_dict`): the flat recipe form that ``recipe.json``,
    ``config.json`` and ``final.json`` record and the command line's options mirror."""
    d: Dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Expansion):
            d.update(value.as_dict())
        else:
            d[f.name] = copy.deepcopy(value)
    return d

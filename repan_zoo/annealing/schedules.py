"""The adjustment scheduler Θ of Algorithm 1 (λ ← Θ(r, e), line 8) and the learning-rate schedule.

λ is the attach rate of Eq. (3): ``Y = Y_inv + λ (Σ Y_exp + Y_res)``. A λ schedule is a
function of the cycle ``r`` (1-based) and of the **progress** ``p ∈ (0, 1]`` through the
cycle, measured at the *end* of the unit it is applied to:

* per epoch (the paper's Θ(r, e)): epoch ``e`` of ``E`` (1-based) trains with Θ(r, e/E);
  λ is set *before* the epoch's first step, so the first epoch already trains with its
  own value (the official code updated λ after the epoch);
* per iteration: step ``t`` of ``T`` (1-based) trains with Θ(r, t/T).

Built-in shapes (``start``→``end``, reached after the fraction ``warmup`` of the cycle):
``constant`` (always ``end``), ``linear``, ``cosine`` (half-cosine rise) and ``step``
(``start`` until ``warmup``, then ``end``). Register more with
:func:`register_lambda_schedule`; every value is checked to lie in [0, 1]
(:func:`repan_zoo.blocks.check_lambda`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..blocks import check_lambda
from ..errors import RecipeError

__all__ = [
    "check_min_lr",
    "LAMBDA_SCHEDULES",
    "register_lambda_schedule",
    "LambdaSchedule",
    "cosine_lr",
]

#: name → ``fn(progress, cycle, *, start, end, warmup, **params) -> λ``
LAMBDA_SCHEDULES: Dict[str, Callable[..., float]] = {}


def register_lambda_schedule(name: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator: make ``fn(progress, cycle, *, start, end, warmup, **params) -> float`` a λ
    schedule selectable by ``name`` (``--lam-schedule name``)."""

    def wrap(fn: Callable[..., float]) -> Callable[..., float]:
        if name in LAMBDA_SCHEDULES:
            raise ValueError(f"λ schedule {name!r} is already registered")
        LAMBDA_SCHEDULES[name] = fn
        return fn

    return wrap


def _ramp(progress: float, warmup: float) -> float:
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, progress / warmup))


@register_lambda_schedule("constant")
def constant(progress: float, cycle: int, *, start: float, end: float, warmup: float) -> float:
    """λ = ``end`` throughout."""
    return end


@register_lambda_schedule("linear")
def linear(progress: float, cycle: int, *, start: float, end: float, warmup: float) -> float:
    """Linear ramp ``start``→``end`` over the first ``warmup`` fraction of the cycle, then ``end``."""
    return start + (end - start) * _ramp(progress, warmup)


@register_lambda_schedule("cosine")
def cosine(progress: float, cycle: int, *, start: float, end: float, warmup: float) -> float:
    """Half-cosine rise ``start``→``end`` over the first ``warmup`` fraction, then ``end``."""
    return start + (end - start) * 0.5 * (1.0 - math.cos(math.pi * _ramp(progress, warmup)))


@register_lambda_schedule("step")
def step(progress: float, cycle: int, *, start: float, end: float, warmup: float) -> float:
    """``start`` while less than ``warmup`` of the cycle is done, then ``end``."""
    return start if progress < warmup - 1e-12 else end


@dataclass
class LambdaSchedule:
    """Θ(r, e): a registered shape with its parameters, applied per epoch or per iteration."""

    name: str = "linear"
    start: float = 0.0
    end: float = 1.0
    warmup: float = 0.3
    per_iter: bool = False
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in LAMBDA_SCHEDULES:
            raise RecipeError(
                f"unknown λ schedule {self.name!r}; registered: {sorted(LAMBDA_SCHEDULES)} "
                "(add one with repan_zoo.annealing.register_lambda_schedule)"
            )
        check_lambda(self.start)
        check_lambda(self.end)
        if not 0.0 <= self.warmup <= 1.0:
            raise RecipeError(f"λ warmup={self.warmup} must be a fraction of the cycle in [0, 1]")

    def at(self, cycle: int, progress: float) -> float:
        """Θ at ``progress`` ∈ (0, 1] of cycle ``cycle`` (1-based), checked to be in [0, 1]."""
        fn = LAMBDA_SCHEDULES[self.name]
        value = fn(float(progress), int(cycle), start=self.start, end=self.end, warmup=self.warmup, **self.params)
        return check_lambda(value)

    def value(self, cycle: int, epoch: int, epochs: int, step: Optional[int] = None,
              steps_per_epoch: Optional[int] = None) -> float:
        """λ for epoch ``epoch`` (1-based, of ``epochs``) of cycle ``cycle``; per iteration also
        step ``step`` (1-based) of ``steps_per_epoch``."""
        if not 1 <= epoch <= epochs:
            raise ValueError(f"epoch {epoch} outside 1..{epochs}")
        if self.per_iter and step is not None and steps_per_epoch:
            progress = ((epoch - 1) * steps_per_epoch + step) / (epochs * steps_per_epoch)
        else:
            progress = epoch / epochs
        return self.at(cycle, progress)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "start": self.start, "end": self.end, "warmup": self.warmup,
                "per_iter": self.per_iter, **self.params}


def check_min_lr(min_lr: float, peaks: Sequence[Tuple[str, Optional[float]]]) -> None:
    """Refuse a ``--min-lr`` above a peak learning rate (``peaks``: ``(option, value)`` pairs).

    Raises:
        RecipeError: the cosine schedule would rise; names both options and the largest allowed value.
    """
    for name, peak in peaks:
        if peak is not None and min_lr > peak:
            raise RecipeError(f"--min-lr {min_lr:g} is above {name} {peak:g}: the cosine schedule would rise; "
                              f"use --min-lr ≤ {peak:g}")


def cosine_lr(step: int, total: int, peak: float, *, warmup: int = 0, floor: float = 0.0) -> float:
    """Learning rate of step ``step`` (0-based) of ``total`` within one cycle: linear warmup
    from ``peak/warmup`` to ``peak`` over ``warmup`` steps, then cosine from ``peak`` to ``floor``
    (reached after the last step). Restarted every cycle (warm restarts, Sec. 5 / Fig. 3)."""
    if total <= 0:
        raise ValueError("a cycle needs at least one step")
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

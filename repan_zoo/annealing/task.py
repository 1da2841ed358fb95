"""What a task supplies to the one Algorithm-1 driver (:class:`~repan_zoo.annealing.cycles.CycleRun`):
the hooks of :class:`CycleTask`, and the cycle plan (:class:`CyclePlan`).

A task is a subclass of ``CycleRun`` that implements these hooks — classification
(:class:`repan_zoo.annealing.RepAnTrainer`) and detection (:mod:`repan_zoo.detection.finetune`)
do. The hooks that raise ``NotImplementedError`` are required; the others have defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..expansion import Expansion
from ..runtime.checkpointing import RunCheckpoint

__all__ = ["CyclePlan", "CycleTask", "ExpansionGroup"]

#: an Expansion and the blocks it applies to (``predicate(name, block)``; None: all blocks)
ExpansionGroup = Tuple[Expansion, Optional[Callable[[str, nn.Module], bool]]]


@dataclass(frozen=True)
class CyclePlan:
    """One cycle r (1-based) of a run: whether it starts with Expand/Restore/Calibrate, and how
    many epochs it trains."""

    index: int
    expand: bool
    epochs: int


class CycleTask:
    """The hooks a task implements (the model, one step's loss, evaluation, calibration inputs, a probe)."""

    def cycle_plan(self) -> List[CyclePlan]:
        raise NotImplementedError

    def initialise(self) -> nn.Module:
        """Line 1: build ``self.model`` for a fresh run (and return it)."""
        raise NotImplementedError

    def model_from_checkpoint(self, ck: RunCheckpoint) -> nn.Module:
        """The model of a run checkpoint, loaded and placed (resume)."""
        raise NotImplementedError

    def expansion_groups(self) -> List[ExpansionGroup]:
        raise NotImplementedError

    def probe(self) -> Any:
        """Example input of the verified conversions (None: the package's probe)."""
        return None

    def eval_outputs(self) -> Tuple[torch.Tensor, ...]:
        """Eval-mode outputs on held-out inputs, fp32, compared before and after a cycle start."""
        raise NotImplementedError

    def calibration(self, cycle: int) -> Tuple[nn.Module, List[torch.Tensor]]:
        """Line 6's inputs: the module whose BNs are calibrated and its input batches (none: skip)."""
        raise NotImplementedError

    def before_rep(self, cycle: int) -> None:
        """Called before a Rep that ends cycle ``cycle`` (e.g. precise BN statistics)."""

    def place(self) -> None:
        """Put ``self.model`` on the run's device (and memory format) after a conversion."""
        self.model.to(self.device)

    def make_optimizer(self, cycle: int) -> torch.optim.Optimizer:
        raise NotImplementedError

    def peak_lr(self, cycle: int) -> float:
        raise NotImplementedError

    def warmup_steps(self, steps_per_epoch: int, total: int) -> int:
        return 0

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def epoch_batches(self, cp: CyclePlan, epoch: int, global_epoch: int) -> Iterable[Any]:
        raise NotImplementedError

    def train_mode(self, net: nn.Module) -> None:
        net.train()

    def step_loss(self, net: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        """One training step's loss and the figures summed over the epoch."""
        raise NotImplementedError

    def end_epoch(self, cp: CyclePlan, epoch: int, global_epoch: int, steps: int, sums: Dict[str, float],
                  lr: Optional[float], started: float) -> Dict[str, Any]:
        """Evaluate, log and return the epoch's history row (``started``: the epoch's
        ``time.perf_counter()`` at its start)."""
        raise NotImplementedError

    def after_epoch_saved(self) -> None:
        """Reports written after each epoch's checkpoint."""

    def checkpoint_identity(self) -> Tuple[str, Dict[str, Any]]:
        """``(architecture, metadata)`` written with every checkpoint's model."""
        raise NotImplementedError

    def checkpoint_extra(self) -> Dict[str, Any]:
        """Task state saved beside the driver's in every checkpoint."""
        return {}

    def prepare(self) -> None:
        """Called once the model exists (after line 1 and 2, or a resume), before the cycles."""

    def finish(self) -> Any:
        raise NotImplementedError

    def log(self, msg: str) -> None:
        pass

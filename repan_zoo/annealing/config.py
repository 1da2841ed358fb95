"""The training recipe (everything that changes the trained weights) and the plan of cycles.

Methods (Sec. 5.1 compares all three):

``baseline``  plain training of the Rep network as built (its own branches, λ = 1) for
              ``cycles × epochs`` epochs under one cosine schedule, then Rep.
``kd``        the same with knowledge distillation from ``teacher`` (Sec. 3.4).
``repan``     Algorithm 1: ``cycles`` cycles of ``epochs`` epochs. With ``first_cycle="expand"``
              (the paper: Alg. 1 line 2 fuses the network *before* the first cycle, so every
              cycle starts with Expand → Restore → Calibrate) or ``"plain"`` (cycle 1 trains the
              Rep network as built, like ordinary training, and cycles 2..R anneal — the setup
              measured in ``findings-cpu-scale.md``). A teacher makes it RepAn with KD.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import RecipeError
from ..expansion import Expansion, ExpansionError
from .cycles import CyclePlan
from .schedules import LambdaSchedule

__all__ = ["TrainConfig", "CyclePlan", "METHODS", "FIRST_CYCLE_MODES"]

METHODS = ("baseline", "kd", "repan")
FIRST_CYCLE_MODES = ("expand", "plain")


@dataclass
class TrainConfig:
    """A complete training recipe; :meth:`as_dict` is what ``final.json`` records."""

    method: str = "repan"
    model: str = "repan_repvgg_a1_w025"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Optional[str] = None
    # Algorithm 1
    cycles: int = 5
    epochs: int = 30
    first_cycle: str = "expand"
    expansion: Expansion = field(default_factory=Expansion)
    expand_blocks: Optional[str] = None
    calib_batches: int = 5
    calib_batch_size: Optional[int] = None
    precise_bn: int = 0
    lam_schedule: str = "linear"
    lam_start: float = 0.0
    lam_end: float = 1.0
    lam_warmup: float = 0.3
    lam_per_iter: bool = True
    # knowledge distillation
    teacher: Optional[str] = None
    teacher_checkpoint: Optional[str] = None
    teacher_kwargs: Dict[str, Any] = field(default_factory=dict)
    teacher_pretrained: bool = False
    kd_alpha: float = 0.9
    kd_T: float = 10.0
    # data
    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    val_size: int = 5000
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    split_seed: int = 0
    img_size: int = 224
    flip: bool = True
    augment: Optional[str] = None
    # optimisation
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.2
    later_lr: Optional[float] = None
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    wd: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    label_smoothing: float = 0.0
    clip_grad: Optional[float] = None
    amp: bool = False
    channels_last: bool = False
    test_each_epoch: bool = True
    sync_bn: bool = False
    seed: int = 0
    max_steps_per_epoch: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.expansion, Expansion):
            self.expansion = _expansion(self.expansion)
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise RecipeError(msg)

        if self.method not in METHODS:
            bad(f"--method {self.method!r}: choose one of {METHODS}")
        if self.first_cycle not in FIRST_CYCLE_MODES:
            bad(f"--first-cycle {self.first_cycle!r}: choose one of {FIRST_CYCLE_MODES}")
        if self.cycles < 1 or self.epochs < 1:
            bad(f"--cycles {self.cycles} / --epochs {self.epochs}: both must be ≥ 1")
        if self.method == "repan" and self.first_cycle == "plain" and self.cycles < 2:
            bad("--first-cycle plain with --cycles 1 never anneals; use --cycles ≥ 2 or --method baseline")
        if self.method == "kd" and not self.teacher:
            bad("--method kd needs --teacher MODEL (and --teacher-checkpoint FILE)")
        if self.method == "baseline" and self.teacher:
            bad("--method baseline trains without a teacher; use --method kd for distillation")
        if self.teacher and not (0.0 <= self.kd_alpha <= 1.0):
            bad(f"--kd-alpha {self.kd_alpha} must be in [0, 1]")
        if self.kd_T <= 0:
            bad(f"--kd-T {self.kd_T} must be > 0")
        if self.precise_bn < 0:
            bad("--precise-bn must be ≥ 0 (batches; 0 = off, the paper)")
        if self.calib_batches < 0:
            bad("--calib-batches must be ≥ 0 (0 = inherit the restored BN statistics, no calibration)")
        if self.batch_size < 2:
            bad("--batch-size must be ≥ 2 (BatchNorm needs more than one image)")
        if self.lr <= 0 or (self.later_lr is not None and self.later_lr <= 0):
            bad("--lr must be > 0")
        if self.momentum < 0 or (self.nesterov and self.momentum == 0):
            bad("--momentum must be ≥ 0, and > 0 with Nesterov (use --no-nesterov)")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            bad("--max-steps-per-epoch must be ≥ 1")
        self.lambda_schedule()  # validates name and values
        policy = self.augment_policy()
        if self.augment is not None and policy.flip and not self.flip:
            bad(f"--augment {self.augment} flips images but --no-flip was given; choose a policy without flips")

    # -- derived --------------------------------------------------------------------------
    def lambda_schedule(self) -> LambdaSchedule:
        return LambdaSchedule(self.lam_schedule, start=self.lam_start, end=self.lam_end,
                              warmup=self.lam_warmup, per_iter=self.lam_per_iter)

    def augment_policy(self):
        """The training augmentation (:mod:`repan_zoo.augment`): ``augment`` by name, or, when it
        is None (recipes written before the option), ``flip`` / ``none`` from ``flip``."""
        from ..augment import get_augment_policy

        return get_augment_policy(self.augment, flip=self.flip)

    def plan(self) -> List[CyclePlan]:
        """The cycles this recipe runs, in order."""
        if self.method in ("baseline", "kd"):
            return [CyclePlan(1, False, self.cycles * self.epochs)]
        if self.first_cycle == "plain":
            return [CyclePlan(1, False, self.epochs)] + [CyclePlan(r, True, self.epochs) for r in range(2, self.cycles + 1)]
        return [CyclePlan(r, True, self.epochs) for r in range(1, self.cycles + 1)]

    def peak_lr(self, cycle: int) -> float:
        return self.lr if cycle == 1 or self.later_lr is None else self.later_lr

    def uses_teacher(self) -> bool:
        return bool(self.teacher) and self.method in ("kd", "repan")

    def as_dict(self) -> Dict[str, Any]:
        """The recipe as flat JSON values (what ``recipe.json`` and ``final.json`` record): the
        fields, with :attr:`expansion`'s fields in place of it."""
        d: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "expansion":
                d.update(value.as_dict())
            else:
                d[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
        return d

    @classmethod
    def recipe_keys(cls) -> List[str]:
        """The keys of :meth:`as_dict` (the options a recipe consists of), in order."""
        return list(cls().as_dict())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`as_dict` (a partial dict takes the defaults; ``expansion`` may also be
        given as one nested dict). Raises :class:`RecipeError` for unknown keys or invalid values."""
        d = dict(d)
        exp_keys = [f.name for f in dataclasses.fields(Expansion)]
        flat = {k: d.pop(k) for k in exp_keys if k in d}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise RecipeError(f"unknown recipe keys {unknown}")
        if flat:
            d["expansion"] = _expansion(d.get("expansion"), **flat)
        return cls(**d)


def _expansion(value: Any, **changes: Any) -> Expansion:
    """``Expansion.of`` with its errors as the command line's (``--restore``, ``--k`` …)."""
    try:
        return Expansion.of(value, **changes)
    except (ExpansionError, TypeError) as exc:
        if isinstance(exc, TypeError):
            raise RecipeError(str(exc)) from None
        head, _, rest = str(exc).partition(" ")
        raise RecipeError(f"--{head.replace('_', '-')} {rest}") from None

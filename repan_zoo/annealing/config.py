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

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from ..cli_types import SEED_MAX, check_fields, json_dict, number, option
from ..errors import RecipeError
from ..expansion import Expansion, ExpansionError, flat_fields
from .task import CyclePlan
from .schedules import LambdaSchedule, check_min_lr

__all__ = ["TrainConfig", "CyclePlan", "METHODS", "FIRST_CYCLE_MODES", "SPLIT_KEYS"]

METHODS = ("baseline", "kd", "repan")
FIRST_CYCLE_MODES = ("expand", "plain")


#: model kwargs the trainer sets itself (``build_model``) or that would build another kind of model
RESERVED_MODEL_KWARGS = frozenset({"num_classes", "in_chans", "pretrained", "features_only", "checkpoint_path",
                                   "pretrained_cfg", "pretrained_cfg_overlay", "deploy"})

#: the options that decide which images a run trains, validates and tests on (:func:`~repan_zoo.data.load_splits`):
#: fixed when a run starts (a resumed run with another split would train on images it validated on)
SPLIT_KEYS = ("dataset", "val_size", "train_subset", "test_subset", "split_seed", "img_size")


@dataclass
class TrainConfig:
    """A complete training recipe; :meth:`as_dict` is what ``final.json`` records."""

    method: str = field(default="repan", metadata=option(
        "baseline: plain training of cycles×epochs; kd: the same with a teacher; repan: Algorithm 1",
        choices=METHODS, group="method and model"))
    model: str = field(default="repan_repvgg_a1_w025", metadata=option(
        "timm model name (see timm.list_models('repan_*'))"))
    model_kwargs: Dict[str, Any] = field(default_factory=dict, metadata=option(
        "JSON kwargs for timm.create_model, e.g. '{\"width_mult\": 0.25}'", type=json_dict))
    init_checkpoint: Optional[str] = field(default=None, metadata=option(
        "Alg. 1 line 1: start from these weights (train or deploy safetensors)"))
    # Algorithm 1
    cycles: int = field(default=5, metadata=option("R: number of cycles", type=number(int, 1),
                                                   group="RepAn (Algorithm 1)"))
    epochs: int = field(default=30, metadata=option("E: epochs per cycle", type=number(int, 1)))
    first_cycle: str = field(default="expand", metadata=option(
        "expand: the paper (Alg. 1 line 2 fuses before cycle 1, every cycle expands); "
        "plain: cycle 1 trains the Rep network as built, cycles 2..R anneal (findings setup)",
        choices=FIRST_CYCLE_MODES))
    expansion: Expansion = field(default_factory=Expansion, metadata=option(
        "its fields are options: --branches, --k, --restore, --residual, --branch-gamma"))
    expand_blocks: Optional[str] = field(default=None, metadata=option(
        "regex on block names: only these get new branches"))
    calib_batches: int = field(default=5, metadata=option(
        "BN calibration batches after each Expand (0 = keep the inherited statistics)", type=number(int, 0)))
    calib_batch_size: Optional[int] = field(default=None, metadata=option(
        "images per calibration batch (default --batch-size)", type=number(int, 2)))
    precise_bn: int = field(default=0, metadata=option(
        "re-estimate BN statistics on this many training batches before each cycle-ending Rep (0 = off, as in "
        "the paper)", type=number(int, 0)))
    lam_schedule: str = field(default="linear", metadata=option(
        "Θ: constant | linear | cosine | step | registered name"))
    lam_start: float = field(default=0.0, metadata=option("λ at the start of a cycle", type=number(float, 0.0, 1.0)))
    lam_end: float = field(default=1.0, metadata=option(
        "λ after the warmup (constant: always)", type=number(float, 0.0, 1.0)))
    lam_warmup: float = field(default=0.3, metadata=option(
        "fraction of a cycle over which λ rises", type=number(float, 0.0, 1.0)))
    lam_per_iter: bool = field(default=True, metadata=option(
        "update λ every iteration (else once per epoch, before it trains)", negatable=True))
    # knowledge distillation
    teacher: Optional[str] = field(default=None, metadata=option(
        "timm model name of the teacher", group="knowledge distillation"))
    teacher_checkpoint: Optional[str] = field(default=None, metadata=option(
        "local safetensors weights of the teacher"))
    teacher_kwargs: Dict[str, Any] = field(default_factory=dict, metadata=option(
        "JSON kwargs for the teacher's create_model", type=json_dict))
    teacher_pretrained: bool = field(default=False, metadata=option(
        "use timm's pretrained weights for the teacher"))
    kd_alpha: float = field(default=0.9, metadata=option("α: share of the KD term", type=number(float, 0.0, 1.0)))
    kd_T: float = field(default=10.0, metadata=option(
        "T: softmax temperature", type=number(float, 0.0, lo_open=True)))
    # data
    dataset: str = field(default="fashion_mnist", metadata=option(
        "fashion_mnist | cifar10 | cifar100 | imagefolder | a name registered with "
        "repan_zoo.datasets.register_dataset (e.g. by an --import plugin)", group="data"))
    data_dir: Optional[str] = field(default=None, metadata=option(
        "dataset folder (default for fashion_mnist: Debian's location)"))
    val_size: int = field(default=5000, metadata=option(
        "validation images carved from the training set", type=number(int, 1)))
    train_subset: Optional[int] = field(default=None, metadata=option(
        "use only this many training images", type=number(int, 2, none=True)))
    test_subset: Optional[int] = field(default=None, metadata=option(
        "evaluate on only this many test images", type=number(int, 1, none=True)))
    split_seed: int = field(default=0, metadata=option(
        "seed of the train/val permutation", type=number(int, 0, SEED_MAX)))
    img_size: int = field(default=224, metadata=option(
        "imagefolder: image side after resize+crop", type=number(int, 1)))
    flip: bool = field(default=True, metadata=option("random horizontal flip", negatable=True))
    augment: Optional[str] = field(default=None, metadata=option(
        "training augmentation policy: none | flip | crop_flip | crop_flip_erase | a registered name "
        "(repan_zoo.augment; default: flip, or none with --no-flip)"))
    # optimisation
    batch_size: int = field(default=128, metadata=option(
        "global batch (split over processes)", type=number(int, 2), group="optimisation"))
    eval_batch_size: int = field(default=512, metadata=option(type=number(int, 1)))
    lr: float = field(default=0.2, metadata=option(
        "peak learning rate (cosine to --min-lr each cycle)", type=number(float, 0.0, lo_open=True)))
    later_lr: Optional[float] = field(default=None, metadata=option(
        "peak learning rate of cycles 2..R (default --lr)", type=number(float, 0.0, lo_open=True)))
    min_lr: float = field(default=0.0, metadata=option(type=number(float, 0.0)))
    warmup_epochs: float = field(default=0.0, metadata=option("linear LR warmup per cycle", type=number(float, 0.0)))
    wd: float = field(default=1e-4, metadata=option("weight decay (all parameters)", type=number(float, 0.0)))
    momentum: float = field(default=0.9, metadata=option(type=number(float, 0.0, 1.0, hi_open=True)))
    nesterov: bool = field(default=True, metadata=option(negatable=True))
    label_smoothing: float = field(default=0.0, metadata=option(type=number(float, 0.0, 1.0, hi_open=True)))
    clip_grad: Optional[float] = field(default=None, metadata=option(
        "clip the gradient norm to this value", type=number(float, 0.0, lo_open=True)))
    amp: bool = field(default=False, metadata=option(
        "mixed precision (float16 + grad scaler on CUDA, bfloat16 on CPU)", negatable=True))
    channels_last: bool = field(default=False, metadata=option(
        "NHWC memory format for the model and its inputs (1.3-2x faster training on CPU)", negatable=True))
    test_each_epoch: bool = field(default=True, metadata=option(
        "evaluate the test set after every epoch (off: only the final network; validation always)", negatable=True))
    sync_bn: bool = field(default=False, metadata=option(
        "BatchNorm statistics over the global batch of all processes", negatable=True))
    seed: int = field(default=0, metadata=option(type=number(int, 0, SEED_MAX)))
    max_steps_per_epoch: Optional[int] = field(default=None, metadata=option(
        "cap steps per epoch (tests, smoke runs)", type=number(int, 1, none=True)))

    def __post_init__(self) -> None:
        if not isinstance(self.expansion, Expansion):
            self.expansion = _expansion(self.expansion)
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise RecipeError(msg)

        check_fields(self, RecipeError)  # every option's type and range, as on the command line (cli_types.number)
        check_fields(self.expansion, RecipeError)
        if self.method not in METHODS:
            bad(f"--method {self.method!r}: choose one of {METHODS}")
        if self.first_cycle not in FIRST_CYCLE_MODES:
            bad(f"--first-cycle {self.first_cycle!r}: choose one of {FIRST_CYCLE_MODES}")
        if self.method == "repan" and self.first_cycle == "plain" and self.cycles < 2:
            bad("--first-cycle plain with --cycles 1 never anneals; use --cycles ≥ 2 or --method baseline")
        if self.method == "kd" and not self.teacher:
            bad("--method kd needs --teacher MODEL (and --teacher-checkpoint FILE)")
        if self.uses_teacher() and not (self.teacher_checkpoint or self.teacher_pretrained):
            from ..cli_types import check_model_name

            try:  # an unknown name is the first thing to say (not that its weights are missing)
                check_model_name(self.teacher, "--teacher")
            except ValueError as exc:
                bad(str(exc))
            bad(f"--teacher {self.teacher} has no weights and would teach noise: pass --teacher-checkpoint "
                "FILE.safetensors (e.g. the deploy checkpoint of a baseline run on the same dataset) or "
                "--teacher-pretrained")
        if self.method == "baseline" and self.teacher:
            bad("--method baseline trains without a teacher; use --method kd for distillation")
        unused = self.unused_teacher_options()
        if unused and self.method == "baseline":
            bad(f"--method baseline trains without a teacher, so {', '.join(unused)} would do nothing: use "
                "--method kd (or repan) with --teacher MODEL to distil, or drop them")
        if unused:
            bad(f"{', '.join(unused)} without --teacher would do nothing (no distillation): name the teacher's "
                f"architecture with --teacher MODEL{self._teacher_hint()}, or drop them")
        reserved = sorted(set(self.model_kwargs) & RESERVED_MODEL_KWARGS)
        if reserved:
            bad(f"--model-kwargs {', '.join(reserved)}: the trainer sets these itself (classes and input channels "
                "from the dataset, the train-form classifier it trains, starting weights from --init-checkpoint); "
                "drop them")
        if self.nesterov and self.momentum == 0:
            bad("--momentum must be > 0 with Nesterov (use --no-nesterov)")
        check_min_lr(self.min_lr, [("--lr", self.lr), ("--later-lr", self.later_lr)])
        shortest = min(cp.epochs for cp in self.plan())  # the LR schedule restarts with each planned cycle
        if self.warmup_epochs >= shortest:
            bad(f"--warmup-epochs {self.warmup_epochs:g} leaves no epoch of a {shortest}-epoch cycle to anneal (the "
                f"cosine starts after the warmup, and Rep would fuse a network trained at the peak LR); use "
                f"--warmup-epochs < {shortest}")
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

    def unused_teacher_options(self) -> List[str]:
        """The teacher / KD options given (not at their defaults) that no teacher would use."""
        if self.uses_teacher():
            return []
        defaults = {f.name: f.default for f in fields(self)}
        given = [("--teacher-checkpoint", bool(self.teacher_checkpoint)), ("--teacher-pretrained", self.teacher_pretrained),
                 ("--teacher-kwargs", bool(self.teacher_kwargs)), ("--kd-alpha", self.kd_alpha != defaults["kd_alpha"]),
                 ("--kd-T", self.kd_T != defaults["kd_T"])]
        return [flag for flag, on in given if on]

    def _teacher_hint(self) -> str:
        """`` (the file's metadata names ARCH: --teacher ARCH)`` for a readable --teacher-checkpoint."""
        from ..checkpoint import read_metadata
        from ..errors import CheckpointError

        if not self.teacher_checkpoint:
            return ""
        try:
            arch = read_metadata(self.teacher_checkpoint).get("architecture")
        except CheckpointError:
            return ""
        return f" (the file's metadata names {arch}: --teacher {arch})" if arch else ""

    def as_dict(self) -> Dict[str, Any]:
        """The recipe as flat JSON values (what ``recipe.json`` and ``final.json`` record): the
        fields, with :attr:`expansion`'s fields in place of it."""
        return flat_fields(self)

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

"""The one driver of Algorithm 1 (Training with RepAn), for every task.

::

    1  Initialise N or load pretrained weights          task.initialise
    2  N_deploy ← Rep(N)                                CycleRun.rep            (when the first cycle expands)
    3  for r = 1..R:                                    CycleRun.run            (plan: CyclePlan per cycle)
    4      N ← Expand(N_deploy)                         CycleRun.expand_restore (one repan_zoo.unfold call
    5      w_train ← Restore(w_deploy)                                          per Expansion group)
    6      w ← Calibrate(w_train)                       CycleRun.calibrate      (checked to keep the function)
    7      for e = 1..E:
    8          λ ← Θ(r, e)                              CycleRun.train_cycle    (before the epoch's first step,
    9          Train(N, D, N_T)                         engine.train_steps       then per step)
    11     N_deploy ← Rep(N_train)                      CycleRun.rep
    output: the deploy network                          task.finish             (the last line 11 too)

:class:`CycleRun` holds everything the tasks share: the cycle plan, Rep → Expand + Restore →
Calibrate with its function-preservation check, the per-step learning rate (cosine per cycle)
and λ, the non-finite stop (:class:`~repan_zoo.errors.TrainingDivergedError`, the last good
checkpoint untouched), the per-epoch checkpoint and resume. A task — classification
(:class:`repan_zoo.annealing.RepAnTrainer`) or detection (:mod:`repan_zoo.detection.finetune`)
— subclasses it and supplies the model, one training step's loss, the evaluation, calibration
inputs and a probe (the hooks of :class:`~repan_zoo.annealing.task.CycleTask`).

The official implementation's faults are not repeated: calibration runs (and is checked to
keep the function), fusion includes λ (Eq. 5), λ is set before an epoch trains, one
``torch.Generator`` seeded from the run seed draws every expansion (the global RNG is never
re-seeded), and every Rep / Expand+Restore / Calibrate is verified and recorded in
``cycle_log``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..blocks import rep_blocks
from ..checkpoint import model_form
from ..convert import calibrate_bn, default_tolerance, reparameterize, set_lambda, unfold
from ..errors import RecipeError, ReparameterizationError, TrainingDivergedError
from ..runtime.checkpointing import Checkpointer, RunCheckpoint, restore_rng_state, rng_state
from ..runtime.distributed import DistContext, convert_sync_bn, unwrap, wrap_ddp
from ..verify import exact_fp32, non_finite_state, relative_error
from .engine import NonFiniteLoss, train_steps
from .schedules import LambdaSchedule, cosine_lr
from .task import CyclePlan, CycleTask, ExpansionGroup

__all__ = ["CyclePlan", "CycleRun", "CycleTask", "ExpansionGroup", "plan_offsets", "resume_position", "DIVERGED_OUTPUT"]

#: largest |output| of a network that has not blown up: a classifier's logits stay within tens
#: (a run at a too high --lr was seen at 8e27 with a finite loss). Beyond it, a conversion that
#: fails to keep the function is reported as divergence (:meth:`CycleRun.calibrate`).
DIVERGED_OUTPUT = 1e4


def plan_offsets(plan: Sequence[CyclePlan]) -> List[int]:
    """Epochs trained before each cycle of ``plan``."""
    offsets, total = [], 0
    for cp in plan:
        offsets.append(total)
        total += cp.epochs
    return offsets


def resume_position(plan: Sequence[CyclePlan], progress: Dict[str, Any]) -> Tuple[int, int]:
    """Where a resumed run continues in ``plan``: ``(cycle index, epochs of it already trained)``,
    from a run checkpoint's ``progress`` (``cycle_index``, ``cycle``, ``epoch``, ``epochs``,
    ``expand``; older checkpoints lack the last ones); a finished cycle continues at the start of
    the next (index ``len(plan)``: nothing left to train). Raises
    :class:`~repan_zoo.errors.RecipeError` when the saved cycle is not at that place of the plan,
    has another length or another Expand: a resume with other plan options (``repan-train``:
    ``--method``, ``--cycles``, ``--epochs``, ``--first-cycle``; ``repan-detect``: ``--cycles``,
    ``--epochs``, ``--unfold``) would otherwise index past the plan, restart a cycle's schedule
    mid-way or train a cycle without its λ."""
    cycle, epoch = int(progress["cycle"]), int(progress["epoch"])
    ci = int(progress.get("cycle_index", cycle - 1))  # detection checkpoints before the shared driver
    saved, expand = progress.get("epochs"), progress.get("expand")
    here = plan[ci] if 0 <= ci < len(plan) else None
    if (here is None or here.index != cycle or (saved is not None and here.epochs != int(saved))
            or (expand is not None and here.expand != bool(expand))):
        shape = " + ".join(f"{cp.epochs}{'' if cp.expand else ' (no Expand)'}" for cp in plan)
        raise RecipeError(
            f"the run stopped after epoch {epoch}" + (f"/{saved}" if saved is not None else "")
            + f" of cycle {cycle}" + ("" if expand is None else f" ({'with' if expand else 'without'} Expand)")
            + f", but the recipe now plans {len(plan)} cycle(s) of {shape} epochs, which has no such cycle: the "
            "options that shape the plan (repan-train: --method, --cycles, --epochs and --first-cycle; "
            "repan-detect: --cycles, --epochs and --unfold) must stay as the run was started. Resume without "
            "changing them, or choose a new --out to train the new plan")
    return (ci + 1, 0) if epoch >= here.epochs else (ci, epoch)


class CycleRun(CycleTask):
    """The Algorithm-1 driver; a task subclasses it (see the module docstring).

    The subclass sets, before :meth:`run`: ``ctx`` (:class:`DistContext`), ``device``,
    ``generator`` (the one generator behind every expansion), ``lam_schedule``
    (:class:`LambdaSchedule`), ``checkpointer`` (a :class:`Checkpointer` or None: nothing is
    written), ``sync_bn``, ``amp``, ``clip_grad``, ``min_lr``, ``progress``, and implements the
    hooks of :class:`~repan_zoo.annealing.task.CycleTask`. :meth:`run` builds or resumes ``model``
    and returns :meth:`finish`'s result.
    """

    ctx: DistContext
    device: torch.device
    generator: torch.Generator
    lam_schedule: LambdaSchedule
    checkpointer: Optional[Checkpointer]
    sync_bn: bool = False
    amp: bool = False
    clip_grad: Optional[float] = None
    min_lr: float = 0.0
    progress: bool = False
    #: Calibrate may move the eval output by at most this many times the conversions' tolerance
    #: (the chain Rep → Expand+Restore → Calibrate, each exact to fp32 rounding, measured 3e-6 to
    #: 7e-6 on repan_repvgg_a1_w025; a real fault moves the output by far more)
    calibrate_tolerance_factor: float = 10.0

    def _init_cycles(self) -> None:
        self.model: Optional[nn.Module] = None
        self.history: List[Dict[str, Any]] = []
        self.cycle_log: List[Dict[str, Any]] = []
        self.last_checkpoint: Optional[Path] = None
        self.global_step = 0

    # ------------------------------------------------------------------ checks
    @staticmethod
    def output_error(ref: Sequence[torch.Tensor], new: Sequence[torch.Tensor]) -> float:
        """Largest relative error (``max|new-ref| / max|ref|``) over paired outputs."""
        return max(relative_error(a, b) for a, b in zip(ref, new))

    def current_lambda(self) -> Optional[float]:
        for _, block in rep_blocks(self.model):
            if not block.deploy and len(block.extras):
                return float(block.lam)
        return None

    # ------------------------------------------------------------------ Algorithm 1 steps
    def rep(self, cycle: int, when: str) -> Dict[str, Any]:
        """Lines 2 and 11: fuse every Rep block in place, verified on the probe."""
        assert self.model is not None
        t = time.perf_counter()
        if not rep_blocks(self.model) or model_form(self.model) == "deploy":
            return {}
        self.before_rep(cycle)
        with exact_fp32():
            reparameterize(self.model, inplace=True, example_input=self.probe())
        self.place()
        record = {"cycle": cycle, "step": "rep", "when": when, "seconds": time.perf_counter() - t,
                  "exactness": dict(getattr(self.model, "repan_exactness", {}))}
        self.cycle_log.append(record)
        return record

    def expand_restore(self, cycle: int) -> Dict[str, Any]:
        """Lines 4–5: attach the new λ-gated branches (Eq. 3) and restore every fused conv into
        conv + BN (inverse of Eq. 2) at λ = 0, one verified :func:`repan_zoo.unfold` per group."""
        assert self.model is not None
        t = time.perf_counter()
        reports = []
        for expansion, predicate in self.expansion_groups():
            with exact_fp32():
                unfold(self.model, expansion, lam=0.0, generator=self.generator, blocks=predicate, inplace=True,
                       example_input=self.probe())
            reports.append(dict(getattr(self.model, "repan_exactness", {})))
        self.place()
        worst = max(reports, key=lambda r: r.get("model_rel_error") or 0.0) if reports else {}
        record = {"cycle": cycle, "step": "expand_restore", "seconds": time.perf_counter() - t, "exactness": worst,
                  "branches": {n: b.branch_kinds for n, b in rep_blocks(self.model)}}
        self.cycle_log.append(record)
        return record

    def calibrate(self, cycle: int, reference: Optional[Sequence[torch.Tensor]]) -> Dict[str, Any]:
        """Line 6: re-estimate the BN statistics from the task's calibration batches keeping the
        function (:func:`repan_zoo.calibrate_bn`); no batches keep the restored statistics. The
        eval output is checked against ``reference`` (the fused network's).

        Raises:
            ReparameterizationError: the output moved by more than ``calibrate_tolerance_factor``
                × the conversions' tolerance.
            TrainingDivergedError: it moved, and the fused network's outputs exceed
                :data:`DIVERGED_OUTPUT` (a run blown up by its recipe, not a conversion fault).
        """
        assert self.model is not None
        t = time.perf_counter()
        module, batches = self.calibration(cycle)
        if batches:
            with exact_fp32():
                calibrate_bn(module, batches)
        err = None
        if reference is not None:
            err = self.output_error(reference, self.eval_outputs())
            tol = self.calibrate_tolerance_factor * default_tolerance(self.model)
            if err > tol:
                peak = max((float(r.detach().abs().max()) for r in reference), default=0.0)
                if not peak <= DIVERGED_OUTPUT:  # NaN included
                    raise TrainingDivergedError(
                        f"training diverged: at the start of cycle {cycle} the network's outputs reach {peak:.3g} "
                        f"(a classifier's logits stay within tens), so Expand + Restore + Calibrate cannot keep its "
                        f"function in fp32 (it moved by {err:.3g}, relative). The run's checkpoints hold this "
                        f"network; start a new run (new --out) with the recipe changed. {self.likely_fixes(cycle, True)}",
                        cycle=cycle, checkpoint=self.last_checkpoint)
                raise ReparameterizationError(
                    f"cycle {cycle}: after Expand+Restore+Calibrate at λ=0 the network's output moved by "
                    f"{err:.3g} (relative) from the fused network's, above {tol:g}; calibration must keep the "
                    "function. Report this with the recipe", model_rel_error=err, tolerance=tol)
        record = {"cycle": cycle, "step": "calibrate", "images": sum(len(b) for b in batches),
                  "seconds": time.perf_counter() - t, "rel_error_vs_fused": err}
        self.cycle_log.append(record)
        return record

    def start_cycle(self, cycle: int) -> None:
        """Lines 11 (of a resumed previous cycle), 4–6: Rep → Expand + Restore → Calibrate."""
        self.rep(cycle=cycle - 1, when=f"before cycle {cycle}")  # a no-op unless resumed here
        reference = self.eval_outputs()
        self.expand_restore(cycle)
        record = self.calibrate(cycle, reference)
        self.log(f"cycle {cycle}: Rep → Expand + Restore → Calibrate ({record['images']} images), output rel. error "
                 f"{record['rel_error_vs_fused']:.2e}")

    def set_lambda(self, value: float) -> None:
        """Line 8: λ of Eq. (3) on every train-form Rep block (checked to be in [0, 1])."""
        set_lambda(self.model, value, only_train_form=True)

    # ------------------------------------------------------------------ the run
    def run(self, *, resume: Union[bool, RunCheckpoint] = False) -> Any:
        """Train the plan, then :meth:`finish`. ``resume=True`` continues a killed run from its last
        checkpoint (a fresh start when there is none); a :class:`RunCheckpoint` already read (the
        one ``repan-train`` checked the recipe against) continues from that one, without reading it again."""
        plan = self.cycle_plan()
        offsets = plan_offsets(plan)
        if isinstance(resume, RunCheckpoint):
            state = self.resume(resume)
        else:
            state = self.resume() if resume else None
        start_ci, start_epoch = 0, 0
        if state is not None:
            start_ci, start_epoch = resume_position(plan, state["progress"])
            if start_epoch == 0:  # the saved cycle was finished: the next one starts afresh
                state = None
        else:
            self.initialise()  # line 1
            self.place()
            if plan[0].expand:
                self.rep(cycle=0, when="before the first cycle (Alg. 1, line 2)")  # line 2
        with _rng_untouched(self.device):  # a teacher's init must not move the resumed / training random stream
            self.prepare()
        for ci in range(start_ci, len(plan)):
            cp = plan[ci]
            first_epoch = start_epoch + 1 if ci == start_ci else 1
            if first_epoch == 1 and cp.expand:
                self.start_cycle(cp.index)  # lines 4-6
            self.train_cycle(cp, ci, first_epoch, offsets[ci],
                             state if (ci == start_ci and first_epoch > 1) else None)
            if ci < len(plan) - 1:  # the last cycle's Rep makes the output: finish()
                self.rep(cycle=cp.index, when=f"end of cycle {cp.index} (Alg. 1, line 11)")  # line 11
            self.after_cycle()
        return self.finish()

    def after_cycle(self) -> None:
        """Called after each cycle's closing Rep (e.g. a learning-curve plot)."""

    def train_cycle(self, cp: CyclePlan, ci: int, first_epoch: int, offset: int,
                    state: Optional[Dict[str, Any]]) -> None:
        """Lines 7–9 for one cycle: a fresh optimiser (restored from ``state`` on resume), then
        ``cp.epochs`` epochs, each checkpointed."""
        assert self.model is not None
        if self.sync_bn:
            convert_sync_bn(self.model, self.device)
        self.place()
        net = wrap_ddp(self.model, self.ctx)
        optimizer = self.make_optimizer(cp.index)
        scaler = torch.amp.GradScaler("cuda") if (self.amp and self.device.type == "cuda") else None
        if state is not None:
            self.load_optimizer(optimizer, scaler, state)
        spe = self.steps_per_epoch()
        total = spe * cp.epochs
        warmup = self.warmup_steps(spe, total)
        peak = self.peak_lr(cp.index)
        for epoch in range(first_epoch, cp.epochs + 1):
            t_epoch = time.perf_counter()
            global_epoch = offset + epoch
            done_before = (epoch - 1) * spe

            def lr_at(step: int, done_before=done_before) -> float:
                return cosine_lr(done_before + step - 1, total, peak, warmup=warmup, floor=self.min_lr)

            lam_at = self.epoch_lambda(cp, epoch, spe)
            self.train_mode(net)
            try:
                steps, sums = train_steps(  # line 9
                    self.epoch_batches(cp, epoch, global_epoch), step_loss=lambda batch: self.step_loss(net, batch),
                    optimizer=optimizer, ctx=self.ctx, lr_at=lr_at, lam_at=lam_at, set_lam=self.set_lambda,
                    scaler=scaler, max_steps=spe, clip_grad=self.clip_grad, params=net.parameters,
                    progress=self.progress, desc=f"cycle {cp.index} epoch {epoch}/{cp.epochs}",
                )
            except NonFiniteLoss as exc:
                raise self.diverged(cp, epoch, exc, lr_at(exc.step)) from None
            bad = non_finite_state(self.model)
            if self.ctx.any_true(bool(bad)):  # the loss stayed finite, the state did not (BN statistics)
                raise self.diverged(cp, epoch, NonFiniteLoss(steps, None), lr_at(steps), state=bad) from None
            self.global_step += steps
            row = self.end_epoch(cp, epoch, global_epoch, steps, sums, lr_at(steps) if steps else None, t_epoch)
            val_loss = row.get("val_loss")  # finite weights can still overflow in evaluation
            if val_loss is not None and self.ctx.any_true(not math.isfinite(val_loss)):
                raise self.diverged(cp, epoch, NonFiniteLoss(steps, None), lr_at(steps), val_loss=val_loss) from None
            self.history.append(row)
            self.save(self.checkpoint_state(cp, ci, epoch, global_epoch, optimizer, scaler), tag=f"ep{global_epoch:04d}")
            self.after_epoch_saved()

    def epoch_lambda(self, cp: CyclePlan, epoch: int, spe: int) -> Optional[Callable[[int], float]]:
        """Line 8 for an epoch of an expanded cycle: set λ = Θ(r, e) before the epoch trains (per
        iteration: the first step's value) and return λ per step (``None``: λ stays for the epoch,
        and in a cycle without Expand it is not touched)."""
        if not cp.expand:
            return None
        schedule = self.lam_schedule
        self.set_lambda(schedule.value(cp.index, epoch, cp.epochs, 1, spe))  # step ignored unless per_iter
        if not schedule.per_iter:
            return None
        return functools.partial(schedule.value, cp.index, epoch, cp.epochs, steps_per_epoch=spe)

    def load_optimizer(self, optimizer, scaler, state: Dict[str, Any]) -> None:
        from ..errors import CheckpointError

        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"--resume: the optimiser state in {self.last_checkpoint} does not fit this model "
                                  f"({exc}); resume with the options of the original run") from exc
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    def likely_fixes(self, cycle: int, expand: bool) -> str:
        """The recipe changes that usually stop a divergence in ``cycle`` (``expand``: an expanded one)."""
        return (f"Likely fixes: a lower --lr (now {self.peak_lr(cycle):g})" + (", --amp off" if self.amp else "")
                + ", --clip-grad 5" + (", or a smaller --branch-gamma / a slower --lam-schedule" if expand else ""))

    def diverged(self, cp: CyclePlan, epoch: int, exc: NonFiniteLoss, lr: float,
                 state: Optional[List[str]] = None, val_loss: Optional[float] = None) -> TrainingDivergedError:
        """The error of a run whose loss (``exc``), or with ``state`` whose weights or BN statistics
        (their names; empty: on another process), or with ``val_loss`` whose evaluation outputs,
        became NaN/inf in ``epoch`` of cycle ``cp``."""
        where = f"cycle {cp.index}, epoch {epoch}/{cp.epochs}, step {exc.step}"
        kept = (f"The last good checkpoint {self.last_checkpoint} (end of the previous epoch) is untouched; "
                "continue from it with --resume after changing the recipe" if self.last_checkpoint is not None
                else "No epoch had completed, so there is no checkpoint")
        lam = self.current_lambda()
        if val_loss is not None:
            what = (f"the validation loss is {val_loss} (the network's outputs overflow in evaluation; its weights "
                    "and training loss stayed finite)")
            done = "This epoch was not saved."
        elif state is None:
            what = f"the loss became {'non-finite on another process' if exc.value is None else exc.value}"
            done = "The weights were not updated by this step."
        else:
            names = ", ".join(state[:3]) + (f" and {len(state) - 3} more" if len(state) > 3 else "")
            what = f"the model holds NaN/inf in {names or 'its state on another process'} (the loss stayed finite)"
            done = "This epoch was not saved."
        msg = (
            f"training diverged: {what} at {where} (lr {lr:.4g}"
            + (f", λ {lam:.3g}" if lam is not None else "") + f", amp {'on' if self.amp else 'off'}). "
            f"{done} {kept}. {self.likely_fixes(cp.index, cp.expand)}"
        )
        return TrainingDivergedError(msg, cycle=cp.index, epoch=epoch, step=exc.step, checkpoint=self.last_checkpoint)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, cp: CyclePlan, ci: int, epoch: int, global_epoch: int, optimizer,
                         scaler) -> Dict[str, Any]:
        rng = rng_state(self.generator)
        per_rank = [rng]
        if self.ctx.distributed:  # every process resumes its own random streams
            import torch.distributed as dist

            per_rank = [None] * self.ctx.world_size
            dist.all_gather_object(per_rank, rng)
        return {
            "progress": {"cycle_index": ci, "cycle": cp.index, "epoch": epoch, "epochs": cp.epochs,
                         "expand": cp.expand, "global_epoch": global_epoch, "global_step": self.global_step},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,
            "rng_per_rank": per_rank,
            "history": self.history,
            "cycle_log": self.cycle_log,
            **self.checkpoint_extra(),
        }

    def save(self, state: Dict[str, Any], tag: str) -> None:
        """Write the epoch's checkpoint on the main process; a failed write stops every process
        (:meth:`DistContext.on_main`), the main one with the write's error."""
        if self.checkpointer is None:
            return

        def write() -> Path:
            architecture, metadata = self.checkpoint_identity()
            return self.checkpointer.save(unwrap(self.model), state, tag=tag, architecture=architecture,
                                          metadata={"progress": state["progress"], **metadata})

        written = self.ctx.on_main(write, f"writing the checkpoint {tag}")
        if written is not None:
            self.last_checkpoint = written
        self.ctx.barrier()

    def resume(self, ck: Optional[RunCheckpoint] = None) -> Optional[Dict[str, Any]]:
        """Load the last completed epoch's checkpoint (``ck``, when already read from this run's
        checkpointer); returns its state (None: nothing to resume)."""
        if self.checkpointer is None:
            raise RecipeError("--resume needs --out (the run directory)")
        if ck is None:
            ck = self.checkpointer.load()
        if ck is None:
            return None
        self.model = self.model_from_checkpoint(ck)
        state = ck.state
        per_rank = state.get("rng_per_rank") or []
        same_world = len(per_rank) == self.ctx.world_size
        restore_rng_state(per_rank[self.ctx.rank] if same_world else state["rng"], self.generator)
        self.history = list(state.get("history", []))
        self.cycle_log = list(state.get("cycle_log", []))
        p = state["progress"]
        self.global_step = int(p.get("global_step", 0))
        self.last_checkpoint = ck.directory
        self.log(f"resuming from {ck.directory} (cycle {p['cycle']}, epoch {p['epoch']}"
                 + (f"/{p['epochs']}" if "epochs" in p else "") + " done)")
        return state


def _rng_untouched(device) -> contextlib.AbstractContextManager:
    """The global torch RNG (and ``device``'s, on CUDA) as it was before the block: what the block
    draws (a model's init) does not shift the run's random stream."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)

"""Algorithm 1 (Training with RepAn), line by line, and the baseline / KD runs on the same loop.

::

    1  Initialise N or load pretrained weights          RepAnTrainer.initialise     (a new network gets its
                                                                                 BN statistics from data)
    2  N_deploy ← Rep(N)                                RepAnTrainer.rep            (first_cycle="expand")
    3  for r = 1..R:
    4      N ← Expand(N_deploy)                         RepAnTrainer.expand_restore (one repan_zoo.unfold
    5      w_train ← Restore(w_deploy)                                               call does both)
    6      w ← Calibrate(w_train)                       RepAnTrainer.calibrate      (0 batches: inherit)
    7      for e = 1..E:
    8          λ ← Θ(r, e)                              RepAnTrainer.set_lambda     (before the epoch's first step)
    9          Train(N, D, N_T)                         engine.train_one_epoch
    11     N_deploy ← Rep(N_train)                      RepAnTrainer.rep
    output: the deploy network                          RepAnTrainer.finish

The official implementation's faults are not repeated: calibration runs (and is checked to
keep the function), fusion includes λ (the core's Eq. 5), λ is set before an epoch trains,
one ``torch.Generator`` seeded from the run seed draws every expansion (the global RNG is
never re-seeded), the device is an argument, and model selection uses a validation split
carved from the training set. Every Rep / Expand+Restore / Calibrate is verified on a held-out
batch and its relative error recorded (``cycle_log``); the last Rep's report is the deploy
checkpoint's exactness certificate.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..blocks import rep_blocks
from ..checkpoint import load_into, model_form, read_checkpoint, save_checkpoint
from ..convert import calibrate_bn, default_tolerance, reparameterize, set_lambda, unfold
from ..augment import mix_seed
from ..data import DataSplits, calibration_batches, eval_loader, train_loader
from ..errors import RecipeError, ReparameterizationError, TrainingDivergedError
from ..fileio import sha256_file
from ..verify import eval_mode, exact_fp32, relative_error
from .checkpointing import Checkpointer, restore_rng_state, rng_state
from .config import CyclePlan, TrainConfig
from .distributed import DistContext, convert_sync_bn, unwrap, wrap_ddp
from .engine import NonFiniteLoss, evaluate, train_one_epoch
from .kd import KDLoss, build_teacher
from .report import plot_learning_curve, write_json, write_metrics
from .schedules import cosine_lr

__all__ = ["RepAnTrainer", "TrainResult", "build_model"]


def build_model(name: str, *, num_classes: int, in_chans: int, model_kwargs: Optional[Dict[str, Any]] = None,
                deploy: bool = False) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=..., **model_kwargs)`` (+ ``deploy=True``)."""
    import timm

    from .. import models  # noqa: F401  (registers the zoo's repan_* models with timm)

    kwargs = dict(model_kwargs or {})
    if deploy:
        kwargs["deploy"] = True
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise RecipeError(
                f"--model {name!r} is not a timm model; the zoo's models: {timm.list_models('repan_*')}"
            ) from exc
        raise


@dataclass
class TrainResult:
    """What a finished run produced (rank 0 also wrote it under ``out``)."""

    model: nn.Module
    val_top1: float
    test_top1: float
    exactness: Dict[str, Any]
    history: List[Dict[str, Any]]
    final: Dict[str, Any]


class RepAnTrainer:
    """Runs one recipe (:class:`TrainConfig`) on one dataset (:class:`DataSplits`).

    ``out`` is where rank 0 writes checkpoints and reports (None: nothing is written and
    ``resume`` is impossible). Use :meth:`run`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: DataSplits,
        *,
        ctx: Optional[DistContext] = None,
        out: Optional[Path] = None,
        progress: bool = False,
        log: Optional[Callable[[str], None]] = None,
        workers: int = 0,
        keep_checkpoints: int = 2,
        plot: bool = True,
    ):
        self.cfg = cfg
        self.data = data
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self._log = log
        self.workers = workers
        self.plot = plot
        if cfg.batch_size % self.ctx.world_size:
            raise RecipeError(f"--batch-size {cfg.batch_size} (global) must be divisible by the number of "
                              f"processes ({self.ctx.world_size})")
        self.local_batch = cfg.batch_size // self.ctx.world_size
        if len(data.train) // self.ctx.world_size < self.local_batch:
            raise RecipeError(f"the training split has {len(data.train)} images, fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size or raise --train-subset")
        #: the one generator behind every expansion (Expand's He-normal draws); never re-seeded.
        self.generator = torch.Generator().manual_seed(mix_seed(cfg.seed, 0xE4A9D))
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.normalize = data.normalizer(self.memory_format).to(self.device)
        self.schedule = cfg.lambda_schedule()
        self.loss_fn = KDLoss(cfg.kd_alpha if cfg.uses_teacher() else 0.0, cfg.kd_T, cfg.label_smoothing)
        self.checkpointer = Checkpointer(self.out, keep=keep_checkpoints) if self.out is not None else None
        self.model: Optional[nn.Module] = None
        self.teacher: Optional[nn.Module] = None
        self.history: List[Dict[str, Any]] = []
        self.cycle_log: List[Dict[str, Any]] = []
        self.last_checkpoint: Optional[Path] = None
        self.global_step = 0
        self._probe: Optional[torch.Tensor] = None
        self._t0 = time.time()
        if self.device.type == "cuda" and workers == 0:  # the dataset on the GPU: batches gathered and augmented there
            for split in (data.train, data.val, data.test):
                split.to(self.device)
        pin = self.device.type == "cuda" and data.train.device.type == "cpu"
        self._pin = pin
        self.val_loader = eval_loader(data.val, cfg.eval_batch_size, rank=self.ctx.rank,
                                      world_size=self.ctx.world_size, workers=workers, pin_memory=pin)
        self.test_loader = eval_loader(data.test, cfg.eval_batch_size, rank=self.ctx.rank,
                                       world_size=self.ctx.world_size, workers=workers, pin_memory=pin)

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self._log is not None and self.ctx.is_main:
            self._log(msg)

    @property
    def probe(self) -> torch.Tensor:
        """The held-out batch every conversion is verified on: the first ≤128 validation images."""
        if self._probe is None:
            n = min(128, len(self.data.val))
            images, _ = self.data.val[list(range(n))]
            self._probe = self.normalize(images.to(self.device))
        return self._probe

    @torch.no_grad()
    def _eval_output(self, model: Optional[nn.Module] = None) -> Tuple[torch.Tensor, ...]:
        """Eval-mode outputs on the held-out batch, fp32: the features *and* the logits of a timm
        model (a zero-initialised classifier would make a logits-only check vacuous)."""
        model = self.model if model is None else model
        assert model is not None
        with eval_mode(model), exact_fp32():
            if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                feats = model.forward_features(self.probe)
                outs = (feats, model.forward_head(feats))
            else:
                outs = (model(self.probe),)
            return tuple(t.detach().float().clone() for t in outs)

    @staticmethod
    def output_error(ref: Sequence[torch.Tensor], new: Sequence[torch.Tensor]) -> float:
        """Largest relative error (``max|new-ref| / max|ref|``) over the outputs of :meth:`_eval_output`."""
        return max(relative_error(a, b) for a, b in zip(ref, new))

    def _current_lambda(self) -> Optional[float]:
        for _, block in rep_blocks(self.model):
            if not block.deploy and len(block.extras):
                return float(block.lam)
        return None

    def _plan_offsets(self, plan: List[CyclePlan]) -> List[int]:
        offsets, total = [], 0
        for cp in plan:
            offsets.append(total)
            total += cp.epochs
        return offsets

    # ------------------------------------------------------------------ Algorithm 1 steps
    def initialise(self) -> nn.Module:
        """Line 1: build the network and load ``init_checkpoint`` (train or deploy form) if given."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                            model_kwargs=cfg.model_kwargs)
        if not rep_blocks(model):
            if cfg.method == "repan":
                raise RecipeError(f"--model {cfg.model} has no Rep blocks, so RepAn has nothing to anneal; "
                                  "choose a repan_* model (timm.list_models('repan_*'))")
        elif cfg.method == "repan" and cfg.expansion.arch and cfg.expansion.k > 0 \
                and not any(b.arch_branches for _, b in rep_blocks(model)):
            raise RecipeError(f"--branches arch: the blocks of {cfg.model} have no branch kinds of their own, so "
                              "Expand would add nothing; name the kinds, e.g. --branches conv_kxk,conv_1x1")
        if cfg.init_checkpoint:
            state, meta = read_checkpoint(cfg.init_checkpoint)
            load_into(model, state, meta, what=f"--init-checkpoint {cfg.init_checkpoint}")
        self.model = self._placed(model)
        if not cfg.init_checkpoint and cfg.plan()[0].expand:
            self._initial_bn_statistics()
        return self.model

    @torch.no_grad()
    def _initial_bn_statistics(self) -> None:
        """Part of line 1 for a freshly initialised network that line 2 fuses right away: estimate
        its BN running statistics from training batches (``torch.optim.swa_utils.update_bn``,
        train-mode forward passes, cumulative averages; γ, β untouched).

        Rep fuses — and Expand/Restore/Calibrate then keep — the *eval* function, which for a new
        network has BN statistics μ=0, σ=1 instead of the data's: its activations grow layer by
        layer (repan_repvgg_a1_w025 on Fashion-MNIST: loss 3e8 at the first step, NaN with AMP).
        With the data's statistics the fused network is the one that trains.
        """
        from torch.optim.swa_utils import update_bn

        cfg = self.cfg
        batches = calibration_batches(self.data.train, cfg.calib_batches or 5, cfg.calib_batch_size or cfg.batch_size,
                                      seed=cfg.seed, cycle=0)
        update_bn([self.normalize(b.to(self.device)) for b in batches], self.model)
        self.cycle_log.append({"cycle": 0, "step": "initial_bn_statistics", "images": sum(len(b) for b in batches)})

    def _placed(self, model: nn.Module) -> nn.Module:
        """``model`` on the run's device and in its memory format (Rep and Expand create new
        convs, so this follows every conversion too)."""
        return model.to(device=self.device, memory_format=self.memory_format)

    def rep(self, cycle: int, when: str) -> Dict[str, Any]:
        """Lines 2 and 11: fuse every Rep block in place, verified on the held-out batch."""
        assert self.model is not None
        t = time.perf_counter()
        if not rep_blocks(self.model) or model_form(self.model) == "deploy":
            return {}
        if self.cfg.precise_bn and cycle >= 1:
            self._precise_bn(cycle)
        with exact_fp32():
            reparameterize(self.model, inplace=True, example_input=self.probe)
        self._placed(self.model)
        record = {"cycle": cycle, "step": "rep", "when": when, "seconds": time.perf_counter() - t,
                  "exactness": dict(getattr(self.model, "repan_exactness", {}))}
        self.cycle_log.append(record)
        return record

    @torch.no_grad()
    def _precise_bn(self, cycle: int) -> None:
        """Optional (``precise_bn`` batches, default off = the paper): before the Rep that ends a
        cycle, re-estimate the BN running statistics from training batches in train mode
        (``torch.optim.swa_utils.update_bn``). Rep fuses the eval function, whose running
        averages lag behind the weights after few or fast steps; this makes the fused network the
        one that was training at the end of the cycle."""
        from torch.optim.swa_utils import update_bn

        cfg = self.cfg
        batches = calibration_batches(self.data.train, cfg.precise_bn, cfg.calib_batch_size or cfg.batch_size,
                                      seed=cfg.seed, cycle=1000 + cycle)
        update_bn([self.normalize(b.to(self.device)) for b in batches], self.model)
        self.cycle_log.append({"cycle": cycle, "step": "precise_bn", "images": sum(len(b) for b in batches)})

    def _expansion_groups(self):
        """(Expansion, block predicate) pairs for this recipe's Expand: the selected blocks get the
        recipe's expansion (``("arch",)``: each its own kinds, resolved by :func:`repan_zoo.unfold`),
        the others — and every block when no kinds are named — are restored only."""
        cfg = self.cfg
        exp = cfg.expansion
        restore_only = exp.replace(branches=(), k=0, residual=False)
        if not cfg.expand_blocks:
            return [(exp if exp.branches else restore_only, None)]
        pattern = re.compile(cfg.expand_blocks)
        return [(exp if exp.branches else restore_only, lambda n, _b: bool(pattern.search(n))),
                (restore_only, lambda n, _b: not pattern.search(n))]

    def expand_restore(self, cycle: int) -> Dict[str, Any]:
        """Lines 4–5: attach ``k`` new λ-gated branches per kind (Eq. 3) and restore every fused
        conv into conv + BN (inverse of Eq. 2, mode ``restore``), at λ = 0 — verified exact."""
        cfg = self.cfg
        assert self.model is not None
        t = time.perf_counter()
        reports = []
        for expansion, predicate in self._expansion_groups():
            with exact_fp32():
                unfold(self.model, expansion, lam=0.0, generator=self.generator, blocks=predicate, inplace=True,
                       example_input=self.probe)
            reports.append(dict(getattr(self.model, "repan_exactness", {})))
        self._placed(self.model)
        worst = max(reports, key=lambda r: r.get("model_rel_error") or 0.0) if reports else {}
        record = {"cycle": cycle, "step": "expand_restore", "seconds": time.perf_counter() - t, "exactness": worst,
                  "branches": {n: b.branch_kinds for n, b in rep_blocks(self.model)}}
        self.cycle_log.append(record)
        return record

    def calibrate(self, cycle: int, reference: Optional[Sequence[torch.Tensor]]) -> Dict[str, Any]:
        """Line 6: re-estimate the BN statistics from ``calib_batches`` training batches keeping the
        function (:func:`repan_zoo.calibrate_bn`); 0 batches keeps the restored ("inherited")
        statistics. The eval output on the held-out batch is checked against ``reference``."""
        cfg = self.cfg
        assert self.model is not None
        t = time.perf_counter()
        n = 0
        if cfg.calib_batches > 0:
            batches = calibration_batches(self.data.train, cfg.calib_batches, cfg.calib_batch_size or cfg.batch_size,
                                          seed=cfg.seed, cycle=cycle)
            with exact_fp32():
                calibrate_bn(self.model, [self.normalize(b.to(self.device)) for b in batches])
            n = sum(len(b) for b in batches)
        err = None
        if reference is not None:
            err = self.output_error(reference, self._eval_output())
            # the chain Rep → Expand+Restore → Calibrate, each exact to fp32 rounding (the core checks
            # the first two at 1e-5), compared on features and logits: measured 3e-6 to 7e-6 on
            # repan_repvgg_a1_w025; a real fault moves the output by far more than 10× the bound
            tol = 10 * default_tolerance(self.model)
            if err > tol:
                raise ReparameterizationError(
                    f"cycle {cycle}: after Expand+Restore+Calibrate at λ=0 the network's output moved by "
                    f"{err:.3g} (relative) from the fused network's, above {tol:g}; calibration must keep the "
                    "function. Report this with the recipe", model_rel_error=err, tolerance=tol)
        record = {"cycle": cycle, "step": "calibrate", "images": n, "seconds": time.perf_counter() - t,
                  "rel_error_vs_fused": err}
        self.cycle_log.append(record)
        return record

    def set_lambda(self, value: float) -> None:
        """Line 8: λ of Eq. (3) on every train-form Rep block (checked to be in [0, 1])."""
        set_lambda(self.model, value, only_train_form=True)

    # ------------------------------------------------------------------ training pieces
    def _teacher(self) -> Optional[nn.Module]:
        cfg = self.cfg
        if self.teacher is None and cfg.uses_teacher():
            self.teacher = build_teacher(cfg.teacher, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                         checkpoint=cfg.teacher_checkpoint, pretrained=cfg.teacher_pretrained,
                                         model_kwargs=cfg.teacher_kwargs, device=self.device)
            self.teacher = self._placed(self.teacher)
        return self.teacher

    def _optimizer(self, cycle: int) -> torch.optim.Optimizer:
        cfg = self.cfg
        assert self.model is not None
        return torch.optim.SGD(self.model.parameters(), lr=cfg.peak_lr(cycle), momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.wd)

    def _steps_per_epoch(self) -> int:
        n = (len(self.data.train) // self.ctx.world_size) // self.local_batch
        return n if self.cfg.max_steps_per_epoch is None else min(n, self.cfg.max_steps_per_epoch)

    def _checkpoint_state(self, cp: CyclePlan, ci: int, epoch: int, global_epoch: int, optimizer, scaler) -> Dict[str, Any]:
        return {
            "progress": {"cycle_index": ci, "cycle": cp.index, "epoch": epoch, "epochs": cp.epochs,
                         "global_epoch": global_epoch, "global_step": self.global_step},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng_state(self.generator),
            "history": self.history,
            "cycle_log": self.cycle_log,
            "recipe": self.cfg.as_dict(),
        }

    def _save(self, state: Dict[str, Any], tag: str) -> None:
        if self.checkpointer is not None and self.ctx.is_main:
            self.last_checkpoint = self.checkpointer.save(
                unwrap(self.model), state, tag=tag, architecture=self.cfg.model,
                metadata={"progress": state["progress"]},
            )
        self.ctx.barrier()

    def _write_reports(self) -> None:
        if self.out is None or not self.ctx.is_main:
            return
        write_metrics(self.out, self.history)

    def _plot(self) -> None:
        if self.out is None or not self.ctx.is_main or not self.plot or not self.history:
            return
        cfg = self.cfg
        title = f"{cfg.model} · {cfg.method} · {self.data.name}"
        if cfg.method == "repan":
            exp = cfg.expansion
            title += f" · {cfg.cycles}×{cfg.epochs} epochs, restore={exp.restore}, branches={','.join(exp.branches)}×{exp.k}"
        plot_learning_curve(self.history, self.out / "learning_curve.png", title=title)

    # ------------------------------------------------------------------ resume
    def _resume(self) -> Optional[Dict[str, Any]]:
        """Load the last completed epoch's checkpoint; returns its state (or None: start fresh)."""
        if self.checkpointer is None:
            raise RecipeError("--resume needs --out (the run directory)")
        ck = self.checkpointer.load()
        if ck is None:
            return None
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                            model_kwargs=cfg.model_kwargs)
        load_into(model, ck.model_state, ck.model_meta, what=f"checkpoint {ck.directory}")
        self.model = self._placed(model)
        restore_rng_state(ck.state["rng"], self.generator)
        self.history = list(ck.state.get("history", []))
        self.cycle_log = list(ck.state.get("cycle_log", []))
        self.global_step = int(ck.state["progress"].get("global_step", 0))
        self.last_checkpoint = ck.directory
        p = ck.state["progress"]
        self.log(f"resuming from {ck.directory} (cycle {p['cycle']}, epoch {p['epoch']}/{p['epochs']} done)")
        return ck.state

    # ------------------------------------------------------------------ the run
    def run(self, *, resume: bool = False) -> TrainResult:
        """Train the recipe (continuing a killed run with ``resume=True``) and :meth:`finish`."""
        cfg = self.cfg
        plan = cfg.plan()
        offsets = self._plan_offsets(plan)
        state = self._resume() if resume else None
        start_ci, start_epoch = 0, 0
        if state is not None:
            p = state["progress"]
            start_ci, start_epoch = int(p["cycle_index"]), int(p["epoch"])
            if start_epoch >= plan[start_ci].epochs:
                start_ci, start_epoch, state = start_ci + 1, 0, None
        else:
            self.initialise()  # line 1
            if plan[0].expand:
                self.rep(cycle=0, when="before the first cycle (Alg. 1, line 2)")  # line 2
        teacher = self._teacher()
        for ci in range(start_ci, len(plan)):
            cp = plan[ci]
            first_epoch = start_epoch + 1 if ci == start_ci else 1
            if first_epoch == 1 and cp.expand:
                self.rep(cycle=cp.index - 1, when=f"before cycle {cp.index}")  # no-op unless resumed here
                reference = self._eval_output()
                self.expand_restore(cp.index)  # lines 4-5
                self.calibrate(cp.index, reference)  # line 6
            self._train_cycle(cp, ci, first_epoch, offsets[ci], teacher,
                              state if (ci == start_ci and first_epoch > 1) else None)
            self.rep(cycle=cp.index, when=f"end of cycle {cp.index} (Alg. 1, line 11)")  # line 11
            self._plot()
        return self.finish()

    def _train_cycle(self, cp: CyclePlan, ci: int, first_epoch: int, offset: int, teacher, state) -> None:
        cfg = self.cfg
        assert self.model is not None
        if cfg.sync_bn:
            convert_sync_bn(self.model, self.device)
        net = wrap_ddp(self.model, self.ctx)
        optimizer = self._optimizer(cp.index)
        scaler = torch.amp.GradScaler("cuda") if (cfg.amp and self.device.type == "cuda") else None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        spe = self._steps_per_epoch()
        total = spe * cp.epochs
        warmup = int(round(cfg.warmup_epochs * spe))
        peak = cfg.peak_lr(cp.index)
        for epoch in range(first_epoch, cp.epochs + 1):
            t_epoch = time.perf_counter()
            global_epoch = offset + epoch
            done_before = (epoch - 1) * spe

            def lr_at(step: int, done_before=done_before) -> float:
                return cosine_lr(done_before + step - 1, total, peak, warmup=warmup, floor=cfg.min_lr)

            lam_at = None
            if cp.expand:  # line 8, before the epoch trains (per iteration: the first step's value)
                first = (1, spe) if self.schedule.per_iter else (None, None)
                self.set_lambda(self.schedule.value(cp.index, epoch, cp.epochs, *first))
                if self.schedule.per_iter:
                    def lam_at(step: int, epoch=epoch) -> float:
                        return self.schedule.value(cp.index, epoch, cp.epochs, step, spe)
            loader = train_loader(self.data.train, self.local_batch, seed=cfg.seed, epoch=global_epoch,
                                  rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.workers,
                                  pin_memory=self._pin)
            try:
                stats = train_one_epoch(  # line 9
                    net, loader, normalize=self.normalize, optimizer=optimizer, loss_fn=self.loss_fn, ctx=self.ctx,
                    lr_at=lr_at, lam_at=lam_at, set_lam=self.set_lambda, teacher=teacher, amp=cfg.amp,
                    scaler=scaler, max_steps=spe, clip_grad=cfg.clip_grad, progress=self.progress,
                    desc=f"cycle {cp.index} epoch {epoch}/{cp.epochs}",
                )
            except NonFiniteLoss as exc:
                raise self._diverged(cp, epoch, exc, lr_at(exc.step)) from None
            self.global_step += stats["steps"]
            val = evaluate(self.model, self.val_loader, normalize=self.normalize, ctx=self.ctx)
            test = (evaluate(self.model, self.test_loader, normalize=self.normalize, ctx=self.ctx)
                    if cfg.test_each_epoch else {"top1": None})
            row = {
                "cycle": cp.index, "epoch": epoch, "global_epoch": global_epoch, "expand": cp.expand,
                "lam": self._current_lambda(), "lr": lr_at(stats["steps"]) if stats["steps"] else None,
                "train_loss": stats["train_loss"], "train_top1": stats["train_top1"],
                "val_loss": val["loss"], "val_top1": val["top1"], "test_top1": test["top1"],
                "steps": stats["steps"], "images": stats["images"],
                "epoch_time_s": time.perf_counter() - t_epoch, "time_s": time.time() - self._t0,
            }
            self.history.append(row)
            test_part = f"test {row['test_top1']:.2f}  " if row["test_top1"] is not None else ""
            self.log(
                f"cycle {cp.index}/{cfg.cycles if cfg.method == 'repan' else 1} epoch {epoch}/{cp.epochs}: "
                f"loss {row['train_loss']:.4f}  val {row['val_top1']:.2f}  {test_part}"
                f"λ {row['lam'] if row['lam'] is not None else '-'}  lr {row['lr'] or 0:.4g}  "
                f"({row['epoch_time_s']:.1f} s)"
            )
            self._save(self._checkpoint_state(cp, ci, epoch, global_epoch, optimizer, scaler), tag=f"ep{global_epoch:04d}")
            self._write_reports()

    def _diverged(self, cp: CyclePlan, epoch: int, exc: NonFiniteLoss, lr: float) -> TrainingDivergedError:
        cfg = self.cfg
        where = f"cycle {cp.index}, epoch {epoch}/{cp.epochs}, step {exc.step}"
        kept = (f"The last good checkpoint {self.last_checkpoint} (end of the previous epoch) is untouched; "
                "continue from it with --resume after changing the recipe" if self.last_checkpoint is not None
                else "No epoch had completed, so there is no checkpoint")
        lam = self._current_lambda()
        msg = (
            f"training diverged: the loss became {exc.value} at {where} (lr {lr:.4g}"
            + (f", λ {lam:.3g}" if lam is not None else "") + f", amp {'on' if cfg.amp else 'off'}). "
            f"The weights were not updated by this step. {kept}. Likely fixes: a lower --lr (now {cfg.peak_lr(cp.index):g})"
            + (", --amp off" if cfg.amp else "") + ", --clip-grad 5"
            + (", or a smaller --branch-gamma / a slower --lam-schedule" if cp.expand else "")
        )
        return TrainingDivergedError(msg, cycle=cp.index, epoch=epoch, step=exc.step, checkpoint=self.last_checkpoint)

    # ------------------------------------------------------------------ output
    def finish(self) -> TrainResult:
        """The deploy network (Algorithm 1's output): fused, evaluated, saved with its exactness
        certificate, reloaded into ``timm.create_model(..., deploy=True)`` and evaluated again."""
        cfg = self.cfg
        assert self.model is not None
        self.rep(cycle=len(self.cfg.plan()), when="final")
        rep_records = [r for r in self.cycle_log if r.get("step") == "rep" and r.get("exactness")]
        certificate = dict(rep_records[-1]["exactness"]) if rep_records else {}
        certificate["probe"] = f"first {len(self.probe)} validation images (held out from training)"
        local = DistContext(device=self.device)
        with exact_fp32():
            val = evaluate(self.model, eval_loader(self.data.val, cfg.eval_batch_size), normalize=self.normalize,
                           ctx=local)
            test = evaluate(self.model, eval_loader(self.data.test, cfg.eval_batch_size), normalize=self.normalize,
                            ctx=local)
        final: Dict[str, Any] = {
            "model": cfg.model,
            "create_kwargs": {"num_classes": self.data.num_classes, "in_chans": self.data.in_chans, **cfg.model_kwargs},
            "method": cfg.method,
            "recipe": cfg.as_dict(),
            "data": self.data.describe(),
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "epochs_trained": len(self.history),
            "val_top1": val["top1"],
            "test_top1": test["top1"],
            "val_loss": val["loss"],
            "test_loss": test["loss"],
            "exactness": certificate,
            "teacher": self._teacher_record(),
            "cycles": self.cycle_log,
            "train_time_s": sum(r["epoch_time_s"] for r in self.history),
            "versions": _versions(),
        }
        if self.out is not None and self.ctx.is_main:
            path = self.out / "deploy.safetensors"
            meta = {"recipe": cfg.as_dict(), "dataset": self.data.name, "mean": list(self.data.mean),
                    "std": list(self.data.std), "input_size": list(self.data.input_size),
                    "metrics": {"val_top1": val["top1"], "test_top1": test["top1"]}}
            self.model.repan_exactness = {k: v for k, v in certificate.items() if k != "probe"}
            save_checkpoint(self.model, path, architecture=cfg.model, metadata=meta)
            final["checkpoint"] = {"path": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
            final["reload_check"] = self._reload_check(path, val["top1"], test["top1"])
            write_json(self.out / "exactness.json", certificate)
            write_json(self.out / "final.json", final)
            self._write_reports()
            self._plot()
            self.log(f"deploy model: val {val['top1']:.2f}  test {test['top1']:.2f}  "
                     f"exactness {certificate.get('model_rel_error')}  → {path}")
        self.ctx.barrier()
        return TrainResult(self.model, val["top1"], test["top1"], certificate, self.history, final)

    def _teacher_record(self) -> Optional[Dict[str, Any]]:
        """The teacher by name and content (a path is one machine's; its sha256 is portable)."""
        cfg = self.cfg
        if not cfg.uses_teacher():
            return None
        ckpt = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
        return {"model": cfg.teacher, "kwargs": cfg.teacher_kwargs, "pretrained": cfg.teacher_pretrained,
                "checkpoint_sha256": sha256_file(ckpt) if ckpt is not None and ckpt.is_file() else None}

    def _reload_check(self, path: Path, val_top1: float, test_top1: float) -> Dict[str, Any]:
        """Load the written file into a fresh deploy-form timm model: its logits on the held-out
        batch must match the trained model's (≤ 1e-5 relative, fp32), and its test top-1 is
        re-measured (recorded; equal to the trained model's up to ties on GPUs)."""
        cfg = self.cfg
        try:
            fresh = build_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                model_kwargs=cfg.model_kwargs, deploy=True)
        except TypeError:  # a model without a deploy kwarg: load_into converts from train form
            fresh = build_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                model_kwargs=cfg.model_kwargs)
        state, meta = read_checkpoint(path)
        load_into(fresh, state, meta, what=str(path))
        fresh = self._placed(fresh)  # same device and memory format: the same computation as the trained model
        err = self.output_error(self._eval_output(), self._eval_output(fresh))
        if err > default_tolerance(fresh):
            from ..errors import CheckpointError

            raise CheckpointError(f"{path}: the reloaded deploy model's output differs from the trained model's "
                                  f"by {err:.3g} (relative); the checkpoint does not reproduce the model")
        local = DistContext(device=self.device)
        with exact_fp32():
            test = evaluate(fresh, eval_loader(self.data.test, cfg.eval_batch_size), normalize=self.normalize,
                            ctx=local)
        return {"test_top1": test["top1"], "logits_rel_error": err, "deploy_form": model_form(fresh)}


def _versions() -> Dict[str, str]:
    import platform

    import timm

    from .. import __version__

    return {"repan_zoo": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}

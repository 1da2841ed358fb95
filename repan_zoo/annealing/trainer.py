"""Classification with RepAn (Algorithm 1), baseline or KD: the classification task of the
one Algorithm-1 driver, :class:`repan_zoo.annealing.cycles.CycleRun`.

:class:`RepAnTrainer` supplies the driver's hooks: the timm model (line 1, optionally from a
checkpoint, BN statistics from data when line 2 fuses it at once), the held-out probe (the first
≤128 validation images: features *and* logits), calibration batches from the training split,
SGD with a cosine learning rate per cycle, the (KD) loss of one step, top-1 on validation and
test, and the deploy network (:meth:`RepAnTrainer.finish`: fused, saved with its exactness
certificate, reloaded into ``timm.create_model(..., deploy=True)`` and checked).
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..augment import mix_seed
from ..blocks import rep_blocks
from ..checkpoint import load_into, model_form, read_checkpoint, save_checkpoint
from ..convert import default_tolerance, uncalibrated_blocks
from ..data import DataSplits, calibration_batches, eval_loader, train_loader
from ..errors import RecipeError
from ..fileio import sha256_file, write_verified
from ..manifest import published_recipe
from ..runtime.checkpointing import Checkpointer, RunCheckpoint
from ..runtime.distributed import DistContext
from ..runtime.hardware import device_name
from ..runtime.onednn import cpu_bf16_native, guard_strided_1x1
from ..runtime.report import plot_learning_curve, write_json, write_metrics
from ..runtime.summary import RunSummary
from ..verify import eval_mode, exact_fp32
from .config import TrainConfig
from .cycles import CyclePlan, CycleRun, ExpansionGroup
from .engine import classification_stats, classification_step, evaluate, precision_name
from .build import build_model, versions
from .kd import KDLoss, build_teacher, pretrained_source

__all__ = ["RepAnTrainer", "TrainResult", "build_model"]

#: training batches that estimate a freshly initialised network's BN statistics before its first
#: Rep (Alg. 1 line 2) when ``--calib-batches`` is 0 (otherwise that many)
INITIAL_BN_BATCHES = 5


@dataclass
class TrainResult:
    """What a finished run produced (rank 0 also wrote ``final`` as ``final.json`` under ``out``)."""

    model: nn.Module
    val_top1: float
    test_top1: float
    exactness: Dict[str, Any]
    history: List[Dict[str, Any]]
    final: Dict[str, Any]
    summary: Optional[RunSummary] = None


class RepAnTrainer(CycleRun):
    """Runs one recipe (:class:`TrainConfig`) on one dataset (:class:`DataSplits`): the
    classification task of :class:`~repan_zoo.annealing.cycles.CycleRun` (Algorithm 1; baseline
    and KD are the one-cycle plans without Expand).

    Args:
        cfg: the recipe.
        data: train / val / test splits.
        ctx: the process group (default: one process on the CPU).
        out: where rank 0 writes checkpoints and reports (None: nothing is written and
            ``resume`` is impossible).
        progress, log, workers, keep_checkpoints, plot: run options.
        resumed_with: the recipe changes of earlier resumes (``repan-train``'s ``resume.json``:
            ``{"after_epoch", "overrides"}`` each), recorded in ``final.json`` and in the deploy
            file's recipe: ``cfg`` is the recipe of the last part of the run only.

    Raises:
        RecipeError: a batch that does not divide over the processes or exceeds the split.

    Use :meth:`run` (``resume=True`` continues a killed run).
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
        resumed_with: Sequence[Dict[str, Any]] = (),
    ):
        self._init_cycles()
        self.resumed_with = [dict(r) for r in resumed_with]
        self.cfg = cfg
        self.data = data
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.processor = device_name(self.device)
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self._log = log
        self.workers = workers
        self.plot = plot
        self.sync_bn, self.amp, self.clip_grad, self.min_lr = cfg.sync_bn, cfg.amp, cfg.clip_grad, cfg.min_lr
        if cfg.amp and self.device.type == "cpu" and not cpu_bf16_native():
            self.log(f"warning: --amp on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native bf16 kernels) "
                     "emulates bf16: training steps run about 10x slower than fp32 (repan_zoo.runtime.cpu_bf16_native); "
                     "add --no-amp")
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
        self.lam_schedule = cfg.lambda_schedule()
        self.loss_fn = KDLoss(cfg.kd_alpha if cfg.uses_teacher() else 0.0, cfg.kd_T, cfg.label_smoothing)
        self.checkpointer = Checkpointer(self.out, keep=keep_checkpoints) if self.out is not None else None
        self.teacher: Optional[nn.Module] = None
        self._probe: Optional[torch.Tensor] = None
        self._t0 = time.time()
        if self.device.type == "cuda" and workers == 0:  # the dataset on the GPU: batches gathered and augmented there
            data.to(self.device)
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

    def probe(self) -> torch.Tensor:
        """The held-out batch every conversion is verified on: the first ≤128 validation images
        (``[N, C, H, W]``, normalised, on the run's device and memory format)."""
        if self._probe is None:
            n = min(128, len(self.data.val))
            images, _ = self.data.val[list(range(n))]
            self._probe = self.normalize(images.to(self.device))
        return self._probe

    @torch.no_grad()
    def eval_outputs(self, model: Optional[nn.Module] = None) -> Tuple[torch.Tensor, ...]:
        """Eval-mode outputs on the probe, fp32: the features *and* the logits of a timm model (a
        zero-initialised classifier would make a logits-only check vacuous)."""
        model = self.model if model is None else model
        assert model is not None
        with eval_mode(model), exact_fp32():
            if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                feats = model.forward_features(self.probe())
                outs = (feats, model.forward_head(feats))
            else:
                outs = (model(self.probe()),)
            return tuple(t.detach().float().clone() for t in outs)

    # ------------------------------------------------------------------ driver hooks
    def cycle_plan(self) -> List[CyclePlan]:
        return self.cfg.plan()

    def _new_model(self) -> nn.Module:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                           model_kwargs=cfg.model_kwargs)

    def initialise(self) -> nn.Module:
        """Line 1: build the network and load ``init_checkpoint`` (train or deploy form) if given.

        Raises:
            RecipeError: RepAn on a model without Rep blocks, or ``--branches arch`` on blocks
                without branch kinds of their own.
        """
        cfg = self.cfg
        model = self._new_model()
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
        self.model = model
        self.place()
        if not cfg.init_checkpoint and cfg.plan()[0].expand:
            self._initial_bn_statistics()
        elif uncalibrated_blocks(model) and not cfg.plan()[0].expand and cfg.calib_batches > 0:
            self._calibrate_restored()
        return self.model

    @torch.no_grad()
    def _calibrate_restored(self) -> None:
        """Part of line 1 for deploy weights loaded into the train form: :func:`load_into` restored
        every fused conv into conv + BN with μ = 0, σ = 1 (it saw no data: :func:`uncalibrated_blocks`
        lists them), so training mode, which normalises with the batch statistics, would start from
        another function (MobileOne-S0 w050's ``fmnist_long_baseline`` weights: 42.7 % Fashion-MNIST
        test top-1 in training mode as loaded, 92.7 % calibrated; ``benchmarks/check_pretrained.py``).
        Calibrate (line 6,
        :func:`repan_zoo.calibrate_bn`) on ``calib_batches`` training batches keeps the eval function
        and makes the train-mode one start equal to it. Not needed when the first cycle expands: its
        own Rep → Expand + Restore → Calibrate follows. The eval function is checked as line 6's."""
        record = self.calibrate(0, self.eval_outputs())
        record["step"] = "calibrate_restored"
        self.log(f"line 1: deploy weights restored into the train form → Calibrate ({record['images']} images), "
                 f"output rel. error {record['rel_error_vs_fused']:.2e}")

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
        self._update_bn(self.cfg.calib_batches or INITIAL_BN_BATCHES, cycle=0, step="initial_bn_statistics",
                        log_cycle=0)

    def _calibration_inputs(self, n: int, cycle: int) -> List[torch.Tensor]:
        """``n`` training batches of ``--calib-batch-size`` (default ``--batch-size``) images, drawn
        for ``cycle`` without augmentation (:func:`calibration_batches`), normalised, on the device."""
        cfg = self.cfg
        batches = calibration_batches(self.data.train, n, cfg.calib_batch_size or cfg.batch_size, seed=cfg.seed,
                                      cycle=cycle)
        return [self.normalize(b.to(self.device)) for b in batches]

    def _update_bn(self, n: int, *, cycle: int, step: str, log_cycle: int) -> None:
        from torch.optim.swa_utils import update_bn

        inputs = self._calibration_inputs(n, cycle)
        update_bn(inputs, self.model)
        self.cycle_log.append({"cycle": log_cycle, "step": step, "images": sum(len(b) for b in inputs)})

    def place(self) -> None:
        """``model`` on the run's device and in its memory format (Rep and Expand create new
        convs, so this follows every conversion too). In channels-last on a CPU, the strided 1×1
        convolutions of few input channels compute in NCHW (:mod:`repan_zoo.runtime.onednn`: a
        oneDNN bug corrupts the heap in their backward pass)."""
        self.model.to(device=self.device, memory_format=self.memory_format)
        if self.memory_format == torch.channels_last and self.device.type == "cpu":
            guard_strided_1x1(self.model)

    def before_rep(self, cycle: int) -> None:
        """Optional (``precise_bn`` batches, default off = the paper): before the Rep that ends a
        cycle, re-estimate the BN running statistics from training batches in train mode
        (``torch.optim.swa_utils.update_bn``). Rep fuses the eval function, whose running
        averages lag behind the weights after few or fast steps; this makes the fused network the
        one that was training at the end of the cycle."""
        if self.cfg.precise_bn and cycle >= 1:
            with torch.no_grad():
                self._update_bn(self.cfg.precise_bn, cycle=1000 + cycle, step="precise_bn", log_cycle=cycle)

    def expansion_groups(self) -> List[ExpansionGroup]:
        """(Expansion, block predicate) pairs for this recipe's Expand: the selected blocks get the
        recipe's expansion (``("arch",)``: each its own kinds, resolved by :func:`repan_zoo.unfold`),
        the others — and every block when no kinds are named — are restored only."""
        cfg = self.cfg
        restore_only = cfg.expansion.replace(branches=(), k=0, residual=False)
        chosen = cfg.expansion if cfg.expansion.branches else restore_only
        if not cfg.expand_blocks:
            return [(chosen, None)]
        pattern = re.compile(cfg.expand_blocks)
        return [(chosen, lambda n, _b: bool(pattern.search(n))), (restore_only, lambda n, _b: not pattern.search(n))]

    def calibration(self, cycle: int) -> Tuple[nn.Module, List[torch.Tensor]]:
        """Line 6: ``calib_batches`` training batches (0: keep the restored statistics)."""
        if self.cfg.calib_batches <= 0:
            return self.model, []
        return self.model, self._calibration_inputs(self.cfg.calib_batches, cycle)

    def prepare(self) -> None:
        """The KD teacher (after line 1 or a resume)."""
        cfg = self.cfg
        if self.teacher is None and cfg.uses_teacher():
            self.teacher = build_teacher(cfg.teacher, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                         checkpoint=cfg.teacher_checkpoint, pretrained=cfg.teacher_pretrained,
                                         model_kwargs=cfg.teacher_kwargs)
            self.teacher = self.teacher.to(device=self.device, memory_format=self.memory_format)

    def make_optimizer(self, cycle: int) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self.model.parameters(), lr=cfg.peak_lr(cycle), momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.wd)

    def peak_lr(self, cycle: int) -> float:
        return self.cfg.peak_lr(cycle)

    def warmup_steps(self, steps_per_epoch: int, total: int) -> int:
        return int(round(self.cfg.warmup_epochs * steps_per_epoch))

    def steps_per_epoch(self) -> int:
        n = (len(self.data.train) // self.ctx.world_size) // self.local_batch
        return n if self.cfg.max_steps_per_epoch is None else min(n, self.cfg.max_steps_per_epoch)

    def epoch_batches(self, cp: CyclePlan, epoch: int, global_epoch: int):
        return train_loader(self.data.train, self.local_batch, seed=self.cfg.seed, epoch=global_epoch,
                            rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.workers,
                            pin_memory=self._pin)

    def step_loss(self, net: nn.Module, batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        step = classification_step(net, normalize=self.normalize, loss_fn=self.loss_fn, device=self.device,
                                   teacher=self.teacher, amp=self.cfg.amp)
        return step(batch)

    def end_epoch(self, cp: CyclePlan, epoch: int, global_epoch: int, steps: int, sums: Dict[str, float],
                  lr: Optional[float], started: float) -> Dict[str, Any]:
        cfg = self.cfg
        stats = classification_stats(steps, sums, self.ctx)
        val = evaluate(self.model, self.val_loader, normalize=self.normalize, ctx=self.ctx)
        test = (evaluate(self.model, self.test_loader, normalize=self.normalize, ctx=self.ctx)
                if cfg.test_each_epoch else {"top1": None})
        row = {
            "cycle": cp.index, "epoch": epoch, "global_epoch": global_epoch, "expand": cp.expand,
            "lam": self.current_lambda(), "lr": lr,
            "train_loss": stats["train_loss"], "train_top1": stats["train_top1"],
            "val_loss": val["loss"], "val_top1": val["top1"], "test_top1": test["top1"],
            "steps": stats["steps"], "images": stats["images"],
            "epoch_time_s": time.perf_counter() - started, "time_s": time.time() - self._t0,
            "device": self.device.type,  # a run resumed on another device (GPU → CPU) keeps that record per epoch
            "precision": precision_name(self.device, self.cfg.amp),  # and on another machine, maybe another --amp
            "processor": self.processor,  # the CPU or GPU model: an epoch time means something only beside it
        }
        test_part = f"test {row['test_top1']:.2f}  " if row["test_top1"] is not None else ""
        self.log(
            f"cycle {cp.index}/{len(self.cycle_plan())} epoch {epoch}/{cp.epochs}: "
            f"loss {row['train_loss']:.4f}  val {row['val_top1']:.2f}  {test_part}"
            f"λ {format(row['lam'], '.3g') if row['lam'] is not None else '-'}  lr {row['lr'] or 0:.4g}  "
            f"({row['epoch_time_s']:.1f} s)"
        )
        return row

    def after_epoch_saved(self) -> None:
        if self.out is not None and self.ctx.is_main:
            write_metrics(self.out, self.history)

    def after_cycle(self) -> None:
        self._plot()

    def checkpoint_identity(self) -> Tuple[str, Dict[str, Any]]:
        return self.cfg.model, {}

    def checkpoint_extra(self) -> Dict[str, Any]:
        return {"recipe": self.cfg.as_dict()}

    def model_from_checkpoint(self, ck: RunCheckpoint) -> nn.Module:
        model = self._new_model()
        load_into(model, ck.model_state, ck.model_meta, what=f"checkpoint {ck.directory}")
        self.model = model
        self.place()
        return self.model

    def _plot(self) -> None:
        if self.out is None or not self.ctx.is_main or not self.plot or not self.history:
            return
        cfg = self.cfg
        title = f"{cfg.model} · {cfg.method} · {self.data.name}"
        if cfg.method == "repan":
            exp = cfg.expansion
            title += f" · {cfg.cycles}×{cfg.epochs} epochs, restore={exp.restore}, branches={','.join(exp.branches)}×{exp.k}"
        plot_learning_curve(self.history, self.out / "learning_curve.png", title=title)

    # ------------------------------------------------------------------ output
    def finish(self) -> TrainResult:
        """The deploy network (Algorithm 1's output): fused, evaluated, saved with its exactness
        certificate, reloaded into ``timm.create_model(..., deploy=True)`` and evaluated again."""
        cfg = self.cfg
        assert self.model is not None
        self.rep(cycle=len(self.cfg.plan()), when="end of the last cycle (Alg. 1, line 11): the output")
        rep_records = [r for r in self.cycle_log if r.get("step") == "rep" and r.get("exactness")]
        certificate = dict(rep_records[-1]["exactness"]) if rep_records else {}
        certificate["probe"] = f"first {len(self.probe())} validation images (held out from training)"
        val, test = self._evaluate_all(self.model)
        summary = RunSummary(
            model=cfg.model,
            create_kwargs={"num_classes": self.data.num_classes, "in_chans": self.data.in_chans, **cfg.model_kwargs},
            method=cfg.method, recipe=cfg.as_dict(), data=self.data.describe(),
            val_top1=val["top1"], test_top1=test["top1"], exactness=certificate,
            val_loss=val["loss"], test_loss=test["loss"], teacher=self._teacher_record(),
            init=self._init_record(), world_size=self.ctx.world_size, device=str(self.device),
            epochs_trained=len(self.history),
            cycles=self.cycle_log, train_time_s=sum(r["epoch_time_s"] for r in self.history), versions=versions(),
            resumed_with=self.resumed_with,
        )
        if self.out is not None:
            self.ctx.on_main(lambda: self._write_outputs(summary, certificate, val, test),
                             "writing the deploy checkpoint and final.json")
        self.ctx.barrier()
        return TrainResult(self.model, val["top1"], test["top1"], certificate, self.history, summary.as_dict(), summary)

    def _write_outputs(self, summary: RunSummary, certificate: Dict[str, Any], val: Dict[str, float],
                       test: Dict[str, float]) -> None:
        """The run's outputs (main process): the verified ``deploy.safetensors``, ``exactness.json``,
        ``final.json``, the metrics and the curves."""
        cfg = self.cfg
        path = self.out / "deploy.safetensors"
        # the file that gets published: its recipe names the teacher and the start by content
        # (sha256, manifest name), not by this machine's paths (final.json keeps those)
        recipe = published_recipe(cfg.as_dict(), summary.teacher, summary.init, summary.resumed_with)
        meta = {"recipe": recipe, "dataset": self.data.name, "mean": list(self.data.mean),
                "std": list(self.data.std), "input_size": list(self.data.input_size),
                "metrics": {"val_top1": val["top1"], "test_top1": test["top1"]}}
        self.model.repan_exactness = {k: v for k, v in certificate.items() if k != "probe"}
        summary.reload_check = write_verified(  # the run's output once reloading it reproduces the model
            path, lambda p: save_checkpoint(self.model, p, architecture=cfg.model, metadata=meta), self._reload_check)
        summary.checkpoint = {"path": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
        write_json(self.out / "exactness.json", certificate)
        write_json(self.out / "final.json", summary.as_dict())
        self.after_epoch_saved()
        self._plot()
        self.log(f"deploy model: val {val['top1']:.2f}  test {test['top1']:.2f}  "
                 f"exactness {certificate.get('model_rel_error')}  → {path}")

    def _evaluate_all(self, model: nn.Module, splits=("val", "test")) -> List[Dict[str, float]]:
        """fp32 evaluation of ``model`` on whole splits in this process."""
        local = DistContext(device=self.device)
        with exact_fp32():
            return [evaluate(model, eval_loader(getattr(self.data, s), self.cfg.eval_batch_size),
                             normalize=self.normalize, ctx=local) for s in splits]

    def _teacher_record(self) -> Optional[Dict[str, Any]]:
        """The teacher by name and content (a path is one machine's; its sha256 is portable)."""
        cfg = self.cfg
        if not cfg.uses_teacher():
            return None
        ckpt = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
        record = {"model": cfg.teacher, "kwargs": cfg.teacher_kwargs, "pretrained": cfg.teacher_pretrained,
                  "checkpoint_sha256": sha256_file(ckpt) if ckpt is not None and ckpt.is_file() else None}
        if cfg.teacher_pretrained and ckpt is None:  # timm's weights: by manifest name / hub id, sha256 where pinned
            self.prepare()
            source = pretrained_source(self.teacher)
            record.update(checkpoint_sha256=source["checkpoint_sha256"], manifest=source["manifest"],
                          pretrained_source=source)
        return record

    def _init_record(self) -> Optional[Dict[str, Any]]:
        """The ``--init-checkpoint`` weights by content (sha256) and, where the zoo ships them, by
        manifest name: a recipe that starts from them can then name them without a machine path."""
        if not self.cfg.init_checkpoint:
            return None
        from ..manifest import name_for_sha256

        sha = sha256_file(Path(self.cfg.init_checkpoint))
        return {"checkpoint_sha256": sha, "manifest": name_for_sha256(sha)}

    def _reload_check(self, path: Path) -> Dict[str, Any]:
        """Load the written file into a fresh deploy-form timm model: its outputs on the probe must
        match the trained model's (≤ 1e-5 relative, fp32), and its test top-1 is re-measured
        (recorded; equal to the trained model's up to ties on GPUs).

        Raises:
            CheckpointError: the reloaded model does not reproduce the trained one.
        """
        cfg = self.cfg
        build = functools.partial(build_model, cfg.model, num_classes=self.data.num_classes,
                                  in_chans=self.data.in_chans, model_kwargs=cfg.model_kwargs)
        try:
            fresh = build(deploy=True)
        except TypeError:  # a model without a deploy kwarg: load_into converts from train form
            fresh = build()
        state, meta = read_checkpoint(path)
        load_into(fresh, state, meta, what=str(path))
        fresh = fresh.to(device=self.device, memory_format=self.memory_format)  # the trained model's computation
        err = self.output_error(self.eval_outputs(), self.eval_outputs(fresh))
        if err > default_tolerance(fresh):
            from ..errors import CheckpointError

            raise CheckpointError(f"{path}: the reloaded deploy model's output differs from the trained model's "
                                  f"by {err:.3g} (relative); the checkpoint does not reproduce the model, so it is "
                                  "not the run's deploy.safetensors (kept under this name for inspection; the last "
                                  "epoch's train-form checkpoint is in checkpoints/). Please report it with the model "
                                  "and recipe")
        (test,) = self._evaluate_all(fresh, splits=("test",))
        return {"test_top1": test["top1"], "logits_rel_error": err, "deploy_form": model_form(fresh)}

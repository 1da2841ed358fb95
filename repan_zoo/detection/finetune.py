"""Detection fine-tuning of a RepAn backbone: unfold → (RepAn cycles) → reparameterize.

:func:`run_finetune` is the engine behind ``train_scripts/finetune_detection.py``
(:mod:`repan_zoo.detection.cli`):

1. read the COCO-format splits (:class:`~repan_zoo.detection.coco.CocoDetectionSet`), build the
   detector (:func:`~repan_zoo.detection.detectors.build_detector`) on the backbone, from its
   deploy checkpoint (``--backbone-checkpoint``) or the hub (``--pretrained``);
2. with ``unfold``: Expand + Restore the backbone (:func:`repan_zoo.unfold`, λ=0, the function
   is unchanged); with ``cycles > 1`` every later cycle starts with Rep → Expand + Restore →
   Calibrate on detection images (:func:`~repan_zoo.detection.rep.repan_restart`,
   Algorithm 1 lines 2–6), λ rising by Θ(r, e) (:class:`repan_zoo.annealing.LambdaSchedule`,
   per iteration) and the learning rate restarting (cosine per cycle);
3. train (AdamW or SGD, cosine learning rate per cycle), under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on GPUs);
   after every epoch: COCO mAP on the validation split (pycocotools), ``metrics.json`` and an
   atomic checkpoint (``checkpoints/epNNNN/``: typed safetensors + optimiser/RNG state), from
   which ``resume`` continues;
4. at the end: :func:`repan_zoo.reparameterize` of the whole detector in one call, the fused
   detector's features and detections compared with the trained one's, its mAP measured, and
   it is saved as ``deploy.safetensors`` (metadata: the detector config and categories; rebuild
   with :func:`load_detector`), reloaded and checked; optionally exported (TorchScript / ONNX).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from ..annealing.checkpointing import Checkpointer, restore_rng_state, rng_state
from ..annealing.distributed import DistContext, convert_sync_bn, init_distributed, wrap_ddp
from ..annealing.report import write_json
from ..annealing.schedules import LambdaSchedule, cosine_lr
from ..checkpoint import load_into, metadata_json, model_form, read_checkpoint, save_checkpoint
from ..convert import reparameterize, set_lambda
from ..errors import CheckpointError, RecipeError, TrainingDivergedError
from ..fileio import remove_stale_temps
from .coco import CategoryMap, CocoDetectionSet, collate, load_coco_json
from .compare import NEAR_TIE_FLIPS, compare_detectors, detections_match
from .detectors import DetectorConfig, build_detector
from .evaluate import evaluate_detector
from .config import FinetuneConfig
from .rep import repan_restart, unfold_backbone

__all__ = ["FinetuneConfig", "run_finetune", "load_detector"]


# ------------------------------------------------------------------------------------------------
# detector construction and reloading
# ------------------------------------------------------------------------------------------------
def _image_size(data: Dict[str, Any]) -> Tuple[int, int]:
    first = data["images"][0] if data["images"] else {"width": 800, "height": 800}
    return min(first["width"], first["height"]), max(first["width"], first["height"])


def _detector_config(cfg: FinetuneConfig, categories: CategoryMap, train_data: Dict[str, Any]) -> DetectorConfig:
    short, long = _image_size(train_data)
    return DetectorConfig(
        detector=cfg.detector, backbone=cfg.backbone, num_classes=categories.num_classes,
        out_indices=cfg.out_indices, fpn_channels=cfg.fpn_channels,
        min_size=cfg.min_size or short, max_size=cfg.max_size or max(long, cfg.min_size or short),
        anchor_scale=cfg.anchor_scale, score_thresh=cfg.score_thresh, detections_per_img=cfg.detections_per_img,
        model_kwargs=dict(cfg.model_kwargs),
    )


def load_detector(path: str, *, device: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a detector from a checkpoint this module wrote (``deploy.safetensors`` or an epoch's
    ``model.safetensors``): its ``detector_config`` metadata builds the detector, which is then
    loaded strictly (:func:`repan_zoo.checkpoint.load_into`). Returns ``(detector, metadata)``."""
    state, meta = read_checkpoint(path)
    if "detector_config" not in meta:
        raise CheckpointError(f"{path} has no detector_config metadata: it was not written by repan_zoo.detection")
    dcfg = DetectorConfig.from_dict(metadata_json(meta, "detector_config"))
    if meta.get("form") == "deploy":
        dcfg.model_kwargs = {**dcfg.model_kwargs, "deploy": True}
    model = build_detector(dcfg, check_strides=False)
    if meta.get("form") == "train" and model_form(model) == "deploy":
        unfold_backbone(model, inplace=True)
    load_into(model, state, meta, what=str(path))
    model.repan_config = {**model.repan_config, "model_kwargs": {
        k: v for k, v in model.repan_config["model_kwargs"].items() if k != "deploy"}}
    if device:
        model.to(device)
    return model.eval(), meta


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, cfg: FinetuneConfig, ctx: DistContext):
        self.cfg = cfg
        self.ctx = ctx
        self.out = Path(cfg.out)
        self.device = ctx.device
        self.checkpointer = Checkpointer(self.out, keep=2)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: List[Dict[str, Any]] = []
        self.cycle_log: List[Dict[str, Any]] = []
        self.lam_schedule = LambdaSchedule(cfg.lam_schedule, cfg.lam_start, cfg.lam_end, cfg.lam_warmup, per_iter=True)
        train_data = load_coco_json(cfg.train_annotations)
        self.categories = CategoryMap.from_coco(train_data)
        self.dcfg = _detector_config(cfg, self.categories, train_data)
        self.model = build_detector(self.dcfg, backbone_checkpoint=cfg.backbone_checkpoint, pretrained=cfg.pretrained)
        self.dcfg = DetectorConfig.from_dict(self.model.repan_config)
        self.in_chans = self.dcfg.in_chans or 3
        self.train_set = CocoDetectionSet(cfg.train_images, cfg.train_annotations, train=True, in_chans=self.in_chans,
                                          flip=cfg.flip, categories=self.categories)
        self.calib_set = CocoDetectionSet(cfg.train_images, cfg.train_annotations, train=False, in_chans=self.in_chans,
                                          categories=self.categories, check_files=False)
        self.val_set = CocoDetectionSet(cfg.val_images, cfg.val_annotations, train=False, in_chans=self.in_chans,
                                        categories=self.categories)
        self.eval_images = [self.val_set[i][0] for i in range(min(cfg.compare_images, len(self.val_set)))]
        self.repan_active = False  # λ is scheduled once the backbone carries expanded branches
        if cfg.unfold:
            unfold_backbone(self.model, cfg.expansion, generator=self.generator, inplace=True)
            self.cycle_log.append({"cycle": 1, "step": "unfold", "exactness": dict(self.model.repan_exactness)})
            self.repan_active = True
        self.model.to(self.device)
        per_rank, rem = divmod(cfg.batch_size, ctx.world_size)
        if rem or per_rank < 1:
            raise RecipeError(f"--batch-size {cfg.batch_size} is not divisible over {ctx.world_size} processes")
        self.sampler = DistributedSampler(self.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
        self.loader = DataLoader(self.train_set, batch_size=per_rank, sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.workers, drop_last=False)
        full = len(self.loader)
        self.steps_per_epoch = min(full, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else full
        self.start = (1, 1)  # (cycle, epoch) to run next
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.ddp: nn.Module = self.model

    # -- model plumbing --------------------------------------------------------------------
    def _rebuild(self) -> None:
        """New optimiser and DDP wrapper after the model's modules changed (unfold / restart)."""
        if self.cfg.sync_bn and self.ctx.distributed:
            convert_sync_bn(self.model, self.device)
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.wd)
        else:  # RetinaNet's focal loss barely moves under SGD in short CPU runs; AdamW trains it in a few epochs
            self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.wd)
        self.ddp = wrap_ddp(self.model, self.ctx)

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _progress(self, cycle: int, epoch: int) -> Dict[str, int]:
        return {"cycle": cycle, "epoch": epoch, "global_epoch": (cycle - 1) * self.cfg.epochs + epoch}

    # -- resume ------------------------------------------------------------------------------
    def resume(self) -> None:
        ckpt = self.checkpointer.load()
        if ckpt is None:
            raise CheckpointError(f"--resume: {self.checkpointer.pointer} does not exist; start the run without --resume")
        saved = metadata_json(ckpt.model_meta, "detector_config") if "detector_config" in ckpt.model_meta else {}
        if saved and saved != self.dcfg.as_dict():
            diff = sorted(k for k in set(saved) | set(self.dcfg.as_dict()) if saved.get(k) != self.dcfg.as_dict().get(k))
            raise RecipeError(f"--resume: the detector in {ckpt.directory} differs in {diff}; resume with the options "
                              "of the original run")
        if ckpt.model_meta.get("form") == "train" and model_form(self.model) == "deploy":
            unfold_backbone(self.model, inplace=True)  # the structure comes from the checkpoint's metadata
        load_into(self.model, ckpt.model_state, ckpt.model_meta, what=str(ckpt.directory))
        state = ckpt.state
        if state.get("optimizer_name", self.cfg.optimizer) != self.cfg.optimizer:
            raise RecipeError(f"--resume: {ckpt.directory} was trained with --optimizer {state['optimizer_name']}, "
                              f"not {self.cfg.optimizer}; resume with the original optimizer")
        self.repan_active = bool(state["repan_active"])
        self.history = list(state["history"])
        self.cycle_log = list(state["cycle_log"])
        self._rebuild()
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"--resume: the optimiser state in {ckpt.directory} does not fit this model "
                                  f"({exc}); resume with the options of the original run") from exc
        per_rank = state.get("rng_per_rank") or []
        same_world = len(per_rank) == self.ctx.world_size
        restore_rng_state(per_rank[self.ctx.rank] if same_world else state["rng"], self.generator)
        cycle, epoch = state["progress"]["cycle"], state["progress"]["epoch"]
        self.start = (cycle, epoch + 1) if epoch < self.cfg.epochs else (cycle + 1, 1)
        self.log(f"resumed from {ckpt.directory} (cycle {cycle}, epoch {epoch})")

    def save(self, cycle: int, epoch: int) -> None:
        progress = self._progress(cycle, epoch)
        rng = rng_state(self.generator)
        per_rank = [rng]
        if self.ctx.distributed:  # every process resumes its own random stream (augmentation)
            import torch.distributed as dist

            per_rank = [None] * self.ctx.world_size
            dist.all_gather_object(per_rank, rng)
        state = {"optimizer": self.optimizer.state_dict(), "optimizer_name": self.cfg.optimizer,
                 "rng": rng, "rng_per_rank": per_rank, "progress": progress,
                 "history": self.history, "cycle_log": _jsonable(self.cycle_log), "repan_active": self.repan_active}
        if self.ctx.is_main:
            self.checkpointer.save(self.model, state, tag=f"ep{progress['global_epoch']:04d}",
                                   architecture=self.model.pretrained_cfg["architecture"], metadata=self._metadata())
        self.ctx.barrier()

    def _metadata(self) -> Dict[str, Any]:
        return {"detector_config": self.dcfg.as_dict(), "categories": self.categories.as_dict()}

    def log(self, text: str) -> None:
        if self.ctx.is_main:
            print(f"[finetune] {text}", flush=True)

    # -- the loop ------------------------------------------------------------------------------
    def calibration_images(self, cycle: int) -> List[torch.Tensor]:
        """Training images without augmentation, the same on every process: a permutation seeded
        by (seed, cycle)."""
        n = min(len(self.calib_set), self.cfg.calib_batches * self.cfg.calib_batch_size)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + cycle)
        order = torch.randperm(len(self.calib_set), generator=gen)[:n].tolist()
        return [self.calib_set[i][0] for i in order]

    def restart(self, cycle: int) -> None:
        figures = repan_restart(
            self.model, self.calibration_images(cycle), generator=self.generator, expansion=self.cfg.expansion,
            calib_batch_size=self.cfg.calib_batch_size,
        )
        self.repan_active = True
        self.cycle_log.append({"cycle": cycle, "step": "rep+expand+restore+calibrate", **figures})
        self.log(f"cycle {cycle}: Rep → Expand → Restore → Calibrate, feature rel. error {figures['cycle_rel_error']:.2e}")

    def train_epoch(self, cycle: int, epoch: int) -> Dict[str, Any]:
        cfg = self.cfg
        progress = self._progress(cycle, epoch)
        self.sampler.set_epoch(progress["global_epoch"])
        self._train_mode()
        total = cfg.epochs * self.steps_per_epoch
        sums: Dict[str, float] = {}
        seen, lam, lr, start = 0, None, cfg.lr, time.time()
        bar = None
        if cfg.progress and self.ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"cycle {cycle} epoch {epoch}", leave=False, dynamic_ncols=True)
        for step, (images, targets) in enumerate(self.loader, start=1):
            if step > self.steps_per_epoch:
                break
            global_step = (epoch - 1) * self.steps_per_epoch + step - 1
            lr = cosine_lr(global_step, total, cfg.lr, warmup=min(cfg.warmup_steps, total - 1), floor=cfg.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.repan_active:
                lam = self.lam_schedule.value(cycle, epoch, cfg.epochs, step, self.steps_per_epoch)
                set_lambda(self.model, lam, only_train_form=True)
            images = [img.to(self.device) for img in images]
            targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets]
            losses = self.ddp(images, targets)
            loss = sum(losses.values())
            if self.ctx.any_true(not torch.isfinite(loss).item()):
                raise TrainingDivergedError(
                    f"the detection loss became {loss.item()} at cycle {cycle}, epoch {epoch}, step {step}; lower --lr "
                    f"(now {cfg.lr}) or --clip-grad, then --resume from the last checkpoint",
                    cycle=cycle, epoch=epoch, step=step, checkpoint=str(self.checkpointer.latest_dir() or ""),
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            seen += 1
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.2e}", lam="-" if lam is None else f"{lam:.2f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        totals = self.ctx.all_sum([sums[k] for k in sorted(sums)] + [seen])
        count = max(totals[-1], 1.0)
        row = {**progress, "lr": lr, "lam": lam, "steps": seen, "epoch_time_s": time.time() - start}
        row.update({f"train_{k}": v / count for k, v in zip(sorted(sums), totals[:-1])})
        return row

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        return evaluate_detector(model, self.val_set, device=self.device, batch_size=self.cfg.eval_batch_size,
                                 rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.cfg.workers,
                                 progress=self.cfg.progress)

    def train(self) -> None:
        cfg = self.cfg
        cycle0, epoch0 = self.start
        if self.optimizer is None:
            self._rebuild()
        for cycle in range(cycle0, cfg.cycles + 1):
            first = epoch0 if cycle == cycle0 else 1
            if first == 1 and cycle > 1:
                self.restart(cycle)
                self._rebuild()
            for epoch in range(first, cfg.epochs + 1):
                row = self.train_epoch(cycle, epoch)
                last = cycle == cfg.cycles and epoch == cfg.epochs
                if last or row["global_epoch"] % max(1, cfg.eval_every) == 0:
                    metrics = self.evaluate(self.model)
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                self.history.append(row)
                self.log(_row_text(row))
                self.save(cycle, epoch)
                if self.ctx.is_main:
                    write_json(self.out / "metrics.json", self.history)

    # -- the deploy detector -------------------------------------------------------------------
    def finish(self) -> Dict[str, Any]:
        cfg = self.cfg
        trained = self.model
        images = [img.to(self.device) for img in self.eval_images]
        deploy = reparameterize(trained, inplace=False, verify=True, example_input=images)
        exactness = dict(deploy.repan_exactness)
        agreement = compare_detectors(trained, deploy, images)
        deploy_metrics = self.evaluate(deploy)
        final: Dict[str, Any] = {
            "detector_config": self.dcfg.as_dict(),
            "recipe": cfg.as_dict(),
            "categories": self.categories.as_dict(),
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "epochs_trained": len(self.history),
            "val_train_form": {k[4:]: v for k, v in self.history[-1].items() if k.startswith("val_")},
            "val_deploy": deploy_metrics,
            "exactness": {"reparameterize": exactness, "train_vs_deploy": agreement,
                          "detections_match": detections_match(agreement, max_flips=NEAR_TIE_FLIPS)},
            "cycles": _jsonable(self.cycle_log),
            "train_time_s": sum(r["epoch_time_s"] for r in self.history),
        }
        if self.ctx.is_main:
            path = self.out / "deploy.safetensors"
            deploy.repan_exactness = exactness
            save_checkpoint(deploy, path, architecture=deploy.pretrained_cfg["architecture"],
                            metadata={**self._metadata(), "metrics": {"val": deploy_metrics}})
            reloaded, _ = load_detector(str(path), device=str(self.device))
            reload = compare_detectors(deploy, reloaded, images)
            final["checkpoint"] = path.name
            final["reload_check"] = {**reload, "ok": detections_match(reload, tolerance=0.0)}
            if not final["reload_check"]["ok"]:
                raise CheckpointError(f"{path}: the reloaded detector differs from the saved one: {reload}")
            for fmt in cfg.export:
                from .export import export_detector

                suffix = "pt" if fmt == "torchscript" else "onnx"
                report = export_detector(deploy.cpu(), self.out / f"deploy.{suffix}", fmt=fmt,
                                         images=[img.cpu() for img in images])
                final.setdefault("exports", {})[fmt] = report
                deploy.to(self.device)
            write_json(self.out / "final.json", final)
            self.log(f"deploy detector: val mAP {deploy_metrics['mAP']:.4f} (train form "
                     f"{final['val_train_form'].get('mAP', float('nan')):.4f}), feature rel. error "
                     f"{agreement['feature_rel_error']:.2e}, detections match: {final['exactness']['detections_match']}"
                     f" → {path}")
        self.ctx.barrier()
        return final


def _row_text(row: Dict[str, Any]) -> str:
    lam = "-" if row.get("lam") is None else f"{row['lam']:.2f}"
    text = f"cycle {row['cycle']} epoch {row['epoch']}: loss {row.get('train_loss', float('nan')):.4f} λ {lam}"
    if "val_mAP" in row:
        text += f"  val mAP {row['val_mAP']:.4f} mAP50 {row['val_mAP50']:.4f}"
    return text + f"  ({row['epoch_time_s']:.1f}s)"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Run (or resume) a fine-tuning run; returns the content of ``final.json``."""
    from ..runlock import RunLock

    cfg.check()
    ctx = init_distributed(cfg.device)
    lock = RunLock(cfg.out, command="repan-detect")
    run = None
    try:
        torch.manual_seed(cfg.seed + ctx.rank)
        if ctx.is_main:
            lock.acquire()  # one writer per run directory
            if cfg.resume:
                remove_stale_temps(cfg.out)  # left by a killed write; this process is the only writer
        if not cfg.resume and Checkpointer(Path(cfg.out)).exists():
            raise RecipeError(f"{cfg.out} already holds a run (checkpoints/latest.json); pass --resume to continue "
                              "it or choose a new --out")
        run = _Run(cfg, ctx)
        if cfg.resume:
            run.resume()  # reads only: a resume refused for other options leaves config.json as it was
        if ctx.is_main:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            write_json(Path(cfg.out) / "config.json", cfg.as_dict())
        run.train()
        return run.finish()
    finally:
        lock.release(discard_dir=run is None)
        ctx.close()

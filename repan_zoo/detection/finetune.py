"""Detection fine-tuning of a RepAn backbone: unfold → (RepAn cycles) → reparameterize.

:func:`run_finetune` is the engine behind ``repan-detect`` (``train_scripts/finetune_detection.py``,
:mod:`repan_zoo.detection.cli`). It is the detection task of the one Algorithm-1 driver,
:class:`repan_zoo.annealing.cycles.CycleRun`, which owns the cycles, λ and learning rate per
step, the non-finite stop, checkpoints and resume; this module supplies the detector, its loss,
COCO mAP, calibration inputs and the deploy detector:

1. read the COCO-format splits (:class:`~repan_zoo.detection.coco.CocoDetectionSet`), build the
   detector (:func:`~repan_zoo.detection.detectors.build_detector`) on the backbone, from its
   deploy checkpoint (``--backbone-checkpoint``) or the hub (``--pretrained``);
2. with ``unfold``: Expand + Restore → Calibrate the backbone (the driver's cycle 1 start, λ=0,
   the function is unchanged); with ``cycles > 1`` every later cycle starts with Rep →
   Expand + Restore → Calibrate on detection images as the backbone sees them
   (:func:`~repan_zoo.detection.rep.calibration_batches`; Algorithm 1 lines 2–6), λ rising by
   Θ(r, e) (:class:`repan_zoo.annealing.LambdaSchedule`, per iteration) and the learning rate
   restarting (cosine per cycle);
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

from ..annealing.cycles import CyclePlan, CycleRun
from ..annealing.schedules import LambdaSchedule
from ..checkpoint import load_into, metadata_json, model_form, read_checkpoint, save_checkpoint
from ..convert import reparameterize
from ..errors import CheckpointError, RecipeError
from ..fileio import remove_stale_temps, write_verified
from ..runtime.checkpointing import Checkpointer, RunCheckpoint
from ..runtime.distributed import DistContext, init_distributed
from ..runtime.report import write_json
from ..verify import eval_mode, exact_fp32
from .coco import CategoryMap, CocoDetectionSet, collate, load_coco_json
from .compare import NEAR_TIE_FLIPS, compare_detectors, detections_match
from .detectors import DetectorConfig, build_detector
from .evaluate import evaluate_detector
from .config import FinetuneConfig
from .rep import calibration_batches, unfold_backbone

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
class _Run(CycleRun):
    """Detection fine-tuning as a task of the one Algorithm-1 driver
    (:class:`~repan_zoo.annealing.cycles.CycleRun`): the detector, its loss, COCO mAP, calibration
    on detection images as the backbone sees them, and the deploy detector."""

    def __init__(self, cfg: FinetuneConfig, ctx: DistContext):
        self._init_cycles()
        self.cfg = cfg
        self.ctx = ctx
        self.out = Path(cfg.out)
        self.device = ctx.device
        self.checkpointer = Checkpointer(self.out, keep=2, resume_command="repan-detect")
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.lam_schedule = LambdaSchedule(cfg.lam_schedule, cfg.lam_start, cfg.lam_end, cfg.lam_warmup, per_iter=True)
        self.sync_bn = cfg.sync_bn and ctx.distributed
        self.clip_grad, self.min_lr, self.progress = cfg.clip_grad, cfg.min_lr, cfg.progress
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
        self.model.to(self.device)
        per_rank, rem = divmod(cfg.batch_size, ctx.world_size)
        if rem or per_rank < 1:
            raise RecipeError(f"--batch-size {cfg.batch_size} is not divisible over {ctx.world_size} processes")
        self.sampler = DistributedSampler(self.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
        self.loader = DataLoader(self.train_set, batch_size=per_rank, sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.workers, drop_last=False)
        full = len(self.loader)
        self._steps_per_epoch = min(full, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else full

    # -- driver hooks: the model ---------------------------------------------------------------
    def cycle_plan(self) -> List[CyclePlan]:
        """Cycle 1 expands with ``--unfold`` (Expand + Restore → Calibrate on detection images;
        without it the deploy backbone trains as fused convs); every later cycle starts with
        Rep → Expand + Restore → Calibrate."""
        cfg = self.cfg
        return [CyclePlan(1, cfg.unfold, cfg.epochs)] + [CyclePlan(r, True, cfg.epochs) for r in range(2, cfg.cycles + 1)]

    def initialise(self) -> nn.Module:
        return self.model  # built in __init__ (the data's categories shape it)

    def model_from_checkpoint(self, ck: RunCheckpoint) -> nn.Module:
        saved = metadata_json(ck.model_meta, "detector_config") if "detector_config" in ck.model_meta else {}
        if saved and saved != self.dcfg.as_dict():
            diff = sorted(k for k in set(saved) | set(self.dcfg.as_dict()) if saved.get(k) != self.dcfg.as_dict().get(k))
            raise RecipeError(f"--resume: the detector in {ck.directory} differs in {diff}; resume with the options "
                              "of the original run")
        if ck.state.get("optimizer_name", self.cfg.optimizer) != self.cfg.optimizer:
            raise RecipeError(f"--resume: {ck.directory} was trained with --optimizer {ck.state['optimizer_name']}, "
                              f"not {self.cfg.optimizer}; resume with the original optimizer")
        if ck.model_meta.get("form") == "train" and model_form(self.model) == "deploy":
            unfold_backbone(self.model, inplace=True)  # the structure comes from the checkpoint's metadata
        load_into(self.model, ck.model_state, ck.model_meta, what=str(ck.directory))
        self.model.to(self.device)
        return self.model

    def prepare(self) -> None:
        if self.ctx.is_main:  # after a resume's checks: a refused resume leaves config.json as it was
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", self.cfg.as_dict())

    def expansion_groups(self):
        return [(self.cfg.expansion, None)]

    @torch.no_grad()
    def eval_outputs(self) -> Tuple[torch.Tensor, ...]:
        """The FPN levels of the backbone on the first validation images (eval mode, fp32)."""
        with eval_mode(self.model), exact_fp32():
            batch, _ = self.model.transform([img.to(self.device) for img in self.eval_images])
            features = self.model.backbone(batch.tensors)
            return tuple(features[k].detach().float().clone() for k in features)

    def calibration(self, cycle: int) -> Tuple[nn.Module, List[torch.Tensor]]:
        """Training images without augmentation as the backbone sees them (normalised, resized,
        padded by the detector's transform), the same on every process: a permutation seeded by
        (seed, cycle). Cycle 1 too: a backbone from deploy weights has no BN statistics to keep (its
        BNs are restored with μ = 0, σ = 1), and training mode would otherwise normalise with the
        batch statistics and start from another function."""
        body = self.model.backbone.body
        if self.cfg.calib_batches <= 0:
            return body, []
        n = min(len(self.calib_set), self.cfg.calib_batches * self.cfg.calib_batch_size)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + cycle)
        order = torch.randperm(len(self.calib_set), generator=gen)[:n].tolist()
        return body, calibration_batches(self.model, [self.calib_set[i][0] for i in order], self.cfg.calib_batch_size)

    # -- driver hooks: training ---------------------------------------------------------------
    def make_optimizer(self, cycle: int) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.wd)
        # RetinaNet's focal loss barely moves under SGD in short CPU runs; AdamW trains it in a few epochs
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.wd)

    def peak_lr(self, cycle: int) -> float:
        return self.cfg.lr

    def warmup_steps(self, steps_per_epoch: int, total: int) -> int:
        return min(self.cfg.warmup_steps, total - 1)

    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    def epoch_batches(self, cp: CyclePlan, epoch: int, global_epoch: int):
        self.sampler.set_epoch(global_epoch)
        return self.loader

    def train_mode(self, net: nn.Module) -> None:
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step_loss(self, net: nn.Module, batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, targets = batch
        images = [img.to(self.device) for img in images]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets]
        losses = net(images, targets)
        loss = sum(losses.values())
        figures = {name: float(value.detach()) for name, value in losses.items()}
        figures["loss"] = float(loss.detach())
        return loss, figures

    def end_epoch(self, cp: CyclePlan, epoch: int, global_epoch: int, steps: int, sums: Dict[str, float],
                  lr: Optional[float], started: float) -> Dict[str, Any]:
        cfg = self.cfg
        totals = self.ctx.all_sum([sums[k] for k in sorted(sums)] + [steps])
        count = max(totals[-1], 1.0)
        lam = (self.lam_schedule.value(cp.index, epoch, cp.epochs, steps, self._steps_per_epoch)
               if cp.expand and steps else None)
        row = {"cycle": cp.index, "epoch": epoch, "global_epoch": global_epoch, "lr": lr if steps else cfg.lr,
               "lam": lam, "steps": steps, "epoch_time_s": time.perf_counter() - started}
        row.update({f"train_{k}": v / count for k, v in zip(sorted(sums), totals[:-1])})
        last = cp.index == cfg.cycles and epoch == cfg.epochs
        if last or global_epoch % max(1, cfg.eval_every) == 0:
            row.update({f"val_{k}": v for k, v in self.evaluate(self.model).items()})
        self.log(_row_text(row))
        return row

    def after_epoch_saved(self) -> None:
        if self.ctx.is_main:
            write_json(self.out / "metrics.json", self.history)

    def checkpoint_identity(self) -> Tuple[str, Dict[str, Any]]:
        return self.model.pretrained_cfg["architecture"], self._metadata()

    def checkpoint_extra(self) -> Dict[str, Any]:
        return {"optimizer_name": self.cfg.optimizer, "cycle_log": _jsonable(self.cycle_log)}

    def _metadata(self) -> Dict[str, Any]:
        return {"detector_config": self.dcfg.as_dict(), "categories": self.categories.as_dict()}

    def log(self, text: str) -> None:
        if self.ctx.is_main:
            print(f"[finetune] {text}", flush=True)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        return evaluate_detector(model, self.val_set, device=self.device, batch_size=self.cfg.eval_batch_size,
                                 rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.cfg.workers,
                                 progress=self.cfg.progress)

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

        def write_outputs() -> None:  # the main process; a failure stops every process (DistContext.on_main)
            path = self.out / "deploy.safetensors"
            deploy.repan_exactness = exactness

            def reload_check(written: Path) -> Dict[str, Any]:
                reloaded, _ = load_detector(str(written), device=str(self.device))
                reload = compare_detectors(deploy, reloaded, images)
                if not detections_match(reload, tolerance=0.0):
                    raise CheckpointError(f"{written}: the reloaded detector differs from the saved one: {reload}; "
                                          "so it is not the run's deploy.safetensors (kept under this name for "
                                          "inspection). Please report it with the backbone and recipe")
                return {**reload, "ok": True}

            final["reload_check"] = write_verified(path, lambda p: save_checkpoint(
                deploy, p, architecture=deploy.pretrained_cfg["architecture"],
                metadata={**self._metadata(), "metrics": {"val": deploy_metrics}}), reload_check)
            final["checkpoint"] = path.name
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

        self.ctx.on_main(write_outputs, "writing the deploy detector and final.json")
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
        checkpointer = Checkpointer(Path(cfg.out))
        if cfg.resume and not checkpointer.exists():  # before the run is built: the lock's new folder goes again
            raise CheckpointError(f"--resume: {checkpointer.pointer} does not exist; start the run without --resume")
        if not cfg.resume and checkpointer.exists():
            raise RecipeError(f"{cfg.out} already holds a run (checkpoints/latest.json); pass --resume to continue "
                              "it or choose a new --out")
        run = _Run(cfg, ctx)
        return run.run(resume=cfg.resume)
    finally:
        lock.release(discard_dir=run is None)
        ctx.close()

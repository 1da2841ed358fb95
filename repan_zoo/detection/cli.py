"""Command line of detection fine-tuning (``train_scripts/finetune_detection.py`` wraps :func:`main`).

Examples::

    # the Fashion-MNIST canvas set (COCO format), then RetinaNet on a RepVGG-A0 0.25× backbone
    python train_scripts/make_fmnist_detection.py --out data/fmnist_det
    python train_scripts/finetune_detection.py --data-root data/fmnist_det --out runs/det \\
        --detector retinanet --backbone repan_repvgg_a0_w025 \\
        --backbone-checkpoint runs/a0/deploy.safetensors --unfold --epochs 6

    # RepAn on the detection task: 3 cycles of Rep → Expand → Restore → Calibrate → train
    python train_scripts/finetune_detection.py ... --unfold --cycles 3 --epochs 2

    # two processes (gloo on CPU); --batch-size is the global batch
    torchrun --standalone --nproc_per_node 2 train_scripts/finetune_detection.py ...

    # continue a killed run from its last completed epoch (same options)
    python train_scripts/finetune_detection.py ... --resume

Data: ``--data-root DIR`` means ``DIR/train/images`` + ``DIR/train/instances.json`` and
``DIR/val/images`` + ``DIR/val/instances.json`` (the layout ``make_fmnist_detection.py`` writes);
``--train-images/--train-annotations/--val-images/--val-annotations`` name other files.

Outputs in ``--out``: ``config.json``, ``checkpoints/`` (every epoch, atomic; ``--resume``),
``metrics.json`` (per epoch: losses, λ, lr, COCO mAP / mAP50 / ... on the validation split),
``deploy.safetensors`` (the reparameterized detector; :func:`repan_zoo.detection.load_detector`),
``final.json`` (mAP of the train form and of the deploy form, the exactness of the conversion,
the reload check) and, with ``--export``, ``deploy.pt`` / ``deploy.onnx``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..cli_types import (
    OneLineParser, check_model_name, csv_list, device, int_list, json_dict, number, writable_dir_problem,
)

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .config import FinetuneConfig

    d = FinetuneConfig(out="", train_images="", train_annotations="", val_images="", val_annotations="")
    p = OneLineParser(
        prog="finetune_detection.py",
        description="Fine-tune a torchvision RetinaNet / Faster R-CNN on a RepAn backbone (COCO-format data), "
                    "then reparameterize it for deployment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data (COCO format)")
    g.add_argument("--data-root", default=None, help="folder with train/ and val/ (images/ + instances.json each)")
    g.add_argument("--train-images", default=None)
    g.add_argument("--train-annotations", default=None)
    g.add_argument("--val-images", default=None)
    g.add_argument("--val-annotations", default=None)
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip, help="random horizontal flip")

    g = p.add_argument_group("detector and backbone")
    g.add_argument("--detector", choices=("retinanet", "fasterrcnn"), default=d.detector)
    g.add_argument("--backbone", default=d.backbone, help="a repan_* timm model (timm.list_models('repan_*'))")
    g.add_argument("--backbone-checkpoint", default=None,
                   help="typed safetensors of the backbone classifier, e.g. repan-train's deploy.safetensors")
    g.add_argument("--pretrained", action="store_true", help="the hub's weights for the backbone")
    g.add_argument("--model-kwargs", type=json_dict, default={},
                   help="JSON kwargs for timm.create_model, e.g. '{\"width_mult\": 0.25, \"in_chans\": 1}'")
    g.add_argument("--out-indices", type=int_list, default=None,
                   help="feature levels for the FPN (default: the last three)")
    g.add_argument("--fpn-channels", type=number(int, 1), default=d.fpn_channels)
    g.add_argument("--min-size", type=number(int, 1), default=None, help="resize bound (default: the first image's short side)")
    g.add_argument("--max-size", type=number(int, 1), default=None, help="resize bound (default: the first image's long side)")
    g.add_argument("--anchor-scale", type=number(float, 0.0, lo_open=True), default=d.anchor_scale, help="anchor size = scale × level stride")
    g.add_argument("--score-thresh", type=number(float, 0.0, 1.0), default=d.score_thresh, help="detections below are dropped")
    g.add_argument("--detections-per-img", type=number(int, 1), default=d.detections_per_img)

    g = p.add_argument_group("RepAn (unfold, cycles on the detection task)")
    g.add_argument("--unfold", action="store_true",
                   help="Expand + Restore the backbone before fine-tuning (repan_zoo.unfold, λ=0: same function)")
    e = d.expansion
    g.add_argument("--branches", type=csv_list, default=list(e.branches), help="new branch kinds per Rep block")
    g.add_argument("--k", type=number(int, 0, 5), default=e.k, help="new branches per kind and block")
    g.add_argument("--restore", default=e.restore, help="inverse of Eq. 2: inherit | normalized | identity | a registered rule")
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=e.residual,
                   help="also add the residual BN branch of Eq. 3 where shapes allow")
    g.add_argument("--branch-gamma", type=number(float, 0.0), default=e.branch_gamma, help="γ of the new branches' output BN")
    g.add_argument("--cycles", type=number(int, 1), default=d.cycles,
                   help="RepAn cycles R; cycles 2..R start with Rep → Expand → Restore → Calibrate")
    g.add_argument("--lam-schedule", default=d.lam_schedule, help="Θ: constant | linear | cosine | step")
    g.add_argument("--lam-start", type=number(float, 0.0, 1.0), default=d.lam_start)
    g.add_argument("--lam-end", type=number(float, 0.0, 1.0), default=d.lam_end)
    g.add_argument("--lam-warmup", type=number(float, 0.0, 1.0), default=d.lam_warmup, help="fraction of a cycle over which λ rises")
    g.add_argument("--calib-batches", type=number(int, 0), default=d.calib_batches, help="batches for BN calibration")
    g.add_argument("--calib-batch-size", type=number(int, 1), default=d.calib_batch_size)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), default=d.epochs, help="epochs per cycle")
    g.add_argument("--batch-size", type=number(int, 1), default=d.batch_size, help="global batch (split over processes)")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    g.add_argument("--lr", type=number(float, 0.0, lo_open=True), default=d.lr, help="peak learning rate (cosine per cycle)")
    g.add_argument("--min-lr", type=number(float, 0.0), default=d.min_lr)
    g.add_argument("--warmup-steps", type=number(int, 0), default=d.warmup_steps, help="linear LR warmup at each cycle start")
    g.add_argument("--momentum", type=number(float, 0.0, 1.0, hi_open=True), default=d.momentum, help="SGD momentum")
    g.add_argument("--wd", type=number(float, 0.0), default=d.wd, help="weight decay")
    g.add_argument("--clip-grad", type=number(float, 0.0), default=d.clip_grad, help="gradient-norm clip (0: off)")
    g.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed while training")
    g.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm over processes")
    g.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=d.seed)
    g.add_argument("--max-steps-per-epoch", type=number(int, 1), default=None, help="cap steps per epoch (smoke runs, tests)")

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    g.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument("--workers", type=number(int, 0), default=d.workers, help="DataLoader worker processes")
    g.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads per process")
    g.add_argument("--eval-batch-size", type=number(int, 1), default=d.eval_batch_size)
    g.add_argument("--eval-every", type=number(int, 1), default=d.eval_every, help="evaluate mAP every N epochs (and at the end)")
    g.add_argument("--export", type=csv_list, default=[], help="export the deploy detector: torchscript,onnx")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    return p


def _data_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Dict[str, str]:
    root = Path(args.data_root) if args.data_root else None
    paths = {
        "train_images": args.train_images or (root / "train" / "images" if root else None),
        "train_annotations": args.train_annotations or (root / "train" / "instances.json" if root else None),
        "val_images": args.val_images or (root / "val" / "images" if root else None),
        "val_annotations": args.val_annotations or (root / "val" / "instances.json" if root else None),
    }
    missing = ["--" + k.replace("_", "-") for k, v in paths.items() if v is None]
    if missing:
        parser.error(f"give --data-root DIR, or {', '.join(missing)}")
    return {k: str(v) for k, v in paths.items()}


def config_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None):
    from ..expansion import Expansion
    from .config import FinetuneConfig

    parser = parser or build_parser()
    return FinetuneConfig(
        out=args.out, **_data_paths(args, parser), detector=args.detector, backbone=args.backbone,
        backbone_checkpoint=args.backbone_checkpoint, pretrained=args.pretrained, model_kwargs=args.model_kwargs,
        out_indices=args.out_indices, fpn_channels=args.fpn_channels, min_size=args.min_size, max_size=args.max_size,
        anchor_scale=args.anchor_scale, score_thresh=args.score_thresh, detections_per_img=args.detections_per_img,
        unfold=args.unfold, expansion=Expansion(branches=args.branches, k=args.k, restore=args.restore,
                                                residual=args.residual, branch_gamma=args.branch_gamma),
        cycles=args.cycles, lam_schedule=args.lam_schedule, lam_start=args.lam_start,
        lam_end=args.lam_end, lam_warmup=args.lam_warmup, calib_batches=args.calib_batches,
        calib_batch_size=args.calib_batch_size, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, momentum=args.momentum, wd=args.wd,
        clip_grad=args.clip_grad or None, freeze_bn=args.freeze_bn, sync_bn=args.sync_bn, flip=args.flip,
        seed=args.seed, max_steps_per_epoch=args.max_steps_per_epoch, resume=args.resume, device=args.device,
        workers=args.workers, eval_batch_size=args.eval_batch_size, eval_every=args.eval_every,
        progress=args.progress, export=args.export,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    from ..errors import RepanError
    from .finetune import run_finetune

    parser = build_parser()
    args = parser.parse_args(argv)
    problem = writable_dir_problem(args.out)
    if problem:
        parser.error(f"argument --out: {problem}")
    if args.min_lr > args.lr:
        parser.error(f"argument --min-lr: {args.min_lr:g} is above --lr {args.lr:g}; use --min-lr ≤ --lr")
    if args.backbone_checkpoint and not Path(args.backbone_checkpoint).is_file():
        parser.error(f"argument --backbone-checkpoint: {args.backbone_checkpoint}: no such file")
    try:
        check_model_name(args.backbone, "--backbone")
    except (ValueError, RepanError) as exc:
        parser.error(str(exc))
    try:
        cfg = config_from_args(args, parser)
    except RepanError as exc:  # an invalid expansion (e.g. an unknown --restore rule)
        parser.error(str(exc))
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        final = run_finetune(cfg)
    except RepanError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    if final and int(os.environ.get("RANK", "0")) == 0:
        deploy = final.get("val_deploy", {})
        print(json.dumps({"val_mAP_deploy": deploy.get("mAP"), "val_mAP50_deploy": deploy.get("mAP50"),
                          "detections_match": final["exactness"]["detections_match"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

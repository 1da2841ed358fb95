"""COCO mAP of a detector with pycocotools (``COCOeval``, bbox), single- or multi-process.

Under ``torchrun`` every process predicts a disjoint share of the images (no padding, so no
image is scored twice), the detections are gathered on rank 0, which runs ``COCOeval`` and
shares the metrics with every process.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..extras import require_extra
from ..verify import eval_mode
from .coco import CocoDetectionSet, collate

__all__ = ["COCO_STATS", "predict", "coco_map", "evaluate_detector"]

#: names of ``COCOeval.stats`` (bbox), in order.
COCO_STATS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@torch.no_grad()
def predict(detector: nn.Module, loader: DataLoader, dataset: CocoDetectionSet, device: torch.device,
            progress: bool = False) -> List[Dict[str, Any]]:
    """COCO result entries (``image_id``, ``category_id``, ``bbox`` as x, y, w, h, ``score``)."""
    results: List[Dict[str, Any]] = []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    with eval_mode(detector):
        for images, targets in it:
            outputs = detector([img.to(device) for img in images])
            for out, target in zip(outputs, targets):
                boxes = out["boxes"].double().cpu()
                xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
                for box, score, label in zip(xywh.tolist(), out["scores"].tolist(), out["labels"].tolist()):
                    if label < 1 or label > len(dataset.categories.category_ids):
                        continue  # the background label never names a category
                    results.append({
                        "image_id": int(target["image_id"]),
                        "category_id": dataset.categories.category(label),
                        "bbox": [round(v, 3) for v in box],
                        "score": round(float(score), 5),
                    })
    return results


def coco_map(coco_gt: Any, results: List[Dict[str, Any]],
             image_ids: Optional[List[int]] = None) -> Dict[str, Optional[float]]:
    """``COCOeval`` (bbox) of ``results`` against ``coco_gt``: the 12 standard figures
    (:data:`COCO_STATS`), each in [0, 1], or ``None`` where COCOeval cannot define it (its -1: no
    ground-truth box in that area range, e.g. ``mAP_large`` on a set of small objects). No detection
    at all scores 0 on every defined figure. Without pycocotools (the ``detection`` extra):
    :class:`~repan_zoo.errors.MissingExtraError`."""
    require_extra("detection", "COCO mAP (pycocotools' COCOeval)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes needs one result at least: an empty detection set scores the same way
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: None if v < 0 else float(v) for name, v in zip(COCO_STATS, ev.stats)}


def evaluate_detector(detector: nn.Module, dataset: CocoDetectionSet, *, device: torch.device,
                      batch_size: int = 16, rank: int = 0, world_size: int = 1, workers: int = 0,
                      progress: bool = False) -> Dict[str, Any]:
    """:func:`coco_map` of ``detector`` on ``dataset`` (``None`` where undefined) and the number of
    ``detections``; every process must call it when ``world_size > 1``."""
    share = Subset(dataset, list(range(rank, len(dataset), world_size)))
    loader = DataLoader(share, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
    results = predict(detector, loader, dataset, device, progress=progress and rank == 0)
    if world_size > 1:
        gathered: List[Any] = [None] * world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics = coco_map(dataset.coco, results, image_ids=list(dataset.ids)) if rank == 0 else {}
    if world_size > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    metrics["detections"] = len(results)
    return metrics

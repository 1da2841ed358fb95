"""How close two detectors are: their dense features (exact up to fp32 rounding after a
conversion) and their detections (equal up to the order NMS gives near-ties).

A fused and an unfused detector compute the same function up to fp32 rounding (Eq. 1–2),
but the last steps of a detector are discrete: top-k, score thresholds, NMS. A 1e-7 change
may reorder two near-equal scores or, rarely, swap which of two near-equal boxes survives.
So the features are compared directly (relative error, :func:`repan_zoo.verify.relative_error`)
and the detections as sets: each reference detection is matched to the closest unmatched
detection of the same label.

FPN maps are compared point by point, without the averaging a classifier's pooling does, so
over a deep backbone the fp32 forward of the *reference itself* may drift several 1e-6 from
its float64 value. :func:`compare_detectors` measures that drift (``feature_noise``: the
reference's fp32 features against a float64 copy of it) and :func:`detections_match` accepts a
difference up to ``max(tolerance, 2 · feature_noise)``: the converted detector must be as close
to the exact function as fp32 arithmetic lets the reference be. Where a run (not a test on a
controlled input) compares detections, :data:`NEAR_TIE_FLIPS` of them may differ by a near-tie.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Sequence

import torch
import torch.nn as nn

from ..verify import eval_mode, relative_error, weights_device_dtype

__all__ = ["NEAR_TIE_FLIPS", "feature_error", "feature_noise", "match_detections", "compare_detectors", "detections_match"]


@torch.no_grad()
def feature_error(ref: nn.Module, new: nn.Module, images: Sequence[torch.Tensor]) -> float:
    """Max relative error over the FPN levels of two detectors on the same (transformed) batch."""
    dev_a, dev_b = next(ref.parameters()).device, next(new.parameters()).device
    with eval_mode(ref), eval_mode(new):
        batch, _ = ref.transform([img.to(dev_a) for img in images])
        a = ref.backbone(batch.tensors)
        b = new.backbone(batch.tensors.to(dev_b))
    if list(a) != list(b):
        raise ValueError(f"the detectors' pyramids differ: levels {list(a)} vs {list(b)}")
    return max(relative_error(a[k], b[k]) for k in a)

#: share of detections a fused-vs-unfused or file-vs-torch comparison in a run may see differ
#: because a near-tie at a top-k cut or in NMS went the other way (1 %).
NEAR_TIE_FLIPS = 0.01


def _as_lists(det: Dict[str, torch.Tensor]):
    return det["boxes"].detach().double().cpu(), det["scores"].detach().double().cpu(), det["labels"].detach().cpu()


def match_detections(ref: Sequence[Dict[str, torch.Tensor]], new: Sequence[Dict[str, torch.Tensor]], *,
                     match_tol: float = 1e-3) -> Dict[str, Any]:
    """Compare two lists of torchvision detections (one dict per image) as sets.

    A pair matches when the labels agree and boxes and score differ by at most ``match_tol``
    (boxes: relative to the image's largest reference coordinate), far above fp32 rounding and far
    below the distance to another detection; a reference detection without such a partner (a
    near-tie that went the other way) counts as ``unmatched``.

    Returns ``images``, ``detections`` (reference count), ``count_mismatch`` (images whose
    number of detections differs) and ``count_diff`` (the summed differences), ``unmatched``
    (reference detections with no same-label partner), ``box_rel_error`` (max box coordinate
    difference / max reference coordinate) and ``score_abs_error`` (max score difference) over
    the matched pairs.
    """
    if len(ref) != len(new):
        raise ValueError(f"{len(ref)} reference images but {len(new)} compared ones")
    out = {"images": len(ref), "detections": 0, "count_mismatch": 0, "count_diff": 0, "unmatched": 0,
           "box_rel_error": 0.0, "score_abs_error": 0.0}
    box_diff, box_scale = 0.0, 0.0
    for r, n in zip(ref, new):
        rb, rs, rl = _as_lists(r)
        nb, ns, nl = _as_lists(n)
        out["detections"] += len(rb)
        if len(rb) != len(nb):
            out["count_mismatch"] += 1
            out["count_diff"] += abs(len(rb) - len(nb))
        free = torch.ones(len(nb), dtype=torch.bool)
        scale = max(float(rb.abs().max()) if len(rb) else 0.0, 1.0)
        for i in torch.argsort(rs, descending=True).tolist():
            candidates = torch.nonzero(free & (nl == rl[i])).flatten()
            box_d = (nb[candidates] - rb[i]).abs().amax(dim=1) / scale if len(candidates) else None
            score_d = (ns[candidates] - rs[i]).abs() if len(candidates) else None
            close = (box_d <= match_tol) & (score_d <= match_tol) if len(candidates) else None
            if close is None or not bool(close.any()):
                out["unmatched"] += 1
                continue
            candidates, dist = candidates[close], (box_d + score_d)[close]
            j = int(candidates[int(torch.argmin(dist))])
            free[j] = False
            box_diff = max(box_diff, float((nb[j] - rb[i]).abs().max()))
            out["score_abs_error"] = max(out["score_abs_error"], float((ns[j] - rs[i]).abs()))
        if len(rb):
            box_scale = max(box_scale, float(rb.abs().max()))
    out["box_rel_error"] = box_diff / box_scale if box_scale > 0 else (0.0 if box_diff == 0 else float("inf"))
    return out


@torch.no_grad()
def feature_noise(model: nn.Module, images: Sequence[torch.Tensor]) -> float:
    """Max relative error of ``model``'s FPN features against the same model in float64 (its own
    fp32 rounding; 0 for a float64 model)."""
    device, dtype = weights_device_dtype(model)
    if dtype == torch.float64:
        return 0.0
    exact = copy.deepcopy(model).double()
    with eval_mode(model), eval_mode(exact):
        batch, _ = model.transform([img.to(device=device, dtype=dtype) for img in images])
        a = model.backbone(batch.tensors)
        b = exact.backbone(batch.tensors.double())
    return max(relative_error(b[k], a[k]) for k in a)


@torch.no_grad()
def compare_detectors(ref: nn.Module, new: nn.Module, images: Sequence[torch.Tensor], *,
                      match_tol: float = 1e-3) -> Dict[str, Any]:
    """Features and detections of two detectors on ``images`` (eval mode; flags kept); see
    :func:`feature_error`, :func:`feature_noise` and :func:`match_detections`."""
    dev_a, dev_b = next(ref.parameters()).device, next(new.parameters()).device
    with eval_mode(ref), eval_mode(new):
        a = ref([img.to(dev_a) for img in images])
        b = new([img.to(dev_b) for img in images])
    return {"feature_rel_error": feature_error(ref, new, images), "feature_noise": feature_noise(ref, images),
            **match_detections(a, b, match_tol=match_tol)}


def detections_match(report: Dict[str, Any], *, tolerance: float = 1e-5, max_flips: float = 0.0) -> bool:
    """True when a :func:`compare_detectors` report shows the same features up to
    ``max(tolerance, 2 · feature_noise)`` and the same detections: every reference detection has
    a partner within the matching tolerance (:func:`match_detections`), except at most the
    fraction ``max_flips`` (near-ties at a top-k cut or in NMS that went the other way; 0 demands
    identical sets). The heads amplify the features' rounding (box decoding exponentiates), so
    matched boxes and scores are reported, not bounded by ``tolerance``."""
    bound = max(tolerance, 2.0 * report.get("feature_noise", 0.0))
    flips = report["unmatched"] + report.get("count_diff", 0)
    return report["feature_rel_error"] <= bound and flips <= max_flips * max(report["detections"], 1)

"""The RepAn life cycle of a detector's backbone: unfold for fine-tuning, RepAn cycles on the
detection task, reparameterize for deployment.

All three go through the package's whole-model calls, which find the Rep blocks inside the
detector (``backbone.body``) and leave the FPN and the heads bit-identical:

* :func:`unfold_backbone` — Expand + Restore (Algorithm 1, lines 4–5) with
  :func:`repan_zoo.unfold`: every fused block becomes a trunk conv+BN with new λ-gated
  branches (Eq. 3); at λ=0 the detector computes what it did (verified);
* :func:`repan_restart` — one RepAn cycle start on the detection task: Rep (fuse, Eq. 1–2, 5)
  → Expand + Restore → Calibrate (:func:`repan_zoo.calibrate_bn` on detection images as the
  backbone sees them: normalised, batched and padded by the detector's own transform); λ is
  then raised by the training loop (:func:`repan_zoo.set_lambda` with the trainer's
  Θ(r, e), :class:`repan_zoo.annealing.LambdaSchedule`);
* :func:`repan_zoo.reparameterize` on the detector — the deploy form, in one call.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..convert import calibrate_bn, reparameterize, unfold
from ..expansion import Expansion
from ..verify import eval_mode
from .compare import feature_error

__all__ = ["unfold_backbone", "calibration_batches", "repan_restart"]


def unfold_backbone(
    detector: nn.Module,
    expansion: Union[Expansion, Sequence[str], None] = None,
    *,
    lam: float = 0.0,
    generator: Optional[torch.Generator] = None,
    inplace: bool = False,
    **changes: Any,
) -> nn.Module:
    """:func:`repan_zoo.unfold` of the detector (its backbone's Rep blocks) with ``expansion``
    (default: the paper's; ``changes`` override its fields), verified on the package's probe (seeded images of the detector's
    ``pretrained_cfg['input_size']``). Returns the unfolded detector (a copy unless ``inplace``)."""
    return unfold(detector, expansion, lam=lam, generator=generator, inplace=inplace, **changes)


@torch.no_grad()
def calibration_batches(detector: nn.Module, images: Sequence[torch.Tensor], batch_size: int) -> List[torch.Tensor]:
    """Images as the backbone sees them: normalised, resized, padded into batches by the
    detector's ``GeneralizedRCNNTransform`` (on the detector's device)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    device = next(detector.parameters()).device
    out = []
    with eval_mode(detector):
        for i in range(0, len(images), batch_size):
            batch, _ = detector.transform([img.to(device) for img in images[i:i + batch_size]])
            out.append(batch.tensors)
    return out


def repan_restart(
    detector: nn.Module,
    calib_images: Sequence[torch.Tensor],
    *,
    generator: torch.Generator,
    expansion: Optional[Expansion] = None,
    calib_batch_size: int = 16,
) -> Dict[str, Any]:
    """Start a RepAn cycle on ``detector`` in place: Rep → Expand + Restore → Calibrate.

    λ is 0 afterwards (the detector computes exactly what it computed before, up to fp32
    rounding); the caller raises it with :func:`repan_zoo.set_lambda`. Returns the exactness
    figures of each step: ``rep`` and ``unfold`` (from the verified conversions),
    ``calibrate_rel_error`` (FPN features before/after calibration) and ``cycle_rel_error``
    (before Rep / after Calibrate), both eval mode, on the first calibration images.
    """
    calib = calibration_batches(detector, calib_images, calib_batch_size)
    probe = list(calib_images[: min(4, len(calib_images))])
    reference = _snapshot(detector)
    reparameterize(detector, inplace=True)
    rep_report = dict(getattr(detector, "repan_exactness", {}) or {})
    unfold(detector, expansion, lam=0.0, generator=generator, inplace=True)
    unfold_report = dict(getattr(detector, "repan_exactness", {}) or {})
    before = _snapshot(detector)
    calibrate_bn(detector.backbone.body, calib)
    return {
        "rep": rep_report,
        "unfold": unfold_report,
        "calibrate_rel_error": feature_error(before, detector, probe),
        "cycle_rel_error": feature_error(reference, detector, probe),
    }


def _snapshot(detector: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(detector)


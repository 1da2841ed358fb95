"""The RepAn life cycle of a detector's backbone: unfold for fine-tuning, RepAn cycles on the
detection task, reparameterize for deployment.

All three go through the package's whole-model calls, which find the Rep blocks inside the
detector (``backbone.body``) and leave the FPN and the heads bit-identical:

* :func:`unfold_backbone` — Expand + Restore (Algorithm 1, lines 4–5) with
  :func:`repan_zoo.unfold`: every fused block becomes a trunk conv+BN with new λ-gated
  branches (Eq. 3); at λ=0 the detector computes what it did (verified);
* :func:`calibration_batches` — detection images as the backbone sees them (normalised,
  batched and padded by the detector's own transform), the inputs of Calibrate when a RepAn
  cycle starts on the detection task (the cycle itself is the one Algorithm-1 driver's,
  :class:`repan_zoo.annealing.cycles.CycleRun`, which :mod:`.finetune` runs);
* :func:`repan_zoo.reparameterize` on the detector — the deploy form, in one call.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..convert import unfold
from ..expansion import Expansion
from ..verify import eval_mode

__all__ = ["unfold_backbone", "calibration_batches"]


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

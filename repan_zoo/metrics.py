"""Top-1 accuracy: the one count of correct predictions that the trainer, the benchmarks and the
demo share.

``torch.argmax`` (and ``torch.topk``, so ``timm.utils.accuracy``) take NaN for the largest value:
an image whose logits are NaN at its label's index would count as correct. Here an image with any
non-finite logit is wrong.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

__all__ = ["count_correct", "top1"]


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """How many rows of ``logits`` (N×K) have their largest value at ``labels`` (N, class indices)
    and are finite everywhere."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"count_correct takes N×K logits and N labels, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    hit = (logits.argmax(1) == labels.to(logits.device)) & logits.isfinite().all(1)
    return int(hit.sum())


@torch.no_grad()
def top1(model: Callable[[torch.Tensor], Any], images: torch.Tensor, labels: torch.Tensor, *,
         normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent of ``model`` (in its current mode; any callable returning N×K
    logits, e.g. an INT8 program) on ``images`` (N×C×H×W) and ``labels`` (N), ``batch_size``
    images per forward pass, each batch passed through ``normalize`` first when given. Raises
    ``ValueError`` for no images or a length mismatch."""
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"top1 needs as many labels as images (at least one), got {len(images)} images and "
                         f"{len(labels)} labels")
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        correct += count_correct(model(normalize(x) if normalize is not None else x).float(),
                                 labels[i:i + batch_size])
    return 100.0 * correct / len(images)

"""The inner loop of Algorithm 1 (line 9, "Network training: Train(N, D, N_T)") and evaluation.

One function trains one epoch for every method (baseline, KD, RepAn): what differs between
them is only the plan of cycles around it (:mod:`repan_zoo.annealing.trainer`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .distributed import DistContext

__all__ = ["train_one_epoch", "evaluate", "NonFiniteLoss", "autocast"]


class NonFiniteLoss(Exception):
    """Raised inside the loop when the loss is NaN/inf on any process (``step`` is 1-based)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite loss {value} at step {step}")
        self.step = step
        self.value = value


def autocast(device: torch.device, enabled: bool):
    """Mixed precision: float16 on CUDA, bfloat16 on CPU; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    normalize: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    ctx: DistContext,
    lr_at: Callable[[int], float],
    lam_at: Optional[Callable[[int], Optional[float]]] = None,
    set_lam: Optional[Callable[[float], None]] = None,
    teacher: Optional[nn.Module] = None,
    amp: bool = False,
    scaler: Optional["torch.amp.GradScaler"] = None,
    max_steps: Optional[int] = None,
    clip_grad: Optional[float] = None,
    progress: bool = False,
    desc: str = "train",
) -> Dict[str, float]:
    """Train ``model`` (possibly DDP-wrapped) for one epoch of ``loader``.

    Before step ``s`` (1-based) the learning rate is set to ``lr_at(s)`` and, when given,
    λ to ``lam_at(s)`` (per-iteration Θ). A NaN/inf loss on any process raises
    :class:`NonFiniteLoss` *before* the optimiser touches the weights. Returns the
    all-reduced mean loss, top-1 (%), number of steps and of images.
    """
    model.train()
    device = ctx.device
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    loss_sum = correct = seen = 0.0
    steps = 0
    lam_now: Optional[float] = None
    bar = _progress(loader, total, progress and ctx.is_main, desc)
    for images, labels in bar:
        if steps >= total:
            break
        step = steps + 1
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if lam_at is not None and set_lam is not None:
            value = lam_at(step)
            if value is not None and value != lam_now:
                set_lam(value)
                lam_now = value
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x = normalize(images)
        with autocast(device, amp):
            logits = model(x)
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            loss = loss_fn(logits.float(), labels, teacher_logits)
        value = float(loss.detach())
        if ctx.any_true(not math.isfinite(value)):
            raise NonFiniteLoss(step, value)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        n = labels.shape[0]
        loss_sum += value * n
        correct += float((logits.detach().argmax(1) == labels).sum())
        seen += n
        steps += 1
        if bar is not loader and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", refresh=False)
    loss_sum, correct, seen = ctx.all_sum([loss_sum, correct, seen])
    return {
        "train_loss": loss_sum / max(seen, 1.0),
        "train_top1": 100.0 * correct / max(seen, 1.0),
        "steps": steps,
        "images": int(seen),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, normalize: nn.Module, ctx: DistContext,
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` in eval mode (fp32) over this process's
    shard, all-reduced over the processes."""
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = correct = seen = 0.0
    try:
        for images, labels in _progress(loader, len(loader), progress and ctx.is_main, desc):
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            logits = model(normalize(images)).float()
            loss_sum += float(loss_fn(logits, labels))
            correct += float((logits.argmax(1) == labels).sum())
            seen += labels.shape[0]
    finally:
        model.train(was_training)
    loss_sum, correct, seen = ctx.all_sum([loss_sum, correct, seen])
    return {"loss": loss_sum / max(seen, 1.0), "top1": 100.0 * correct / max(seen, 1.0), "n": int(seen)}

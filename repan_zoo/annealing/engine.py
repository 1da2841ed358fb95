"""The inner loop of Algorithm 1 (line 9, "Network training: Train(N, D, N_T)") and evaluation.

One function trains one epoch for every method (baseline, KD, RepAn): what differs between
them is only the plan of cycles around it (:mod:`repan_zoo.annealing.trainer`).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..metrics import count_correct
from ..runtime.distributed import DistContext

__all__ = ["train_steps", "train_one_epoch", "classification_step", "classification_stats", "evaluate",
           "NonFiniteLoss", "autocast", "autocast_dtype", "precision_name"]


class NonFiniteLoss(Exception):
    """Raised inside the loop when the loss is NaN/inf on any process (``step`` is 1-based;
    ``value`` is this process's loss, None when it was finite here and failed on another process)."""

    def __init__(self, step: int, value: Optional[float]):
        super().__init__(f"non-finite loss {'on another process' if value is None else value} at step {step}")
        self.step = step
        self.value = value


def autocast_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` on ``device``: float16 on CUDA, bfloat16 elsewhere; None when
    disabled (fp32)."""
    if not enabled:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def precision_name(device: torch.device, enabled: bool) -> str:
    """``"fp16"``, ``"bf16"`` or ``"fp32"``: what a training step on ``device`` computes in (recorded
    per epoch: a run resumed on another machine may change it)."""
    dtype = autocast_dtype(device, enabled)
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def autocast(device: torch.device, enabled: bool):
    """Mixed precision: float16 on CUDA, bfloat16 on CPU; a no-op context when disabled."""
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def train_steps(
    batches: Iterable[Any],
    *,
    step_loss: Callable[[Any], Tuple[torch.Tensor, Dict[str, float]]],
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    lr_at: Callable[[int], float],
    lam_at: Optional[Callable[[int], Optional[float]]] = None,
    set_lam: Optional[Callable[[float], None]] = None,
    scaler: Optional["torch.amp.GradScaler"] = None,
    max_steps: Optional[int] = None,
    clip_grad: Optional[float] = None,
    params: Optional[Callable[[], Iterable[torch.nn.Parameter]]] = None,
    progress: bool = False,
    desc: str = "train",
) -> Tuple[int, Dict[str, float]]:
    """The training steps of one epoch, for any task (Algorithm 1, line 9).

    Args:
        batches: the epoch's batches (a loader); at most ``max_steps`` are used.
        step_loss: ``batch -> (loss, figures)``: the forward pass of the task; the figures
            (floats) are summed over the epoch.
        lr_at, lam_at: the learning rate and λ before step ``s`` (1-based); λ is set through
            ``set_lam`` when it changes.
        scaler: a CUDA grad scaler (fp16 autocast) or None.
        clip_grad: clip the gradient norm of ``params()`` to this value (None/0: off).

    Returns:
        ``(steps, sums)``: the steps taken and the summed figures of this process.

    Raises:
        NonFiniteLoss: the loss was NaN/inf on any process, *before* the optimiser touched the
            weights.
    """
    steps = 0
    sums: Dict[str, float] = {}
    lam_now: Optional[float] = None
    total = max_steps
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    taken = batches if max_steps is None else itertools.islice(batches, max_steps)  # draws no batch beyond it
    bar = _progress(taken, total, progress and ctx.is_main, desc)
    for batch in bar:
        step = steps + 1
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if lam_at is not None and set_lam is not None:
            value = lam_at(step)
            if value is not None and value != lam_now:
                set_lam(value)
                lam_now = value
        loss, figures = step_loss(batch)
        value = float(loss.detach())
        if ctx.any_true(not math.isfinite(value)):
            raise NonFiniteLoss(step, None if math.isfinite(value) else value)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(params(), clip_grad)
            optimizer.step()
        for key, v in figures.items():
            sums[key] = sums.get(key, 0.0) + v
        steps += 1
        if bar is not batches and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", refresh=False)
    return steps, sums


def classification_step(model: nn.Module, *, normalize: nn.Module, loss_fn: nn.Module, device: torch.device,
                        teacher: Optional[nn.Module] = None, amp: bool = False):
    """``step_loss`` of :func:`train_steps` for (images, labels) batches: the (KD) loss, and the
    figures ``loss_sum`` (loss × images), ``correct`` and ``seen`` (images)."""

    def step(batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, labels = batch
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
        n = labels.shape[0]
        figures = {"loss_sum": float(loss.detach()) * n, "correct": float(count_correct(logits.detach(), labels)),
                   "seen": float(n)}
        return loss, figures

    return step


def classification_stats(steps: int, sums: Dict[str, float], ctx: DistContext) -> Dict[str, float]:
    """The epoch's all-reduced mean loss, top-1 (%), steps and images from :func:`classification_step`'s figures."""
    loss_sum, correct, seen = ctx.all_sum([sums.get("loss_sum", 0.0), sums.get("correct", 0.0), sums.get("seen", 0.0)])
    return {"train_loss": loss_sum / max(seen, 1.0), "train_top1": 100.0 * correct / max(seen, 1.0),
            "steps": steps, "images": int(seen)}


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
    """Train a classifier (possibly DDP-wrapped) for one epoch of ``loader``:
    :func:`train_steps` with :func:`classification_step`. Returns the all-reduced mean loss,
    top-1 (%), number of steps and of images. Raises :class:`NonFiniteLoss` (see there)."""
    model.train()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    steps, sums = train_steps(
        loader, step_loss=classification_step(model, normalize=normalize, loss_fn=loss_fn, device=ctx.device,
                                              teacher=teacher, amp=amp),
        optimizer=optimizer, ctx=ctx, lr_at=lr_at, lam_at=lam_at, set_lam=set_lam, scaler=scaler, max_steps=total,
        clip_grad=clip_grad, params=model.parameters, progress=progress, desc=desc,
    )
    return classification_stats(steps, sums, ctx)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, normalize: nn.Module, ctx: DistContext,
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` in eval mode (fp32) over this process's
    shard, all-reduced over the processes. An image whose logits are not all finite counts as
    wrong (and makes the loss NaN / inf)."""
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
            correct += count_correct(logits, labels)
            seen += labels.shape[0]
    finally:
        model.train(was_training)
    loss_sum, correct, seen = ctx.all_sum([loss_sum, correct, seen])
    return {"loss": loss_sum / max(seen, 1.0), "top1": 100.0 * correct / max(seen, 1.0), "n": int(seen)}

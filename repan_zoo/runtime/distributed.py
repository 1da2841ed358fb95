"""torch.distributed plumbing for the trainer: process group from ``torchrun``'s environment
(gloo on CPU, nccl on GPU), metric reductions, DDP wrapping and synchronised BatchNorm.

RepAn changes the model object every cycle (Rep → Expand → Restore replaces the Rep blocks'
modules), so the DDP wrapper and the optimiser are rebuilt after each expansion
(:func:`wrap_ddp`); every process expands identically (same generator seed) and DDP's
construction broadcasts rank 0's parameters anyway.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistContext", "init_distributed", "CPUSyncBatchNorm", "convert_sync_bn", "wrap_ddp", "unwrap"]

T = TypeVar("T")


@dataclass
class DistContext:
    """Who this process is: ``rank`` of ``world_size`` on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float]) -> list:
        """Sum a few numbers over all processes (float64)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.distributed:
            t = t.to(self.device) if self.backend == "nccl" else t
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def any_true(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (every process gets the same answer)."""
        if not self.distributed:
            return bool(flag)
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def on_main(self, fn: Callable[[], T], what: str) -> Optional[T]:
        """Run ``fn`` (a file write) on the main process only, and let every process learn whether it
        failed, so that none waits at the next collective call until the process group times out.

        Returns:
            ``fn()``'s value on the main process, None on the others.

        Raises:
            Exception: ``fn``'s own error, on the main process.
            CheckpointError: on the other processes when it failed there, naming ``what`` (e.g. "writing
                the checkpoint ep0004") and that the main process's message says why.
        """
        from ..errors import CheckpointError

        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # shared below before it is raised: the others must not wait for it
                error = exc
        if self.any_true(error is not None):
            if error is not None:
                raise error
            raise CheckpointError(f"the main process (rank 0) failed {what}; its message says why. This process "
                                  f"(rank {self.rank}) stops with it")
        return result

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _pick_device(requested: Optional[str], local_rank: int) -> torch.device:
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    from ..errors import RecipeError

    device = torch.device(requested)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError(f"--device {requested}: Apple's MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise RecipeError(f"--device {requested}: the trainer runs on cpu, cuda or mps (where available), not on "
                          f"{device.type!r}; use --device cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"--device {requested}: CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: Optional[str] = None) -> DistContext:
    """Read ``torchrun``'s ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and join the process group:
    nccl when training on CUDA, gloo otherwise. Without them: one process, no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the *global* batch over all processes,
    for backends (gloo on CPU) where ``torch.nn.SyncBatchNorm`` refuses to run.

    Per-channel sums and sums of squares (float64) are all-reduced with the autograd-aware
    ``torch.distributed.nn.functional.all_reduce``, so the backward pass also sees every
    process's contribution: with ``P`` processes of ``B/P`` images each the step equals a
    one-process step on ``B`` images. In eval mode, or alone, it is a plain BatchNorm2d, and
    it is a ``_BatchNorm`` for the fusion code (Eq. 2).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xd = x.double()
        local = torch.cat([
            xd.sum(dim=(0, 2, 3)),
            (xd * xd).sum(dim=(0, 2, 3)),
            torch.full((1,), float(x.numel() // c), dtype=torch.float64, device=x.device),
        ])
        total = all_reduce(local, op=dist.ReduceOp.SUM)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var), alpha=m)
        inv = torch.rsqrt(var + self.eps)
        scale = inv if self.weight is None else inv * self.weight.double()
        shift = -mean * scale if self.bias is None else self.bias.double() - mean * scale
        return (xd * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one in place (torch's ``SyncBatchNorm`` on
    GPUs, :class:`CPUSyncBatchNorm` elsewhere), keeping parameters and statistics. Already
    converted layers are left alone, so it can run after every expansion."""
    target = nn.SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d) and type(child) is nn.BatchNorm2d:
            new = target(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else device)
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_bn(child, device)
    return model


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when running with several processes, else
    ``model`` itself. Call again after every change of the model's modules."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


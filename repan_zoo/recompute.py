"""Activation (gradient) checkpointing that does not update BatchNorm statistics twice.

A checkpointed segment runs its forward again during backward. In train mode every BN of the
segment would then add the same batch to its running mean / variance a second time (and count
it twice in ``num_batches_tracked``), and fusion (Eq. 2) bakes those running statistics into the
deploy weights; layers that read the running statistics in train mode (DBB's offset padding,
:class:`repan_zoo.blocks.branches.BNAndPad`) would also recompute something else than the forward
did, and get other gradients. :func:`checkpoint` recomputes from the statistics the forward
started from and then puts back those the forward left, for every BN-like layer of the segment,
so a checkpointed step leaves exactly the statistics and gradients of the same step without
checkpointing.

Built on ``torch.utils.checkpoint.checkpoint(use_reentrant=False, context_fn=...)``; the RNG state
is preserved as usual, so dropout / drop-path masks are the same in the recomputation.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.models import FeatureListNet as _TimmFeatureListNet

from .blocks import is_bn_like

__all__ = ["checkpoint", "checkpoint_seq", "FeatureListNet"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _statistics(module: nn.Module) -> List[torch.Tensor]:
    """The running-statistics buffers of every BN-like layer under ``module``, in a fixed order."""
    out: List[torch.Tensor] = []
    for m in module.modules():
        if is_bn_like(m):
            out.extend(t for t in (getattr(m, name, None) for name in _STATS) if isinstance(t, torch.Tensor))
    return out


class _KeptStatistics:
    """The two contexts of one checkpointed call: the forward remembers the statistics it started
    from; the recomputation runs from those same statistics (layers that read them in train mode,
    such as DBB's offset padding, compute what the forward computed) and then puts back the
    statistics the forward left, so every batch is counted once."""

    def __init__(self, module: nn.Module):
        self.buffers = _statistics(module)
        self.before: List[torch.Tensor] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        self.before = [t.detach().clone() for t in self.buffers]
        yield

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        after = [t.detach().clone() for t in self.buffers]
        _copy(self.buffers, self.before)
        try:
            yield
        finally:
            _copy(self.buffers, after)


@torch.no_grad()
def _copy(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    for t, value in zip(dst, src):
        t.copy_(value)


def checkpoint(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its activations recomputed in backward instead of stored;
    the recomputation starts from the BN statistics the forward started from and leaves those the
    forward left (module docstring). Non-reentrant."""
    kept = _KeptStatistics(module)
    return torch.utils.checkpoint.checkpoint(
        module, *args, use_reentrant=False, context_fn=lambda: (kept.forward(), kept.recompute()), **kwargs,
    )


def checkpoint_seq(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run ``modules`` in order (e.g. an ``nn.Sequential``), checkpointing each one with
    :func:`checkpoint` (timm's ``checkpoint_seq`` with ``every=1``, BN statistics kept)."""
    for module in modules:
        x = checkpoint(module, x)
    return x


class FeatureListNet(_TimmFeatureListNet):
    """timm's ``FeatureListNet`` (the ``features_only`` wrapper) whose gradient checkpointing goes
    through :func:`checkpoint`, so a checkpointed backbone updates BN statistics once per step.
    Without checkpointing it is timm's class unchanged. As in timm, the first and the last module
    and in-place modules are not checkpointed."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return list(self._collect_checkpointed(x).values())
        return list(self._collect(x).values())

    @torch.jit.unused
    def _collect_checkpointed(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = OrderedDict()
        last = len(self) - 1
        for i, (name, module) in enumerate(self.items()):
            skip = i == 0 or i == last or getattr(module, "inplace", False) is True
            x = module(x) if skip else checkpoint(module, x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out

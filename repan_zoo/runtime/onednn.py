"""oneDNN on CPU: a guard against a bug that the Rep stems of this zoo hit in channels-last training,
and whether bf16 autocast has native kernels here (:func:`cpu_bf16_native`).

oneDNN's 1×1 convolution ``backward_weights`` with a stride > 1 and a channels-last (nhwc) fp32
source writes past its reduce-to-unit-stride workspace when the input has fewer channels than the
kernel's channel block (8 on AVX2, 16 on AVX-512): uxlfoundation/oneDNN#6035, open, reproduced with
PyTorch 2.14.1 on an AVX2 EPYC (``tests/test_onednn_guard.py``). The heap corruption ends the
process with ``SIGSEGV`` / ``corrupted size vs. prev_size`` / ``free(): invalid next size``, or
later, or not at all. The stride-2 stems of RepVGG, MobileOne and DBB carry exactly such a branch
(the 1×1 of a 1- to 3-channel input), so ``--channels-last`` training on a CPU hits it for any
image with 1–15 channels (bf16 autocast takes another kernel and passes). A 1-channel batch is
nhwc to oneDNN when its strides say so: ``x.to(memory_format=torch.channels_last)`` gives
(HW, 1, W, 1) and crashes; ``x.contiguous(memory_format=torch.channels_last)`` keeps the NCHW
strides (HW, HW, W, 1), which is what the trainer's loader makes, and passes.

:func:`guard_strided_1x1` makes each such convolution compute in NCHW (its input and weight
re-strided by a forward pre-hook; the weight's values and its ``Parameter`` are kept): in a Rep
network that is the stem's 1×1 branch; the rest of the network stays channels-last.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["at_risk", "guard_strided_1x1", "cpu_bf16_native"]

#: the widest channel block of oneDNN's x64 1×1 backward-weights kernels (AVX-512; AVX2: 8)
CHANNEL_BLOCK = 16
_HOOKED = "_repan_onednn_guard"


def at_risk(conv: nn.Module) -> bool:
    """A dense ``nn.Conv2d`` with a 1×1 kernel, a stride > 1 and 1–15 input channels: the
    convolution whose weight gradient oneDNN computes out of bounds from a channels-last input."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) != (1, 1)
            and conv.groups == 1 and conv.in_channels < CHANNEL_BLOCK)


def _contiguous_strides(shape: torch.Size) -> Tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _nchw(module: nn.Conv2d, args: tuple) -> Optional[tuple]:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dim() != 4:
        return None
    w = module.weight
    if w.stride() != _contiguous_strides(w.shape):  # a 1×1 kernel is "contiguous" in both formats
        with torch.no_grad():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
    if x.stride() != _contiguous_strides(x.shape):
        return (x.clone(memory_format=torch.contiguous_format),) + tuple(args[1:])
    return None


def guard_strided_1x1(model: nn.Module) -> List[str]:
    """Hook every :func:`at_risk` convolution of ``model`` so that on a CPU it computes in NCHW
    whatever memory format the model and its input are in (idempotent; call it again after a
    conversion that builds new convolutions: Rep, Expand, ``unfold``).

    Args:
        model: any module; it is changed in place (hooks only: no parameter is replaced).

    Returns:
        The names of the guarded convolutions (those already guarded included).
    """
    names = []
    for name, module in model.named_modules():
        if at_risk(module):
            if not getattr(module, _HOOKED, False):
                module.register_forward_pre_hook(_nchw)
                setattr(module, _HOOKED, True)
            names.append(name)
    return names


def cpu_bf16_native() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX-512 BW/VL/DQ or AMX), as PyTorch
    reports it (``torch.ops.mkldnn._is_mkldnn_bf16_supported``; without that op: the ATen CPU
    capability is AVX512). Without them bf16 autocast is emulated: RepVGG-A1 0.25×'s training step
    (batch 128, 1 thread, NHWC; ``benchmarks/train_throughput.py``) took 1963 ms in bf16 against 184 ms
    in fp32 on an AVX2-only EPYC, where an AVX-512 one gave 96 ms against 124 ms."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


"""What a run or a benchmark ran on, as one string: :func:`cpu_name` for a CPU, the CUDA device's
name for a GPU (:func:`device_name`). Training records it per epoch, so that time estimates can
tell this machine's epochs from those measured on another (``benchmarks/accuracy/sweep.py``)."""
from __future__ import annotations

import platform
from typing import Union

import torch

__all__ = ["cpu_name", "device_name"]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else the platform's machine string)
    and the vector ISA PyTorch's CPU kernels use on it (``torch.backends.cpu.get_cpu_capability()``),
    e.g. ``"AMD EPYC (AVX2)"``: a model name alone ("AMD EPYC") covers machines without AVX-512,
    where bf16 and INT8 time very differently."""
    name = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def device_name(device: Union[str, torch.device]) -> str:
    """The processor behind ``device``: ``torch.cuda.get_device_name`` for a CUDA device (e.g.
    ``"NVIDIA H200"``), :func:`cpu_name` for the CPU, else — another type, or CUDA on a machine
    without it — the device type (``"mps"``, ``"cuda"``)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_name()
    return device.type

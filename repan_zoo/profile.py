"""Both forms measured (issue 10, point 6): parameters, FLOPs and CPU latency of a model's
train form (multi-branch, Eq. 3) and deploy form (one conv per Rep block, Eq. 1–2).

Everything is measured on the model at hand, never copied from a table:

* parameters: ``sum(p.numel())`` over ``model.parameters()`` (buffers such as BN running
  statistics are not counted);
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on one eval-mode forward; it counts
  convolutions and matrix products with one multiply-add = 2 FLOPs and does not count
  BatchNorm, additions, pooling or activations (so the BN-only identity branch adds 0);
* latency: CPU wall time of one eval-mode forward under ``torch.inference_mode`` with a fixed
  number of intra-op threads, ``warmup`` untimed runs, then the median (and the 25th/75th
  percentiles) of ``repeats`` timed runs, in milliseconds.

:func:`profile_forms` returns a plain dict (JSON-ready) for model cards, the README and
``benchmarks/forms.py``; :func:`forms_markdown` renders rows of them as one table.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import rep_blocks
from .checkpoint import model_form
from .convert import reparameterize
from .errors import NoRepBlocksError
from .runtime.hardware import cpu_name  # noqa: F401 (re-exported: the benchmarks' machine records)
from .verify import eval_mode

__all__ = ["count_params", "count_flops", "cpu_latency", "train_step_time", "cpu_name", "train_form", "profile_forms",
           "forms_markdown"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward on ``x`` by ``torch.utils.flop_counter`` (multiply-add = 2)."""
    counter = FlopCounterMode(display=False)
    with eval_mode(model), counter:
        model(x)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_timing(repeats: int, warmup: int, threads: int) -> None:
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"repeats={repeats}, warmup={warmup}, threads={threads}: need repeats ≥ 1, warmup ≥ 0, threads ≥ 1")


def _summary(times: List[float]) -> Dict[str, float]:
    """Median, quartiles and minimum of timings in ms."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median_ms": median, "p25_ms": q1, "p75_ms": q3, "min_ms": min(times)}


def cpu_latency(model: nn.Module, x: torch.Tensor, *, repeats: int = 20, warmup: int = 3, threads: int = 1) -> Dict[str, float]:
    """CPU latency of one eval-mode forward: median and quartiles over ``repeats`` timed runs, in ms."""
    _check_timing(repeats, warmup, threads)
    times: List[float] = []
    with _threads(threads), eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return _summary(times)


def train_step_time(model: nn.Module, x: torch.Tensor, *, repeats: int = 10, warmup: int = 2, threads: int = 1,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """CPU time of one training step (train-mode forward, cross-entropy on random labels — or the
    mean square of a feature map —, backward, SGD update) of ``model`` on batch ``x``: median and quartiles over ``repeats`` steps, in ms.
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under ``torch.autocast`` on
    ``x``'s device, as ``repan-train --amp`` does (weights, BN statistics and the loss stay fp32).
    ``model`` is trained on a copy, so the caller's weights and BN statistics stay as they were."""
    _check_timing(repeats, warmup, threads)
    work = copy.deepcopy(model).train().to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    with torch.no_grad():
        shape = work(x[:2]).shape
    y = torch.randint(0, shape[-1], (x.shape[0],), generator=torch.Generator().manual_seed(0))

    def loss_of(out: torch.Tensor) -> torch.Tensor:  # a classifier's logits, else a feature map
        return nn.functional.cross_entropy(out, y) if len(shape) == 2 else out.square().mean()

    opt = torch.optim.SGD(work.parameters(), lr=1e-3, momentum=0.9)
    times: List[float] = []
    with _threads(threads):
        for i in range(warmup + repeats):
            start = time.perf_counter()
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = work(x)
            loss = loss_of(out.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return _summary(times)


def train_form(model: nn.Module) -> nn.Module:
    """A train-form copy of ``model``: itself (copied) when its Rep blocks hold branches, otherwise
    every deploy block is unfolded into the branch kinds of its architecture (``arch_branches``,
    λ=1). The copy's weights only serve cost measurements."""
    form = model_form(model)
    if form is None:
        raise NoRepBlocksError(
            f"{type(model).__name__} holds no RepBlock: it has no train and deploy form to compare. "
            "Profile a repan_zoo model (timm.create_model('repan_...'))"
        )
    work = copy.deepcopy(model)
    for _, block in rep_blocks(work):
        if block.deploy:
            block.unfold(block.arch_branches, k=1, lam=1.0, restore="normalized", skip_unfit=True)
    return work


def _measure(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int, threads: int) -> Dict[str, Any]:
    blocks = rep_blocks(model)
    return {
        "params": count_params(model),
        "flops": count_flops(model, x),
        "latency": cpu_latency(model, x, repeats=repeats, warmup=warmup, threads=threads),
        "rep_branches": sum(1 + len(b.extras) for _, b in blocks if not b.deploy) + sum(1 for _, b in blocks if b.deploy),
    }


def profile_forms(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    *,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 1,
) -> Dict[str, Any]:
    """Parameters, FLOPs and CPU latency of the train form and the deploy form of ``model``.

    ``input_size`` is ``(C, H, W)``; by default the model's ``pretrained_cfg['input_size']``.
    The caller's model is not changed: the deploy form is a verified copy
    (:func:`repan_zoo.reparameterize`), the train form is ``model`` itself when it is in train
    form, else a copy unfolded into its architecture's branches (:func:`train_form`).
    Both run on CPU in float32. Returns::

        {"input_size": [C, H, W], "batch_size": N, "threads": T, "repeats": R, "warmup": W,
         "train":  {"params", "flops", "latency": {"median_ms", "p25_ms", "p75_ms", "min_ms"},
                    "rep_branches"}   # parallel branches summed over the Rep blocks,
         "deploy": {...same...},
         "ratios": {"params", "flops", "latency"}   # deploy / train
         "exactness": model.repan_exactness of the fused copy,
         "torch": version, "cpu": processor string}
    """
    size = _input_size(model, input_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    params = list(model.parameters())
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    # measuring runs eval-mode forwards only: a train-form fp32 CPU model is measured as it is (no copy)
    train = model if model_form(model) == "train" and on_cpu_fp32 else train_form(model).cpu().float()
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(0))
    deploy = reparameterize(train, inplace=False, verify=True, example_input=x[:2])
    forms = {name: _measure(m, x, repeats, warmup, threads) for name, m in (("train", train), ("deploy", deploy))}
    return {
        "input_size": list(size),
        "batch_size": batch_size,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        **forms,
        "ratios": {
            "params": _ratio(forms["train"]["params"], forms["deploy"]["params"]),
            "flops": _ratio(forms["train"]["flops"], forms["deploy"]["flops"]),
            "latency": _ratio(forms["train"]["latency"]["median_ms"], forms["deploy"]["latency"]["median_ms"]),
        },
        "exactness": dict(getattr(deploy, "repan_exactness", {}) or {}),
        "torch": torch.__version__,
        "cpu": cpu_name(),
    }


def _ratio(train: float, deploy: float) -> Optional[float]:
    return deploy / train if train else None


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> List[int]:
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = cfg.get("input_size")
    if input_size is None:
        raise ValueError("profile_forms needs input_size=(C, H, W): the model has no pretrained_cfg['input_size']")
    size = [int(s) for s in input_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size={input_size!r}: give (channels, height, width), e.g. (3, 224, 224)")
    return size


def _millions(n: float) -> str:
    return f"{n / 1e6:.2f}"


def forms_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """One markdown table of :func:`profile_forms` results; each row may carry a ``"model"`` key."""
    header = (
        "| model | input | batch | params train / deploy (M) | GFLOPs train / deploy | "
        "CPU ms train / deploy (median, threads) | deploy speed-up |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        t, d = r["train"], r["deploy"]
        lt, ld = t["latency"]["median_ms"], d["latency"]["median_ms"]
        lines.append(
            f"| {r.get('model', '-')} | {'×'.join(map(str, r['input_size']))} | {r['batch_size']} | "
            f"{_millions(t['params'])} / {_millions(d['params'])} | "
            f"{t['flops'] / 1e9:.3f} / {d['flops'] / 1e9:.3f} | "
            f"{lt:.2f} / {ld:.2f} ({r['threads']}) | {lt / ld:.2f}× |"
        )
    return "\n".join(lines)

"""Exactness checks shared by ``reparameterize``, ``unfold``, the hub and export.

Relative error here is always ``max|new - ref| / max|ref|`` over a whole output (or a
whole block output), i.e. the error relative to the output's scale; it is the figure
timm quotes for its own ``reparameterize_model`` (4.6e-7 on repvgg_a0, fp32 CPU).

Models that are not ``tensor → tensor(s)`` (torchvision's detectors take a list of images and
return detections) are fed and read through a registered :class:`ProbeAdapter`
(:func:`register_probe_adapter`); this module knows no such model itself (torchvision's detectors
are registered by :mod:`repan_zoo.probe_adapters`).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .blocks import rep_blocks  # noqa: F401 (re-exported: its home is repan_zoo.blocks)
from .registry import add

__all__ = [
    "DEFAULT_TOLERANCE",
    "non_finite_state",
    "ExactnessReport",
    "relative_error",
    "flatten_tensors",
    "probe_input",
    "weights_device_dtype",
    "capture",
    "compare",
    "eval_mode",
    "exact_fp32",
    "ProbeAdapter",
    "PROBE_ADAPTERS",
    "register_probe_adapter",
    "probe_adapter",
    "rep_blocks",  # re-exported from repan_zoo.blocks (its home)
]

#: whole-network and per-block bound of the design card (fp32, eval mode).
DEFAULT_TOLERANCE = 1e-5


def relative_error(ref: torch.Tensor, new: torch.Tensor) -> float:
    """``max|new-ref| / max|ref|`` in float64 (0 when both are all-zero)."""
    ref64, new64 = ref.detach().double(), new.detach().double()
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    diff = (new64 - ref64).abs().max().item() if ref64.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def flatten_tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor in a nested output (tensor, list/tuple, dict, as detectors return)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in flatten_tensors(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten_tensors(item)]
    return []


@contextlib.contextmanager
def exact_fp32():
    """Full-precision fp32 convolutions and matmuls for the duration (no TF32 on Ampere+ GPUs).

    cuDNN runs fp32 convolutions in TF32 by default, whose 10-bit mantissa alone makes two
    equal functions differ by ~1e-3 relative: the exactness checks of Rep / Expand+Restore /
    Calibrate (≤ 1e-5) run without it. Used by every check here (``capture``) and by ``calibrate_bn``;
    training keeps the user's setting. An enclosing ``torch.autocast`` region (CPU or CUDA) is
    switched off for the duration too: its bf16 / fp16 convolutions differ by ~1e-2.
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with contextlib.ExitStack() as stack:
            for device in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device_type=device, enabled=False))
            yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the duration, then give each its own flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _find_input_size(model: nn.Module) -> Optional[Sequence[int]]:
    for m in model.modules():
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return tuple(cfg["input_size"])
    return None


@dataclass(frozen=True)
class ProbeAdapter:
    """How the exactness checks feed and read a kind of model that is not ``tensor → tensor(s)``.

    Args:
        name: registry name (:data:`PROBE_ADAPTERS`).
        matches: ``matches(model) -> bool``: whether this adapter serves ``model``.
        to_input: ``to_input(batch)``: the probe batch (float ``[B, C, H, W]``, on the model's device
            and in its dtype) in the form ``model(...)`` takes.
        compared: ``compared(model) -> Optional[nn.Module]``: the submodule whose first output the
            whole-model check compares instead of the model's own output (``None``: the model's).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    to_input: Callable[[torch.Tensor], Any] = lambda batch: batch
    compared: Callable[[nn.Module], Optional[nn.Module]] = lambda model: None


#: name → adapter, tried in registration order by :func:`probe_adapter`.
PROBE_ADAPTERS: Dict[str, ProbeAdapter] = {}


def register_probe_adapter(adapter: ProbeAdapter, *, overwrite: bool = False) -> ProbeAdapter:
    """Add ``adapter`` to :data:`PROBE_ADAPTERS` under ``adapter.name``.

    Returns:
        ``adapter``.

    Raises:
        ValueError: the name is already registered and ``overwrite`` is false.
    """
    if overwrite:  # keeps its place in the order adapters are tried
        PROBE_ADAPTERS[adapter.name] = adapter
        return adapter
    return add(PROBE_ADAPTERS, adapter.name, adapter, what="probe adapter")


def probe_adapter(model: nn.Module) -> Optional[ProbeAdapter]:
    """The first registered :class:`ProbeAdapter` that serves ``model``, or ``None`` (a plain
    ``tensor → tensor(s)`` model)."""
    return next((a for a in PROBE_ADAPTERS.values() if a.matches(model)), None)


def weights_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype of ``model``'s first floating-point parameter (CPU and float32 when it has
    none): where, and in what precision, a probe input or a part built later belongs."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


def probe_input(model: nn.Module, example_input: Any = None, batch_size: int = 2, seed: int = 0) -> Any:
    """The input used to check a conversion: ``example_input`` if given, otherwise a seeded
    random batch shaped by the model's ``pretrained_cfg['input_size']`` with its first conv's
    input channels (timm keeps 3 in the cfg for ``in_chans=1``), or 64×64 without a cfg, on the
    model's own device and dtype. A model served by a :class:`ProbeAdapter` gets the batch in its
    adapter's form (a torchvision detector: a list of images)."""
    if example_input is not None:
        return example_input
    device, dtype = weights_device_dtype(model)
    size = _find_input_size(model)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if size is None:
        if first_conv is None:
            raise ValueError("cannot guess an input for this model: pass example_input=...")
        size = (first_conv.in_channels, 64, 64)
    elif first_conv is not None and first_conv.in_channels != size[0]:
        # timm keeps the pretrained cfg's 3 channels for create_model(..., in_chans=1)
        size = (first_conv.in_channels, *size[1:])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *size, generator=gen).to(device=device, dtype=dtype)
    adapter = probe_adapter(model)
    return adapter.to_input(x) if adapter is not None else x


def non_finite_state(model: nn.Module) -> List[str]:
    """Names of ``model``'s floating-point parameters and buffers that hold a NaN or inf: what a
    finite loss can leave behind (BN running statistics of overflowing activations, an update that
    overflowed on the last step of an epoch)."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@torch.no_grad()
def capture(
    model: nn.Module,
    inputs: Any,
    names: Sequence[str],
    *,
    record_inputs: Optional[Dict[str, torch.Tensor]] = None,
    block_inputs: Optional[Dict[str, torch.Tensor]] = None,
) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
    """Run ``model`` in eval mode on ``inputs``; return its flattened outputs and the outputs of
    the named submodules (detached float copies).

    ``record_inputs`` (a dict) receives each named submodule's input. With ``block_inputs``
    (such a dict from the reference model) each submodule's figure is its output on that
    recorded input, so a per-block error measures the block alone instead of also carrying
    the errors of the blocks upstream (the worst block is then the one that is wrong).

    For a model served by a :class:`ProbeAdapter` with a ``compared`` submodule the returned
    outputs are that submodule's: a torchvision detector's backbone (FPN) feature maps, since the
    detections themselves pass through top-k, score thresholds and NMS, discrete choices that fp32
    rounding may flip (a 1e-7 change of two near-equal objectness scores selects other proposals),
    so they are no measure of exactness."""
    modules = dict(model.named_modules())
    seen: Dict[str, torch.Tensor] = {}
    handles = []
    dense: List[Any] = []
    adapter = probe_adapter(model)
    compared = adapter.compared(model) if adapter is not None else None
    if isinstance(compared, nn.Module):
        handles.append(compared.register_forward_hook(lambda _m, _a, out: dense.append(out)))
    for name in names:
        def hook(_m, args, out, name=name):
            if isinstance(out, torch.Tensor) and name not in seen:
                seen[name] = out.detach().float().clone()
                if record_inputs is not None and args and isinstance(args[0], torch.Tensor):
                    record_inputs[name] = args[0].detach().clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with eval_mode(model), exact_fp32():
            out = model(inputs if not isinstance(inputs, list) else [t for t in inputs])
            for name, x in (block_inputs or {}).items():
                if name in seen:
                    seen[name] = modules[name](x).detach().float().clone()
    finally:
        for h in handles:
            h.remove()
    return [t.detach().float().clone() for t in flatten_tensors(dense[:1] or out)], seen


@dataclass
class ExactnessReport:
    """What a conversion check measured. ``model_rel_error`` is ``None`` when the two outputs
    differ in structure (e.g. a detector keeping a different number of boxes); the per-block
    figures then decide."""

    model_rel_error: Optional[float]
    worst_block: Optional[str]
    worst_block_rel_error: float
    tolerance: float
    dtype: str
    input_shape: List[int] = field(default_factory=list)
    block_errors: Dict[str, float] = field(default_factory=dict)
    #: set by :func:`float64_check` for the figures above ``tolerance``, for the whole model
    #: (``"model"``) and for each such block on its recorded input (``"blocks"``): relative errors
    #: against a float64 run of the original of the original (``"original"``) and of the converted
    #: form (``"converted"``) in their own precision, and of the converted form run in float64
    #: (``"exact"``: the two stored functions compared without evaluation rounding)
    float64: Optional[Dict[str, Any]] = None

    def _within_rounding(self, key: str, name: Optional[str] = None) -> bool:
        """The two forms compute the same function to ``tolerance`` in exact (float64) arithmetic:
        what exceeds it in their own precision is that precision's evaluation rounding (amplified by
        a deep network, or by branches or BN terms that cancel), not the conversion."""
        f = (self.float64 or {}).get(key)
        if f is not None and name is not None:
            f = f.get(name)
        return f is not None and f["exact"] <= self.tolerance

    @property
    def ok(self) -> bool:
        model_ok = (self.model_rel_error is None or self.model_rel_error <= self.tolerance
                    or self._within_rounding("model"))
        blocks_ok = all(err <= self.tolerance or self._within_rounding("blocks", name)
                        for name, err in self.block_errors.items())
        return model_ok and blocks_ok and (bool(self.block_errors) or self.worst_block_rel_error <= self.tolerance)

    def as_dict(self, with_blocks: bool = False) -> Dict[str, Any]:
        d = asdict(self)
        if not with_blocks:
            d.pop("block_errors")
        return d


@torch.no_grad()
def float64_check(original: nn.Module, converted: nn.Module, inputs: Any,
                  ref: Tuple[List[torch.Tensor], Dict[str, torch.Tensor]],
                  new: Tuple[List[torch.Tensor], Dict[str, torch.Tensor]], report: "ExactnessReport",
                  block_inputs: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """For every figure of ``report`` above its tolerance, run the original and the converted form
    in float64 (deep copies; neither module is changed): the whole model on ``inputs``, each such
    block on its recorded input, and return the relative errors against the original's float64
    output of the original's and the converted form's own-precision outputs (``ref``, ``new`` from
    :func:`capture`) and of the converted form's float64 output (``"exact"``). Evaluation rounding
    can exceed a fixed bound with an exact conversion: a fresh MobileOne-S0 on 1×28×28 is 1.0e-5
    from float64 in float32 before any conversion, and trained MobileOne blocks whose branches
    cancel reached 1.15e-5 and 1.56e-5 between their two float32 forms."""
    import copy

    def run64(module: nn.Module, x: Any, whole: bool) -> List[torch.Tensor]:
        m64 = copy.deepcopy(module).double()
        x64 = x.double() if isinstance(x, torch.Tensor) else [t.double() for t in x]
        if whole:
            return [t.double() for t in capture(m64, x64, [])[0]]
        with eval_mode(m64):
            return [m64(x64).double()]

    def errs(orig64, conv64, orig, conv) -> Dict[str, float]:
        def worst(outs):
            return max((relative_error(a, b) for a, b in zip(orig64, outs)), default=0.0)
        return {"original": worst(orig), "converted": worst(conv), "exact": worst(conv64)}

    tol = report.tolerance
    result: Dict[str, Any] = {"model": None, "blocks": {}}
    if report.model_rel_error is not None and report.model_rel_error > tol:
        result["model"] = errs(run64(original, inputs, True), run64(converted, inputs, True), ref[0], new[0])
    mods, conv_mods = dict(original.named_modules()), dict(converted.named_modules())
    for name, err in report.block_errors.items():
        if err > tol and name in block_inputs:
            x = block_inputs[name]
            result["blocks"][name] = errs(run64(mods[name], x, False), run64(conv_mods[name], x, False),
                                          [ref[1][name]], [new[1][name]])
    return result


def _nan_largest(error: float) -> float:
    """Sort key of an error for ``max``: NaN (a non-finite output) counts as the largest; plain
    ``max`` skips it or not depending on the order."""
    return math.inf if math.isnan(error) else error


def compare(
    ref: Tuple[List[torch.Tensor], Dict[str, torch.Tensor]],
    new: Tuple[List[torch.Tensor], Dict[str, torch.Tensor]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: str = "float32",
    input_shape: Sequence[int] = (),
) -> ExactnessReport:
    """Compare two :func:`capture` results."""
    ref_out, ref_blocks = ref
    new_out, new_blocks = new
    model_err: Optional[float] = None
    if len(ref_out) == len(new_out) and all(a.shape == b.shape for a, b in zip(ref_out, new_out)):
        model_err = max((relative_error(a, b) for a, b in zip(ref_out, new_out)), default=0.0, key=_nan_largest)
    block_errors = {
        name: relative_error(ref_blocks[name], new_blocks[name])
        for name in ref_blocks
        if name in new_blocks and ref_blocks[name].shape == new_blocks[name].shape
    }
    worst = max(block_errors, key=lambda name: _nan_largest(block_errors[name])) if block_errors else None
    return ExactnessReport(
        model_rel_error=model_err,
        worst_block=worst,
        worst_block_rel_error=block_errors[worst] if worst is not None else 0.0,
        tolerance=tolerance,
        dtype=dtype,
        input_shape=list(input_shape),
        block_errors=block_errors,
    )

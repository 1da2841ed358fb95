"""Whole-model conversions: ``reparameterize`` (train → deploy), ``unfold`` (deploy → train),
``calibrate_bn`` (Sec. 3.3) and ``set_lambda`` (Eq. 3).

Both conversions take any ``nn.Module`` tree (a timm model, a ``features_only`` backbone,
a torchvision detector, an ``nn.Sequential``), convert every :class:`RepBlock` wherever it
sits and leave everything else bit-identical. They work on a deep copy unless
``inplace=True``; the train/eval flag of every submodule is kept. With ``verify=True``
a probe input runs through the old and the new model in eval mode and a
:class:`ReparameterizationError` names the worst block when the result is not exact;
the figures are attached as ``model.repan_exactness``.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Type, Union

import torch
import torch.nn as nn

from .blocks import RepBlock, bn_params, check_lambda, rep_blocks
from .expansion import ARCH_BRANCHES, DEFAULT_BRANCHES, GENERIC_BRANCHES, Expansion
from .errors import CalibrationError, NoRepBlocksError, RepanError, ReparameterizationError, UnfusableBranchError
from .verify import (
    ExactnessReport, capture, compare, eval_mode, exact_fp32, float64_check, non_finite_state, probe_input,
    weights_device_dtype,
)

__all__ = [
    "reparameterize",
    "unfold",
    "calibrate_bn",
    "uncalibrated_blocks",
    "set_lambda",
    "default_tolerance",
    "revert_sync_batchnorm",
    "DEFAULT_BRANCHES",
    "ARCH_BRANCHES",
    "GENERIC_BRANCHES",
    "Expansion",
]

_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def default_tolerance(model: nn.Module) -> float:
    """fp32: 1e-5 (the design card's whole-network bound); half precisions: their rounding."""
    return _TOLERANCE.get(weights_device_dtype(model)[1], 1e-5)


def _require_blocks(model: nn.Module, call: str) -> List[str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{call} takes a torch.nn.Module (e.g. timm.create_model('repan_resnet18_w025')), "
                        f"got {type(model).__name__}")
    names = [name for name, _ in rep_blocks(model)]
    if not names:
        raise NoRepBlocksError(f"{call}: {_no_blocks_reason(model)}")
    return names


def _no_blocks_reason(model: nn.Module) -> str:
    """Why ``model`` holds no RepBlock, and what to do: a model prepared for quantization (QAT / PTQ
    observers, e.g. ``prepare_qat_fx`` traced the blocks away) must be fused *before* quantizing."""
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    if any(isinstance(m, (FakeQuantizeBase, ObserverBase)) for m in model.modules()):
        return (
            f"{type(model).__name__} is prepared for quantization (it holds observers / fake-quantize modules) and "
            "no RepBlock is left to fuse. Fuse before quantizing: repan_zoo.reparameterize(float_model), then "
            "prepare_qat / prepare_qat_fx the deploy model"
        )
    return (
        f"{type(model).__name__} holds no RepBlock, so there is nothing to convert. "
        "Build it from repan_zoo models (timm.create_model('repan_...')) or repan_zoo.blocks.RepBlock"
    )


def _checked_conversion(
    model: nn.Module,
    convert: Callable[[nn.Module], None],
    *,
    call: str,
    inplace: bool,
    verify: bool,
    example_input: Any,
    tolerance: Optional[float],
) -> nn.Module:
    """Convert a deep copy, check it, and only then hand back the copy (or apply to ``model``)."""
    names = _require_blocks(model, call)
    if verify and any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ReparameterizationError(
            f"{call} cannot check its conversion: the model is on the meta device (shapes, no values). "
            "Pass verify=False to convert its structure only, or give it values first "
            "(model.to_empty(device='cpu'), then load_state_dict). The model was left unchanged")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not math.isfinite(tolerance) or tolerance <= 0):
        raise ValueError(f"{call}: tolerance={tolerance!r}; give a positive finite number (the largest relative "
                         "error accepted, e.g. 1e-5), or None for the default of the model's dtype")
    work = copy.deepcopy(model)
    report: Optional[ExactnessReport] = None
    if verify:
        tol = default_tolerance(model) if tolerance is None else tolerance
        probe = probe_input(work, example_input)
        block_inputs: Dict[str, torch.Tensor] = {}
        try:
            ref = capture(work, probe, names, record_inputs=block_inputs)
        except (RuntimeError, ValueError, TypeError) as exc:
            which = "example_input" if example_input is not None else "probe input"
            got = (f" of shape {tuple(probe.shape)}, {str(probe.dtype).replace('torch.', '')}"
                   if isinstance(probe, torch.Tensor) else "")
            device, dtype = weights_device_dtype(model)
            raise ReparameterizationError(
                f"{call} cannot check its conversion: the model does not run on the {which}{got} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Pass an example_input the "
                f"model takes (its input channels and size; {str(dtype).replace('torch.', '')} on {device}, as its "
                "weights), or verify=False. The model was left unchanged") from exc
        if not all(bool(torch.isfinite(t).all()) for t in ref[0] if t.is_floating_point()):
            bad = non_finite_state(model)
            _, dtype = weights_device_dtype(model)
            if bad or dtype not in (torch.float16, torch.bfloat16):
                cause = ((f" (NaN/inf in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''})" if bad else "")
                         + ". Its weights or BN statistics are broken (a diverged training run?), not the fusion; "
                         "load the last good checkpoint")
            else:  # finite weights and statistics: the activations leave the low-precision range
                cause = (f", while its weights and BN statistics are finite: its activations overflow in "
                         f"{str(dtype).replace('torch.', '')}. Fuse in float32 (model.float()), then cast the fused "
                         "model, or run it in float32")
            raise ReparameterizationError(
                f"{call} cannot check its conversion: the model's own output on the probe is NaN/inf{cause}. "
                "The model was left unchanged",
                model_rel_error=float("nan"), tolerance=tol)
        convert(work)
        new = capture(work, probe, names, block_inputs=block_inputs)  # each block on its reference input
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else []
        dtype = str(next(work.parameters()).dtype).replace("torch.", "")
        report = compare(ref, new, tolerance=tol, dtype=dtype, input_shape=shape)
        if not report.ok:
            # above the fixed bound: compare the two forms in float64, where evaluation rounding
            # (amplified by a deep network, or by cancelling terms) no longer hides the conversion's error
            report.float64 = float64_check(model, work, probe, ref, new, report, block_inputs)
        if not report.ok:
            model_err = "n/a" if report.model_rel_error is None else f"{report.model_rel_error:.3g}"
            non_finite = math.isnan(report.worst_block_rel_error)
            raise ReparameterizationError(
                f"{call} changed the model's function: block {report.worst_block!r} has relative error "
                f"{report.worst_block_rel_error:.3g} (whole model: {model_err}"
                + _float64_summary(report)
                + f") above the tolerance {tol:g}. The model was left unchanged. "
                + (f"The converted block's output is NaN/inf where the original's is finite: an overflow in "
                   f"{dtype}? Convert in float32 (model.float()), then cast"
                   if non_finite else
                   "Check that every BN in the Rep blocks is a standard "
                   "BatchNorm with running statistics, or pass a larger tolerance= for low precision"),
                worst_block=report.worst_block,
                rel_error=report.worst_block_rel_error,
                model_rel_error=report.model_rel_error,
                tolerance=tol,
            )
    else:
        convert(work)
    if inplace:
        _transplant(work, model, names, convert)
        work = model
    if report is not None:
        work.repan_exactness = report.as_dict()
    return work


def _float64_summary(report: ExactnessReport) -> str:
    f = report.float64 or {}
    parts = [(what, e) for what, e in [("model", f.get("model"))] + list((f.get("blocks") or {}).items()) if e]
    return "".join(f"; {what} vs float64: original {e['original']:.3g}, converted {e['converted']:.3g}, "
                   f"converted run in float64 {e['exact']:.3g}" for what, e in parts[:3])


def _transplant(src: nn.Module, dst: nn.Module, names: List[str], convert: Callable[[nn.Module], None]) -> None:
    """Move the checked, converted blocks of ``src`` into ``dst`` (same tree), so that an in-place
    call ends with exactly the blocks that were verified."""
    if "" in names:  # the model is itself a RepBlock
        convert(dst)
        return
    converted = dict(src.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = dst.get_submodule(parent_name) if parent_name else dst
        setattr(parent, child, converted[name])


def reparameterize(
    model: nn.Module,
    *,
    inplace: bool = False,
    verify: bool = True,
    example_input: Any = None,
    tolerance: Optional[float] = None,
) -> nn.Module:
    """Train → deploy: fuse every Rep block into one conv (Eq. 1, 2, 5 with λ); idempotent.

    Returns the converted model (a deep copy unless ``inplace=True``). With ``verify=True``
    the old and new model are compared in eval mode on a probe input and a
    :class:`ReparameterizationError` is raised, before anything is changed, when the
    relative error of any block or of the output exceeds ``tolerance`` (fp32: 1e-5).
    The figures are attached as ``model.repan_exactness``.
    """

    def convert(m: nn.Module) -> None:
        for _, block in rep_blocks(m):
            block.reparameterize()

    return _checked_conversion(
        model, convert, call="reparameterize", inplace=inplace, verify=verify,
        example_input=example_input, tolerance=tolerance,
    )


def unfold(
    model: nn.Module,
    expansion: Union[Expansion, str, Sequence[str], None] = None,
    *,
    lam: float = 0.0,
    generator: Optional[torch.Generator] = None,
    blocks: Optional[Callable[[str, RepBlock], bool]] = None,
    inplace: bool = False,
    verify: bool = True,
    example_input: Any = None,
    tolerance: Optional[float] = None,
    **changes: Any,
) -> nn.Module:
    """Deploy → trainable multi-branch form, same function at λ=0 (Expand + Restore, Alg. 1 l. 4–5).

    Args:
        model: any module tree holding Rep blocks (timm model, backbone, detector).
        expansion: the :class:`~repan_zoo.expansion.Expansion` (default: the paper's — each
            block's own kinds, k=1, ``restore="inherit"``, new branches at BN γ = 0), or a
            sequence of branch kinds (or one string, comma-separated: ``"conv_kxk,conv_1x1"``)
            as a shorthand for ``Expansion(branches=...)``.
        lam: λ of Eq. (3) set on the unfolded blocks afterwards, in [0, 1].
        generator: draws the new convs (He-normal); one generator per run, never re-seeded.
        blocks: ``blocks(name, block) -> bool`` selects the blocks to unfold (default: all).
        inplace, verify, example_input, tolerance: as in :func:`reparameterize`.
        **changes: fields of ``expansion`` to override (``branches``, ``k``, ``restore``,
            ``residual``, ``branch_gamma``), e.g. ``unfold(m, k=2)``.

    Every selected block is fused if needed, its conv restored into conv + BN (the Restore rule,
    :func:`repan_zoo.algebra.restore_conv_bn`), and given ``k`` new branches of each kind (kinds
    that do not fit a block, e.g. ``avg`` where in≠out, are skipped there). With
    :data:`ARCH_BRANCHES` each block gets ``k`` new branches of each of its own kinds; blocks
    that have none are restored only. ``residual`` adds the residual BN branch of Eq. 3 where
    shapes allow. ``verify`` checks at λ=0 that the eval function is unchanged, whatever ``lam``
    is asked (λ>0 changes the function by design, Eq. 3).

    Returns:
        The unfolded model (a deep copy unless ``inplace``), ``repan_exactness`` attached.

    Raises:
        ExpansionError: invalid expansion settings (unknown kind or rule, k outside 0..5, …).
        UnfusableBranchError: a named kind fits none of the selected blocks, or ``("arch",)``
            on a model none of whose selected blocks has branch kinds of its own.
        LambdaRangeError: ``lam`` outside [0, 1].
    """
    check_lambda(lam)
    exp = Expansion.of(expansion, **changes)
    branches, k, residual = exp.branches, exp.k, exp.residual
    kinds = [] if exp.arch else list(branches) + (["identity"] if residual else [])

    def per_block(block: RepBlock) -> List[str]:
        # k new branches of each asked kind, plus ONE residual BN: Eq. (3) has a single BN_res(X)
        own = block.arch_branches if exp.arch else branches
        return [kind for kind in own for _ in range(k)] + (["identity"] if residual else [])

    unfolded: List[str] = []

    def convert(m: nn.Module) -> None:
        attached: Dict[str, int] = defaultdict(int)
        unfolded.clear()
        for name, block in rep_blocks(m):
            if blocks is not None and not blocks(name, block):
                continue
            unfolded.append(name)
            new = block.unfold(
                per_block(block), k=1, lam=0.0, restore=exp.restore, generator=generator,
                branch_gamma=exp.branch_gamma, skip_unfit=True,
            )
            for b in new:
                attached[b.kind] += 1
        if exp.arch and k > 0 and not attached and unfolded:
            raise UnfusableBranchError(
                "unfold: branches=('arch',) but none of the selected blocks has branch kinds of its own "
                "(a plain network such as repan_mobilenet or repan_resnet18); name the kinds to attach, "
                f"e.g. branches={GENERIC_BRANCHES} (on the command line: --branches {','.join(GENERIC_BRANCHES)})"
            )
        missing = [kind for kind in kinds if k > 0 and not attached[kind] and not (kind == "identity" and residual)]
        if missing:
            raise UnfusableBranchError(
                f"unfold: branch kind(s) {missing} fit none of the selected blocks "
                "(identity needs stride 1 and in==out; avg needs in==out); choose other branches"
            )

    out = _checked_conversion(
        model, convert, call="unfold", inplace=inplace, verify=verify,
        example_input=example_input, tolerance=tolerance,
    )
    if lam:
        modules = dict(out.named_modules())
        for name in unfolded:
            modules[name].set_lambda(lam)
    return out


def set_lambda(model: nn.Module, value: float, *, only_train_form: bool = False) -> int:
    """Set λ of Eq. (3) on every Rep block of ``model``; returns how many blocks were set.

    Raises :class:`~repan_zoo.errors.LambdaRangeError` for λ outside [0, 1] (nothing is changed).
    """
    lam = check_lambda(value)
    count = 0
    for _, block in rep_blocks(model):
        if only_train_form and block.deploy:
            continue
        block.set_lambda(lam)
        count += 1
    return count


#: the forms of an image batch that calibration (calibrate_bn, INT8 quantize) takes
BATCH_FORMS = ("tensors (N, C, H, W), (images, labels) pairs as a DataLoader yields them, or dicts with "
               "'pixel_values' (Hugging Face datasets / image processors)")


def batch_images(batch: Any, what: str, error: Type[RepanError] = CalibrationError) -> torch.Tensor:
    """The images of one calibration batch: a float tensor ``(N, C, H, W)`` given as it is, as the
    first item of a tuple / list (a DataLoader's ``(images, labels)``) or as a dict's
    ``pixel_values`` (Hugging Face). Anything else raises ``error`` naming the batch (``what``, e.g.
    ``"calibrate_bn: batch 3"``), what it is and the fix; used by :func:`calibrate_bn` and
    :func:`repan_zoo.quantize.quantize`."""
    singles = batch[0] if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (list, tuple)) else batch
    if isinstance(singles, (list, tuple)) and len(singles) > 1 and all(
            isinstance(t, torch.Tensor) and t.dim() == 3 for t in singles):  # torchvision detection's form
        raise error(
            f"{what} holds {len(singles)} single images (C×H×W each), a torchvision detection loader's form; a "
            "detector's backbone calibrates on (N, C, H, W) batches as it sees them (normalised, resized, padded): "
            "calibrate_bn(detector.backbone.body, repan_zoo.detection.calibration_batches(detector, images, "
            "batch_size))")
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        batch = batch[0]
    elif isinstance(batch, Mapping):
        if "pixel_values" not in batch:
            raise error(f"{what} is a dict with keys {sorted(map(str, batch))[:8]}; pass {BATCH_FORMS}")
        batch = batch["pixel_values"]
    if not isinstance(batch, torch.Tensor):
        raise error(f"{what} is a {type(batch).__name__}, not images; pass {BATCH_FORMS}")
    if batch.dim() != 4:
        one = "; one image? add the batch dimension: x.unsqueeze(0)" if batch.dim() == 3 else ""
        raise error(f"{what} has shape {tuple(batch.shape)}; a batch of images is (N, C, H, W){one}")
    if not batch.is_floating_point():
        raise error(
            f"{what} holds {batch.dtype} values; the model takes float images normalised as it was trained "
            "(e.g. x.float() / 255, then the mean / std of timm.data.resolve_data_config(model=model), "
            "or repan_zoo.data.Normalize)")
    return batch


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[Any], *, device: Optional[torch.device] = None,
                 num_batches: Optional[int] = None) -> nn.Module:
    """Calibrate (Algorithm 1, line 6; Sec. 3.3): re-estimate the running statistics of every
    BN inside the train-form Rep blocks from ``batches`` while keeping the eval function.

    For an inherited BN with new statistics ``(μ', σ')`` the affine part is adjusted so that
    ``γ'/σ' = γ/σ`` and ``β' - γ'μ'/σ' = β - γμ/σ``: the eval output is unchanged and the
    train-mode output (batch statistics) starts equal to it. BNs of branches marked ``fresh``
    by expansion have no function to keep: they get the batch statistics and keep their
    initial γ, β, so each new branch starts normalised (at λ=0 the block output is unchanged
    either way). Nested fresh BNs (DBB's 1×1→k×k) are calibrated stage by stage so that each
    sees its calibrated predecessor. Statistics are gathered in eval mode (forward hooks,
    float64 sums, unbiased variance like BN's running_var). Modifies ``model`` in place and
    returns it. ``batches``: float tensors ``(N, C, H, W)``, tuples whose first item is one (as a
    DataLoader yields) or dicts holding one as ``pixel_values`` (Hugging Face datasets). ``num_batches`` takes only the first that many, e.g.
    ``calibrate_bn(model, train_loader, num_batches=5)``; None takes all of them. The batches taken
    are held in memory (nested fresh BNs need one pass per depth), so cap a large loader.

    Raises :class:`~repan_zoo.errors.NoRepBlocksError` (no train-form block) and
    :class:`~repan_zoo.errors.CalibrationError` (no batch, ``num_batches`` < 1, a batch that is not
    a float ``(N, C, H, W)`` tensor or holds NaN/inf, a batch the model cannot run); after any failure the model is exactly as it was before the call.
    """
    blocks = [b for _, b in rep_blocks(model) if not b.deploy]
    if not blocks:
        raise NoRepBlocksError(
            "calibrate_bn: the model has no train-form Rep block; call repan_zoo.unfold(model) first"
        )
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise CalibrationError(f"calibrate_bn: num_batches={num_batches!r}; give a whole number ≥ 1 "
                               "(or None to take every batch)")
    batches = [batch_images(b, f"calibrate_bn: batch {i}") for i, b in enumerate(itertools.islice(batches, num_batches))]
    if not batches:
        raise CalibrationError("calibrate_bn needs at least one batch of inputs")
    if device is not None:
        batches = [b.to(device) for b in batches]
    for i, b in enumerate(batches):
        if not bool(torch.isfinite(b).all()):
            raise CalibrationError(
                f"calibrate_bn: batch {i} holds NaN or inf values; the statistics would be NaN. "
                "Calibrate on finite inputs (check the data and its normalisation)")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    flags_before = [(branch, branch.fresh, branch.uncalibrated) for block in blocks
                    for branch in [block.trunk, *block.extras]]
    try:
        _calibrate(model, blocks, batches)
    except BaseException as exc:
        with torch.no_grad():  # a failure halfway leaves the model exactly as it was
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
        for branch, fresh, uncalibrated in flags_before:
            branch.fresh, branch.uncalibrated = fresh, uncalibrated
        if isinstance(exc, (RuntimeError, ValueError, TypeError)) and not isinstance(exc, RepanError):
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            other = next((b.dtype for b in batches if b.is_floating_point() and b.dtype != dtype), None)
            fix = (f"Pass batches in the model's dtype: they are {other}, the model {dtype} (batch.to({dtype}), or "
                   "calibrate under torch.autocast)" if dtype is not None and other is not None
                   else "Pass batches of the model's input shape")
            raise CalibrationError(f"calibrate_bn: the model cannot run on the batches ({exc}); the model was left "
                                   f"unchanged. {fix}") from exc
        raise
    return model


def uncalibrated_blocks(model: nn.Module) -> List[str]:
    """Qualified names of the train-form Rep blocks of ``model`` whose trunk BN statistics no data
    estimated (:attr:`~repan_zoo.blocks.branches.Branch.uncalibrated`: deploy weights unfolded with
    no BN to inherit). Non-empty means: call :func:`calibrate_bn` before training, or the first
    training-mode forward replaces those statistics by batch statistics
    (:class:`~repan_zoo.errors.UncalibratedBNWarning`)."""
    return [name for name, b in rep_blocks(model) if b.trunk is not None and b.trunk.uncalibrated]


def _calibrate(model: nn.Module, blocks, batches: List[torch.Tensor]) -> None:
    stages: List[List[nn.modules.batchnorm._BatchNorm]] = [[]]
    fresh_ids = set()
    for block in blocks:
        for branch in [block.trunk, *block.extras]:
            bns = branch.bns()
            branch.uncalibrated = False
            if branch.fresh:
                for depth, bn in enumerate(bns):
                    while len(stages) <= depth:
                        stages.append([])
                    stages[depth].append(bn)
                    fresh_ids.add(id(bn))
                branch.fresh = False
            else:
                stages[0].extend(bns)
    for stage in stages:
        stats = _gather_input_stats(model, stage, batches)
        for bn in stage:
            mean, var = stats[id(bn)]
            _set_bn_stats(bn, mean, var, keep_function=id(bn) not in fresh_ids)


def _gather_input_stats(model: nn.Module, bns: List[nn.Module], batches: List[Any]) -> Dict[int, Any]:
    sums: Dict[int, List[Any]] = {}
    handles = []
    for bn in bns:
        def hook(m, inputs, _out):
            x = inputs[0].detach().double()
            s = sums.setdefault(id(m), [0.0, 0.0, 0])
            s[0] = s[0] + x.sum(dim=(0, 2, 3))
            s[1] = s[1] + (x * x).sum(dim=(0, 2, 3))
            s[2] += x.numel() // x.shape[1]
        handles.append(bn.register_forward_hook(hook))
    try:
        with eval_mode(model), exact_fp32():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for bn in bns:
        total, total_sq, n = sums[id(bn)]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0.0) * (n / max(n - 1, 1))
        stats[id(bn)] = (mean, var)
    return stats


def _set_bn_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, keep_function: bool) -> None:
    if keep_function:
        old = bn_params(bn)
        old_std = (old.running_var.double() + bn.eps).sqrt()
        new_std = (var + bn.eps).sqrt()
        gamma = old.weight.double() * new_std / old_std
        beta = old.bias.double() + old.weight.double() * (mean - old.running_mean.double()) / old_std
        bn.weight.copy_(gamma.to(bn.weight))
        bn.bias.copy_(beta.to(bn.bias))
    bn.running_mean.copy_(mean.to(bn.running_mean))
    bn.running_var.copy_(var.to(bn.running_var))


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm`` (torch and timm have none): every
    ``SyncBatchNorm`` becomes a ``BatchNorm2d`` holding the same parameters and buffers (shared,
    not copied) and the same train/eval flag, e.g. to fuse or export a model trained with DDP.
    SyncBatchNorm does not remember its original class: every one becomes a ``BatchNorm2d``
    (image models; a converted ``BatchNorm1d/3d`` would need its own class back).
    Converts children in place and returns ``module`` (or its replacement when it is itself one).
    """
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module

"""INT8 deploy on CPU through torchao's PT2E flow, with a self-check (issue 18).

:func:`quantize` turns a model into an INT8 model for x86 CPUs:

1. **deploy form**: Rep blocks still in train form are fused on a copy
   (:func:`repan_zoo.reparameterize`, verified); a model that still computes parallel branches
   afterwards (a foreign block nobody fused) is refused, naming the modules
   (:func:`repan_zoo.export.unfused_modules`);
2. **fold constant channels** (:func:`fold_constant_channels`, on by default): a channel that a
   ``conv → ReLU`` pair outputs as one constant value on every calibration image, read by a
   1×1 convolution, is folded into that convolution's bias. This is the MobileOne-S0 failure of
   the issue: a stem channel that is dead (always ≤ 0 before its ReLU) makes the following
   depthwise conv output the constant ``bias_c``; the next 1×1 conv learned weights in the
   hundreds on that constant channel, balanced by a bias in the thousands. Exact in fp32, but in
   INT8 the constant is rounded to the per-tensor activation step (error × 500 on the output)
   and the column sets the per-output-channel weight scale (the real weights, ~0.7, round to
   zero). The fold removes both;
3. **equalize activations** (:func:`equalize_activations`; ``equalize=0.5`` or ``None`` (off), or by
   default ``"auto"``: both are quantized and the one closer to fp32 on the probe is kept): every
   ``conv A → ReLU → conv B`` activation is rescaled per channel (A's output channel divided by
   ``s_c``, B's input channel multiplied by it; exact because ReLU is positively homogeneous), so
   that one per-tensor uint8 scale fits all its channels: ``s_c`` is the activation range for a
   depthwise B (whose per-channel weight scale absorbs it at no cost) and SmoothQuant's balance
   ``r_c^α / w_c^(1−α)`` for a dense B. On a fitted MobileOne-S0 at 224² it raised the
   propagated SQNR after the first depthwise → pointwise pair from 16 to 28 dB
   (``benchmarks/int8_sensitivity.py``); on the shipped RepVGG-A1 0.25× at 28² it *cost* 0.9 test
   points (``benchmarks/int8_accuracy.py``), hence the choice per model. The float64 check of step 2
   covers it;
4. ``torch.export.export`` (dynamic batch axis) → ``prepare_pt2e`` with torchao's
   ``X86InductorQuantizer`` (its default config: per-channel symmetric int8 weights, per-tensor
   affine uint8 activations with histogram observers) → calibrate on ``calibration_batches``
   (training images, never test images) → ``convert_pt2e``;
5. ``torch.compile`` with inductor freezing (optional: ``compile=False`` keeps the eager
   reference-quantized graph, which is what :func:`export_int8` saves);
6. **self-check** (:func:`agreement`): on the ``probe`` batch the INT8 model's outputs are
   compared with the fp32 model's: top-1 agreement and relative error
   ``‖q − f‖₂ / ‖f‖₂`` over the logits. Below ``min_agreement`` or above
   ``max_rel_error`` the model is refused (:class:`~repan_zoo.errors.QuantizationError`).

``fp32_modules`` leaves named layers unquantized (the first/last-layer remedy);
:func:`layer_errors` tells which layers lose most: the propagated SQNR of every conv/linear
output of the INT8 graph against its fp32 model.

torchao is the optional extra ``repan-zoo[quant]`` (``torch.ao.quantization``'s PT2E modules
are gone from torch 2.14; torchao is their maintained home); without it every entry point
raises :class:`~repan_zoo.errors.MissingExtraError` naming the extra.

:func:`export_int8` writes the INT8 program with ``torch.export.save`` and checks the file
(reloaded, it must compute what the in-memory INT8 model computes, and pass the self-check);
:func:`load_int8` verifies the file's sha256 (when given) and that it holds no pickled payload
before deserializing it.

Sources: torchao PT2E tutorial ("PyTorch 2 Export Post Training Quantization with X86 Backend
through Inductor"); bias absorption of Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019, Sec. 4.2 (here for channels that are constant,
where it is exact) and its cross-layer equalization through ReLU (Sec. 4.1); Xiao et al.,
"SmoothQuant", ICML 2023, Eq. 4 (the migration strength α).
"""
from . import core  # noqa: F401  (the module, e.g. for tests that replace its torchao loader)
from .core import (
    BACKENDS, DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_AGREEMENT, EQUALIZE_CANDIDATES, Int8Model, agreement, calibration_data,
    layer_errors, quantize,
)
from .folding import equalize_activations, fold_constant_channels
from .program import export_int8, load_int8

__all__ = [
    "BACKENDS",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MAX_REL_ERROR",
    "EQUALIZE_CANDIDATES",
    "Int8Model",
    "quantize",
    "agreement",
    "layer_errors",
    "fold_constant_channels",
    "equalize_activations",
    "export_int8",
    "load_int8",
    "calibration_data",
]

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
3. ``torch.export.export`` (dynamic batch axis) → ``prepare_pt2e`` with torchao's
   ``X86InductorQuantizer`` (its default config: per-channel symmetric int8 weights, per-tensor
   affine uint8 activations with histogram observers) → calibrate on ``calibration_batches``
   (training images, never test images) → ``convert_pt2e``;
4. ``torch.compile`` with inductor freezing (optional: ``compile=False`` keeps the eager
   reference-quantized graph, which is what :func:`export_int8` saves);
5. **self-check** (:func:`agreement`): on the ``probe`` batch the INT8 model's outputs are
   compared with the fp32 model's: top-1 agreement and relative error
   ``‖q − f‖₂ / ‖f‖₂`` over the logits. Below ``min_agreement`` or above
   ``max_rel_error`` the model is refused (:class:`~repan_zoo.errors.QuantizationError`).

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
where it is exact).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import zipfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from .blocks import RepBlock
from .checkpoint import atomic_write, sha256_file
from .errors import MissingExtraError, QuantizationError
from .export import unfused_modules
from .verify import relative_error

__all__ = [
    "BACKENDS",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MAX_REL_ERROR",
    "Int8Model",
    "quantize",
    "agreement",
    "fold_constant_channels",
    "export_int8",
    "load_int8",
    "calibration_data",
]

#: quantizer backends :func:`quantize` knows.
BACKENDS = ("x86_inductor",)
#: self-check thresholds: top-1 agreement with fp32 on the probe, and ‖q − f‖₂ / ‖f‖₂ of the logits.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MAX_REL_ERROR = 0.25
#: a folded model may differ from the unfolded one by fp32 rounding only (max-relative, on the calibration batches).
_FOLD_TOLERANCE = 1e-4
_EXTRA_HINT = "pip install 'repan-zoo[quant]' (or pip install -c constraints.txt 'torchao>=0.18,<0.19')"

_aten = torch.ops.aten
_RELU = (_aten.relu.default, _aten.relu_.default)


def _torchao() -> Dict[str, Any]:
    """torchao's PT2E entry points, or :class:`MissingExtraError` naming the extra."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        raise MissingExtraError(
            f"INT8 quantization needs torchao, which is not installed ({exc}). Install the extra: {_EXTRA_HINT}"
        ) from exc
    return {
        "prepare_pt2e": prepare_pt2e,
        "convert_pt2e": convert_pt2e,
        "quantizer": lambda: xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()),
    }


class Int8Model(nn.Module):
    """The result of :func:`quantize`: runs the INT8 program (compiled when asked) without autograd.

    ``graph`` is the converted PT2E graph (eager, reference-quantized ops), ``runner`` what
    ``forward`` calls (``torch.compile(graph)`` or ``graph`` itself), ``check`` the self-check
    report (:func:`agreement` plus thresholds, fold and calibration facts), ``reference`` the
    fp32 logits on the probe it was checked on.
    Input: ``N×C×H×W`` float32, normalised like the fp32 model's; output: the model's logits.
    """

    def __init__(self, graph: nn.Module, runner: Any, check: Dict[str, Any], reference: torch.Tensor):
        super().__init__()
        self.graph = graph
        self._runner = runner
        self.check = check
        self.reference = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _freezing():  # a new batch size compiles again, frozen like the first
            return self._runner(x)


# -- the self-check ---------------------------------------------------------------------------------


def agreement(reference: torch.Tensor, quantized: torch.Tensor) -> Dict[str, float]:
    """How far INT8 logits ``quantized`` are from fp32 logits ``reference`` (both ``N×K``).

    Returns ``top1_agreement`` (fraction of rows with the same arg-max), ``rel_error``
    (``‖q − f‖₂ / ‖f‖₂`` over the whole batch) and ``max_rel_error``
    (``max|q − f| / max|f|``, :func:`repan_zoo.verify.relative_error`). Raises ``ValueError``
    for shapes that differ or are not ``N×K``.
    """
    if reference.shape != quantized.shape or reference.dim() != 2:
        raise ValueError(f"expected two N×K logit tensors of one shape, got {tuple(reference.shape)} and "
                         f"{tuple(quantized.shape)}")
    ref, q = reference.detach().double(), quantized.detach().double()
    norm = ref.norm().item()
    return {
        "top1_agreement": (ref.argmax(1) == q.argmax(1)).double().mean().item(),
        "rel_error": (q - ref).norm().item() / norm if norm > 0 else float("inf"),
        "max_rel_error": relative_error(ref, q),
        "probe_images": int(ref.shape[0]),
    }


def _judge(check: Dict[str, Any], what: str) -> None:
    ok_agree = check["top1_agreement"] >= check["min_agreement"]
    ok_err = check["rel_error"] <= check["max_rel_error_allowed"]
    check["passed"] = bool(ok_agree and ok_err)
    if not check["passed"]:
        raise QuantizationError(
            f"{what} disagrees with the fp32 model on the probe ({check['probe_images']} images): top-1 agreement "
            f"{check['top1_agreement']:.3f} (need >= {check['min_agreement']}), relative error of the logits "
            f"{check['rel_error']:.3f} (need <= {check['max_rel_error_allowed']}). Calibrate on more (and "
            "representative, normalised) training images, keep fold_constants=True, or report the model",
            check=check,
        )


# -- constant-channel folding -------------------------------------------------------------------------


def _arg(node: Any, index: int, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else default


def _foldable_pairs(model: nn.Module, example: torch.Tensor) -> List[Dict[str, Any]]:
    """``conv A → ReLU → 1×1 conv B`` chains (A and the ReLU used once, both convs with bias), by
    parameter names, read from the ``torch.export`` graph of ``model``."""
    program = torch.export.export(model, (example,))
    names = program.graph_signature.inputs_to_parameters
    params = dict(model.named_parameters())
    pairs = []
    for b in program.graph.nodes:
        if b.target is not _aten.conv2d.default:
            continue
        relu, b_weight, b_bias = b.args[0], names.get(b.args[1].name), _arg(b, 2, None)
        if b_bias is None or b_weight is None or relu.op != "call_function" or relu.target not in _RELU:
            continue
        a = relu.args[0]
        if (len(relu.users) != 1 or a.op != "call_function" or a.target is not _aten.conv2d.default
                or len(a.users) != 1 or _arg(a, 2, None) is None):
            continue
        pointwise = tuple(params[b_weight].shape[2:]) == (1, 1) and _arg(b, 6, 1) == 1
        if pointwise and all(p == 0 for p in _arg(b, 4, [0])):
            pairs.append({"a_weight": names[a.args[1].name], "a_bias": names[a.args[2].name],
                          "b_weight": b_weight, "b_bias": names[b_bias.name]})
    return pairs


@torch.no_grad()
def fold_constant_channels(model: nn.Module, batches: Sequence[torch.Tensor], *, rtol: float = 1e-6) -> List[Dict[str, Any]]:
    """Fold channels that are constant on ``batches`` into the next 1×1 convolution's bias, in place.

    For every ``conv A → ReLU → conv B`` chain in the ``torch.export`` graph (A and the ReLU
    read only by the next op; B 1×1, no padding, one group, both convs with bias), the ReLU
    output's per-channel min and max are measured on ``batches`` (``N×C×H×W`` float inputs of
    ``model``). A channel ``c`` whose spread ``max − min`` is at most ``rtol·max(|max|, 1)``
    carries the constant ``v_c``: ``B.bias += B.weight[:, c] · v_c``, then ``B.weight[:, c]``,
    ``A.weight[c]`` and ``A.bias[c]`` are set to 0, so the channel is an exact zero (which uint8
    activations represent exactly) and no weight scale is set by it. Exact wherever the
    channel is constant (a dead input channel of a depthwise conv makes it ``A.bias[c]``); on
    other inputs it is checked by the caller (:func:`quantize` compares the folded fp32 model
    with the original). Returns one record per folded layer: A's weight name, the channels,
    the largest ``|B.weight|`` removed. ``model`` must be in eval mode.
    """
    batches = list(batches)
    params = dict(model.named_parameters())
    folded = []
    for pair in _foldable_pairs(model, batches[0]):
        conv_a = model.get_submodule(pair["a_weight"].rsplit(".", 1)[0])
        lo: List[torch.Tensor] = []
        hi: List[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            act = out.relu()
            lo.append(act.amin(dim=(0, 2, 3)))
            hi.append(act.amax(dim=(0, 2, 3)))

        handle = conv_a.register_forward_hook(hook)
        try:
            for batch in batches:
                model(batch)
        finally:
            handle.remove()
        if not hi:
            continue  # A does not run as a module call (the graph names its weight only)
        low, high = torch.stack(lo).amin(0), torch.stack(hi).amax(0)
        const = (high - low) <= rtol * high.abs().clamp(min=1.0)
        if not const.any():
            continue
        w_b, b_b = params[pair["b_weight"]], params[pair["b_bias"]]
        removed = w_b[:, const].abs().max().item()
        b_b.add_(w_b[:, const, 0, 0].to(torch.float64) @ high[const].to(torch.float64))
        w_b[:, const] = 0
        params[pair["a_weight"]][const] = 0
        params[pair["a_bias"]][const] = 0
        folded.append({"layer": pair["a_weight"].rsplit(".", 1)[0], "into": pair["b_weight"].rsplit(".", 1)[0],
                       "channels": const.nonzero().flatten().tolist(), "max_abs_weight_removed": removed})
    return folded


def _drop_unused_parameters(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the fp32 weights that ``convert_pt2e`` leaves registered after folding them into
    INT8 constants (the graph no longer reads them; an exported program would carry them)."""
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in list(graph.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, attr)
    return graph


@contextlib.contextmanager
def _freezing() -> Iterator[None]:
    """Inductor freezing for the compilations inside (weights become constants: prepacked INT8 kernels)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


# -- the entry point ------------------------------------------------------------------------------------


def _deploy_copy(model: nn.Module) -> nn.Module:
    """A fused (deploy-form) CPU eval copy of ``model``; refuses what still computes branches."""
    from .convert import reparameterize

    if any(isinstance(m, RepBlock) and not m.deploy for m in model.modules()):
        deploy = reparameterize(model, inplace=False, verify=True)
    else:
        deploy = copy.deepcopy(model)
    found = unfused_modules(deploy)
    if found:
        listing = "; ".join(f"{name}: {why}" for name, why in found[:8])
        raise QuantizationError(
            f"refusing to quantize a multi-branch model: {len(found)} module(s) still compute unfused branches "
            f"({listing}). Quantize the deploy form: fuse Rep blocks (repan_zoo.reparameterize) and foreign blocks "
            "with their own method or timm.utils.reparameterize_model(model) first"
        )
    return deploy.cpu().float().eval()


def _calibration(batches: Iterable[Any]) -> List[torch.Tensor]:
    out = []
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise QuantizationError(f"calibration batch {i} is not an N×C×H×W tensor ({type(x).__name__}); give "
                                    "batches of normalised training images (or (images, labels) pairs)")
        if not x.is_floating_point():
            raise QuantizationError(f"calibration batch {i} has dtype {x.dtype}: convert and normalise the images "
                                    "as for the fp32 model (e.g. repan_zoo.data.Normalize) before calibrating")
        out.append(x.detach().float().cpu())
    if sum(len(x) for x in out) < 2:
        raise QuantizationError("calibration needs at least 2 training images (torch.export keeps the batch "
                                "axis dynamic only from 2)")
    return out


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    *,
    backend: str = "x86_inductor",
    probe: Optional[torch.Tensor] = None,
    fold_constants: bool = True,
    compile: bool = True,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
) -> Int8Model:
    """An INT8 CPU model of ``model`` through torchao's PT2E flow, self-checked (module docstring).

    ``calibration_batches``: ``N×C×H×W`` float tensors (or ``(images, labels)`` pairs) of
    normalised *training* images; every one is run through the observers. ``probe``: the
    ``N×C×H×W`` batch of the self-check (held-out images, e.g. a validation split; default:
    the calibration images). ``backend``: one of :data:`BACKENDS`. ``compile``: wrap the
    converted graph in ``torch.compile(..., dynamic=False)`` with inductor freezing (each new batch size compiles:
    tens of seconds on a small CPU). The caller's model is not changed.

    Returns an :class:`Int8Model` whose ``check`` holds the agreement (:func:`agreement`), the
    thresholds, the folded channels and the calibration size. Raises
    :class:`~repan_zoo.errors.MissingExtraError` without torchao,
    :class:`~repan_zoo.errors.QuantizationError` for a multi-branch model, unusable
    calibration batches, or a self-check below ``min_agreement`` / above ``max_rel_error``;
    ``ValueError`` for an unknown backend.
    """
    api = _torchao()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}")
    deploy = _deploy_copy(model)
    batches = _calibration(calibration_batches)
    probe = torch.cat(batches) if probe is None else probe.detach().float().cpu()
    with torch.no_grad():
        reference = deploy(probe)
    folded: List[Dict[str, Any]] = []
    if fold_constants:
        with torch.no_grad():
            before = [deploy(b) for b in batches]
        folded = fold_constant_channels(deploy, batches)
        with torch.no_grad():
            fold_err = max(relative_error(r, deploy(b)) for r, b in zip(before, batches))
        if fold_err > _FOLD_TOLERANCE:
            raise QuantizationError(f"folding constant channels changed the fp32 model by {fold_err:.3g} (relative, "
                                    f"limit {_FOLD_TOLERANCE:g}); quantize with fold_constants=False and report the model")
    example = torch.cat(batches)[:2]
    graph = torch.export.export(deploy, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    try:
        prepared = api["prepare_pt2e"](graph, api["quantizer"]())
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise QuantizationError(
            f"torchao could not annotate the exported graph for {backend} ({type(exc).__name__}: {exc}). A module "
            "instance called at several places (e.g. one nn.ReLU reused) is a known cause: give each call its own module"
        ) from exc
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    converted = _drop_unused_parameters(api["convert_pt2e"](prepared))
    runner = torch.compile(converted, dynamic=False) if compile else converted  # static kernels per batch size
    with torch.no_grad(), _freezing():
        out = runner(probe)  # the first call compiles
    check = dict(agreement(reference, out), min_agreement=min_agreement, max_rel_error_allowed=max_rel_error,
                 backend=backend, compiled=bool(compile), calibration_images=sum(len(b) for b in batches),
                 calibration_batches=len(batches), folded=folded)
    _judge(check, "the INT8 model")
    return Int8Model(converted, runner, check, reference)


def calibration_data(
    dataset: str = "fashion_mnist",
    data_dir: Optional[str] = None,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    batches: int = 32,
    batch_size: int = 64,
    probe_images: int = 512,
    seed: int = 0,
) -> Dict[str, Any]:
    """Normalised calibration batches and a probe from a dataset's *training files* only.

    The training files are split as :func:`repan_zoo.data.load_splits` splits them (5 000
    validation images, ``split_seed=0``): ``batches`` batches of ``batch_size`` images from the
    train split (no flip, :func:`repan_zoo.data.calibration_batches` with ``seed``) calibrate;
    the first ``probe_images`` validation images are the self-check's probe. The test set is
    never read. ``mean``/``std`` (per channel, on [0, 1] pixels; default: the dataset's) normalise.
    Returns ``{"calibration": [N×C×H×W float32, ...], "probe": N×C×H×W, "split": {...}}``.
    Raises :class:`~repan_zoo.errors.DatasetNotFoundError` when the files are missing.
    """
    from .data import Normalize, calibration_batches as draw, load_splits

    splits = load_splits(dataset, data_dir, val_size=5000, split_seed=0, seed=seed, flip=False)
    norm = Normalize(mean if mean is not None else splits.mean, std if std is not None else splits.std)
    calibration = [norm(b) for b in draw(splits.train, batches, batch_size, seed=seed, cycle=0)]
    probe = norm(splits.val[torch.arange(min(probe_images, len(splits.val)))][0])
    return {"calibration": calibration, "probe": probe,
            "split": {"dataset": splits.name, "calibration": f"{sum(len(b) for b in calibration)} train-split images",
                      "probe": f"{len(probe)} validation images (training files, held out)"}}


# -- the shippable artefact -------------------------------------------------------------------------------

_PICKLED_PREFIXES = ("custom_obj", "opaque_obj")


def _pickled_payloads(archive_file: Any) -> List[str]:
    """Entries of a ``torch.export.save`` archive that ``torch.export.load`` would unpickle."""
    found = []
    with zipfile.ZipFile(archive_file) as archive:
        for name in archive.namelist():
            base = os.path.basename(name)
            if base.startswith(_PICKLED_PREFIXES):
                found.append(name)
            elif base.endswith(".json") and ("weights_config" in base or "constants_config" in base):
                config = json.loads(archive.read(name))
                for fqn, meta in (config.get("config") or {}).items():
                    if isinstance(meta, dict) and meta.get("use_pickle"):
                        found.append(f"{name}:{fqn}")
    return found


def load_int8(path: os.PathLike, *, sha256: Optional[str] = None) -> nn.Module:
    """Load an INT8 program written by :func:`export_int8` (``torch.export.load``), checked first.

    The file must exist, be a ``torch.export`` archive, match ``sha256`` (64 hex digits, e.g.
    from the export report) when given, and hold no pickled payload (``torch.export.load``
    unpickles tensor subclasses and custom objects; an INT8 program of this package has none).
    Returns the program as an eager ``nn.Module`` (``N×C×H×W`` float32 in, logits out); wrap it
    in ``torch.compile(m, options={"freezing": True})`` for speed. Raises
    :class:`~repan_zoo.errors.QuantizationError` otherwise, and ``FileNotFoundError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no INT8 program at {path}; write one with `repan export MODEL --int8 --out {path}`")
    with open(path, "rb") as fh:
        data = fh.read()  # checked and loaded from these bytes: what is checked is what is loaded
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise QuantizationError(f"{path} has sha256 {actual}, expected {sha256}: the file is not the one exported; "
                                    "export it again")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise QuantizationError(f"{path} is not a torch.export archive (.pt2); export it with repan export --int8")
    pickled = _pickled_payloads(io.BytesIO(data))
    if pickled:
        raise QuantizationError(f"{path} holds pickled payloads ({', '.join(pickled[:4])}); refusing to load them. "
                                "Export the INT8 program again with repan_zoo.quantize.export_int8")
    return torch.export.load(io.BytesIO(data)).module()


def export_int8(
    model: nn.Module,
    path: os.PathLike,
    calibration_batches: Iterable[Any],
    *,
    probe: Optional[torch.Tensor] = None,
    fold_constants: bool = True,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
) -> Dict[str, Any]:
    """Quantize ``model`` (:func:`quantize`, not compiled) and save the INT8 program at ``path``
    with ``torch.export.save`` (dynamic batch axis), then prove the file: :func:`load_int8` it
    back and run the probe and a one-image slice of it; the outputs must equal the in-memory
    INT8 model's (relative error ≤ 1e-5) and pass the fp32 self-check. Written atomically: a
    refused export leaves no file at ``path``.

    Arguments as :func:`quantize`. Returns a report: path, bytes, sha256, input shape, the
    self-check, and the file-vs-memory relative error. Raises what :func:`quantize` raises, and
    :class:`~repan_zoo.errors.QuantizationError` when the reloaded file computes something else.
    """
    batches = _calibration(calibration_batches)
    probe = torch.cat(batches) if probe is None else probe.detach().float().cpu()
    int8 = quantize(model, batches, probe=probe, fold_constants=fold_constants, compile=False,
                    min_agreement=min_agreement, max_rel_error=max_rel_error)
    inputs = [probe, probe[:1]]
    with torch.no_grad():
        expected = [int8.graph(x) for x in inputs]
    program = torch.export.export(int8.graph, (probe[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        buffer = io.BytesIO()  # torch.export.save wants a buffer or a name ending in .pt2 (the temp file's does not)
        torch.export.save(program, buffer)
        with open(tmp, "wb") as fh:
            fh.write(buffer.getvalue())
        loaded = load_int8(tmp)
        with torch.no_grad():
            got = [loaded(x) for x in inputs]
        facts["file_vs_memory_rel_error"] = max(relative_error(e, g) for e, g in zip(expected, got))
        if facts["file_vs_memory_rel_error"] > 1e-5:
            raise QuantizationError(f"the saved INT8 program differs from the in-memory one by "
                                    f"{facts['file_vs_memory_rel_error']:.3g} (relative); no file was written")
        check = dict(int8.check, **agreement(int8.reference, got[0]))
        _judge(check, "the saved INT8 program")
        facts["check"] = check
        facts.update(bytes=os.path.getsize(tmp), sha256=sha256_file(tmp))

    out = atomic_write(path, write)
    return {"format": "torch.export (INT8, PT2E x86_inductor)", "path": os.fspath(out),
            "input_shape": list(probe.shape), "dynamic_batch": True, **facts, "torch": torch.__version__}


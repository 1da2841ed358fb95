"""The INT8 entry point (:func:`quantize`), its self-check and the INT8 model; see :mod:`repan_zoo.quantize`."""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..blocks import RepBlock
from ..convert import batch_images
from ..errors import QuantizationError
from ..extras import missing_extra
from ..export import unfused_modules
from ..verify import relative_error

from .folding import _FOLD_TOLERANCE, equalize_activations, fold_constant_channels

#: quantizer backends :func:`quantize` knows.
BACKENDS = ("x86_inductor",)
#: self-check thresholds: top-1 agreement with fp32 on the probe, and ‖q − f‖₂ / ‖f‖₂ of the logits.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MAX_REL_ERROR = 0.25
#: the SmoothQuant strengths ``equalize="auto"`` tries (``None``: no equalization); the one whose eager INT8
#: graph has the lowest relative error of the logits on the probe is kept. Neither wins everywhere: on the
#: shipped checkpoints α = 0.5 gave 0.082 vs 0.104 (MobileOne-S0) but 0.095 vs 0.030 (RepVGG-A1 0.25×,
#: test top-1 93.05 vs 93.93), benchmarks/results/int8_accuracy.json
EQUALIZE_CANDIDATES: Tuple[Optional[float], ...] = (0.5, None)


def _torchao() -> Dict[str, Any]:
    """torchao's PT2E entry points, or :class:`MissingExtraError` naming the extra."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        raise missing_extra("quant", "INT8 quantization", "torchao", exc) from exc
    return {
        "prepare_pt2e": prepare_pt2e,
        "convert_pt2e": convert_pt2e,
        "quantizer": functools.partial(_x86_quantizer, xiq),
    }


def _x86_quantizer(xiq: Any, fp32_modules: Sequence[str] = ()) -> Any:
    """torchao's ``X86InductorQuantizer`` (from its module ``xiq``) with its default config, the
    modules named in ``fp32_modules`` (dotted names, as ``named_modules`` gives them) left
    unannotated (fp32)."""
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    for name in fp32_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


class Int8Model(nn.Module):
    """The result of :func:`quantize`: runs the INT8 program (compiled when asked) without autograd.

    ``graph`` is the converted PT2E graph (eager, reference-quantized ops), ``runner`` what
    ``forward`` calls (``torch.compile(graph)`` or ``graph`` itself), ``check`` the self-check
    report (:func:`agreement` plus thresholds, fold and calibration facts), ``reference`` the
    fp32 logits on the probe it was checked on, ``float_model`` the fp32 deploy model the graph
    quantizes (after constant folding and equalization; kept outside the module tree, so not in
    ``state_dict``; :func:`layer_errors` compares the two).
    Input: ``N×C×H×W`` float32, normalised like the fp32 model's; output: the model's logits.
    """

    def __init__(self, graph: nn.Module, runner: Any, check: Dict[str, Any], reference: torch.Tensor,
                 float_model: Optional[nn.Module] = None):
        super().__init__()
        self.__dict__["float_model"] = float_model  # not a submodule
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


@torch.no_grad()
def layer_errors(int8: Int8Model, x: torch.Tensor) -> List[Dict[str, Any]]:
    """Where an INT8 model loses accuracy: for every convolution and linear layer, in graph order,
    the INT8 graph's output against its fp32 model's (``int8.float_model``) on the batch ``x``
    (``N×C×H×W``), the quantization errors of all earlier layers included (propagated, as
    torchao's numeric debugger compares them). The INT8 graph's conv/linear outputs are taken
    before their output is quantized (reference representation: dequantized inputs and weights).
    Returns ``[{"layer": name in model.named_modules(), "sqnr_db": 10·log10(‖f‖²/‖f − q‖²),
    "rel_error": ‖q − f‖₂/‖f‖₂}, ...]``. Raises ``ValueError`` for an :class:`Int8Model`
    without its fp32 model."""
    if int8.float_model is None:
        raise ValueError("this Int8Model carries no float_model; quantize the model again with repan_zoo.quantize")
    reference: Dict[str, torch.Tensor] = {}
    layers = [(n, m) for n, m in int8.float_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: reference.__setitem__(n, out)) for n, m in layers]
    try:
        int8.float_model(x)
    finally:
        for h in handles:
            h.remove()
    got: Dict[str, torch.Tensor] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            out = super().run_node(node)
            if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    got[list(stack.values())[-1][0]] = out
            return out

    _Recorder(int8.graph).run(x)
    rows = []
    for name, _ in layers:
        if name in got and name in reference:
            f, q = reference[name].double(), got[name].double()
            ratio = ((f - q).pow(2).sum() / f.pow(2).sum().clamp(min=1e-300)).clamp(min=1e-30).item()
            rows.append({"layer": name, "sqnr_db": round(-10 * math.log10(ratio), 2),
                         "rel_error": float(f"{math.sqrt(ratio):.4g}")})
    return rows


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
    """A fused (deploy-form) CPU eval copy of ``model`` (of the model inside a DataParallel / DDP /
    ModelEma / torch.compile wrapper); refuses what still computes branches."""
    from ..convert import reparameterize

    model = unwrap_model(model)

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
    out = [batch_images(batch, f"calibration batch {i}", QuantizationError).detach().float().cpu()
           for i, batch in enumerate(batches)]
    if sum(len(x) for x in out) < 2:
        raise QuantizationError("calibration needs at least 2 training images (torch.export keeps the batch "
                                "axis dynamic only from 2)")
    return out


def _probe_for(batches: List[torch.Tensor], probe: Optional[torch.Tensor]) -> torch.Tensor:
    """The self-check's probe (default: the calibration images), after checking one ``C×H×W`` for
    every calibration batch and the probe (the INT8 program is exported at one image size):
    :class:`QuantizationError` naming the shapes."""
    shape = tuple(batches[0].shape[1:])
    size = "×".join(map(str, shape))
    for i, b in enumerate(batches):
        if tuple(b.shape[1:]) != shape:
            raise QuantizationError(f"calibration batch {i} holds {'×'.join(map(str, b.shape[1:]))} images and batch "
                                    f"0's are {size}: give every batch one image size (the size the model will serve)")
    probe = torch.cat(batches) if probe is None else probe.detach().float().cpu()
    if probe.dim() != 4 or tuple(probe.shape[1:]) != shape:
        raise QuantizationError(f"probe has shape {tuple(probe.shape)}; it must be N×{size} like the calibration "
                                "images (held-out images, e.g. a validation batch)")
    return probe


def _check_runs(deploy: nn.Module, batches: List[torch.Tensor]) -> None:
    """:class:`QuantizationError` when the model cannot run the calibration images (another
    channel count or size than it takes), before any quantization."""
    try:
        with torch.no_grad():
            deploy(batches[0][:2])
    except (RuntimeError, ValueError, TypeError) as exc:
        size = "×".join(map(str, batches[0].shape[1:]))
        raise QuantizationError(f"the model does not run on the calibration images ({size}): "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; give images of the "
                                "model's input channels and size, normalised as for the fp32 model") from exc


def _check_thresholds(min_agreement: float, max_rel_error: float) -> None:
    """The self-check's bounds: ``min_agreement`` in [0, 1], ``max_rel_error`` > 0 (inf: none)."""
    for name, value, ok in (("min_agreement", min_agreement, lambda v: 0.0 <= v <= 1.0),
                            ("max_rel_error", max_rel_error, lambda v: v > 0)):  # inf: no bound; NaN fails both
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"{name}={value!r}: min_agreement is a top-1 agreement in [0, 1], max_rel_error a "
                             "relative error > 0 (inf: no bound; defaults: DEFAULT_MIN_AGREEMENT, DEFAULT_MAX_REL_ERROR)")


def _reference64(deploy: nn.Module, batches: List[torch.Tensor]) -> Tuple[List[torch.Tensor], float]:
    """The unchanged ``deploy`` model's outputs on ``batches`` computed in float64, and the largest
    relative error of its own fp32 evaluation against them: what folding and equalizing are judged by
    (they may change the fp32 model by about as much as fp32 evaluation already does — a model with
    large cancelling weights and biases, the very pattern folding removes, rounds far above 1e-5 —
    never by more)."""
    with torch.no_grad():
        exact = copy.deepcopy(deploy).double()
        ref64 = [exact(b.double()) for b in batches]
        del exact
        own = max(relative_error(r, deploy(b)) for r, b in zip(ref64, batches))
    return ref64, own


def _transform(deploy: nn.Module, batches: List[torch.Tensor], folded: List[Any], alpha: Optional[float],
               reference64: Optional[Tuple[List[torch.Tensor], float]]) -> Dict[str, Any]:
    """Step 3 in place on ``deploy`` (its constant channels already folded: ``folded``): equalize
    activations at strength ``alpha`` (``None``: off), then check both steps against
    ``reference64`` (:func:`_reference64` of the model before folding; ``None``: nothing was
    changed). Returns what was done (``folded``, ``equalize_alpha``, ``equalized`` and the float64
    check's figures). Raises :class:`QuantizationError` when the steps changed the model by more
    than fp32 evaluation itself does."""
    facts: Dict[str, Any] = {"folded": list(folded), "equalize_alpha": alpha, "equalized": []}
    if reference64 is None:
        return facts
    ref64, own = reference64
    if alpha is not None:
        facts["equalized"] = equalize_activations(deploy, batches, alpha=alpha)
    with torch.no_grad():
        fold_err = max(relative_error(r, deploy(b)) for r, b in zip(ref64, batches))
    limit = max(_FOLD_TOLERANCE, 4 * own)
    facts.update(fold_rel_error=fold_err, fp32_rel_error=own, fold_limit=limit)
    if fold_err > limit:
        raise QuantizationError(f"folding constant channels / equalizing activations changed the fp32 model by "
                                f"{fold_err:.3g} (relative to the unchanged model in float64; fp32 evaluation "
                                f"itself: {own:.3g}, limit {limit:.3g}); quantize with fold_constants=False, "
                                "equalize=None and report the model")
    return facts


def _convert(api: Dict[str, Any], deploy: nn.Module, batches: List[torch.Tensor], fp32_modules: Sequence[str],
             backend: str) -> torch.fx.GraphModule:
    """Step 4: ``torch.export`` (dynamic batch axis) → ``prepare_pt2e`` → calibration → ``convert_pt2e``."""
    example = torch.cat(batches)[:2]
    graph = torch.export.export(deploy, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    try:
        prepared = api["prepare_pt2e"](graph, api["quantizer"](fp32_modules))
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise QuantizationError(
            f"torchao could not annotate the exported graph for {backend} ({type(exc).__name__}: {exc}). A module "
            "instance called at several places (e.g. one nn.ReLU reused) is a known cause: give each call its own module"
        ) from exc
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return _drop_unused_parameters(api["convert_pt2e"](prepared))


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    *,
    backend: str = "x86_inductor",
    probe: Optional[torch.Tensor] = None,
    fold_constants: bool = True,
    equalize: Union[float, None, str] = "auto",
    fp32_modules: Sequence[str] = (),
    compile: bool = True,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
) -> Int8Model:
    """An INT8 CPU model of ``model`` through torchao's PT2E flow, self-checked (module docstring).

    ``calibration_batches``: ``N×C×H×W`` float tensors of normalised *training* images, in any
    form :func:`repan_zoo.convert.batch_images` takes (``(images, labels)`` pairs, Hugging Face
    ``pixel_values`` dicts); every one is run through the observers. ``probe``: the
    ``N×C×H×W`` batch of the self-check (held-out images, e.g. a validation split; default:
    the calibration images). ``fold_constants``: :func:`fold_constant_channels` first.
    ``equalize``: the SmoothQuant strength α of :func:`equalize_activations` (exact
    per-channel rescaling of every ``conv → ReLU → conv`` activation; ``None``: off), or ``"auto"``
    (the default): each of :data:`EQUALIZE_CANDIDATES` is quantized and the one whose eager INT8
    graph has the lowest relative error on the probe is kept (``check["equalize_trials"]`` holds
    each one's figures; the probe, never the test set, decides).
    ``fp32_modules``: names of submodules (``model.named_modules()``)
    left in fp32, e.g. the first convolution and the classifier, a standard remedy for layers
    that lose most under INT8. ``backend``: one of :data:`BACKENDS`. ``compile``: wrap the
    converted graph in ``torch.compile(..., dynamic=False)`` with inductor freezing (each new batch size compiles:
    tens of seconds on a small CPU). The caller's model is not changed.

    Returns an :class:`Int8Model` whose ``check`` holds the agreement (:func:`agreement`), the
    thresholds, the folded channels and the calibration size. Raises
    :class:`~repan_zoo.errors.MissingExtraError` without torchao,
    :class:`~repan_zoo.errors.QuantizationError` for a multi-branch model, unusable
    calibration batches, or a self-check below ``min_agreement`` / above ``max_rel_error``;
    ``ValueError`` for an unknown backend, an ``equalize`` string other than ``"auto"``, or
    thresholds out of range. Calibration images of several sizes, a probe of another shape or
    images the model cannot run are refused before quantizing.
    """
    api = _torchao()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}")
    if isinstance(equalize, str) and equalize != "auto":
        raise ValueError(f"equalize={equalize!r}: give a SmoothQuant strength in [0, 1], None (off) or 'auto'")
    _check_thresholds(min_agreement, max_rel_error)
    deploy = _deploy_copy(model)
    unknown = sorted(set(fp32_modules) - {n for n, _ in deploy.named_modules()})
    if unknown:
        raise QuantizationError(f"fp32_modules names no submodule of the deploy model: {unknown}; "
                                "use names from reparameterize(model).named_modules()")
    batches = _calibration(calibration_batches)
    probe = _probe_for(batches, probe)
    _check_runs(deploy, batches)
    with torch.no_grad():
        reference = deploy(probe)
    alphas = EQUALIZE_CANDIDATES if equalize == "auto" else (equalize,)
    # steps 2-3: the float64 reference and the folding are the same for every candidate: done once
    changes = fold_constants or any(a is not None for a in alphas)
    reference64 = _reference64(deploy, batches) if changes else None
    folded = fold_constant_channels(deploy, batches) if fold_constants else []
    trials = []
    for alpha in alphas:
        model_t = copy.deepcopy(deploy) if len(alphas) > 1 else deploy
        facts = _transform(model_t, batches, folded, alpha, reference64)
        converted = _convert(api, model_t, batches, fp32_modules, backend)
        if len(alphas) > 1:  # judged on the eager INT8 graph: the compiled one computes the same to rounding
            with torch.no_grad():
                facts["probe"] = agreement(reference, converted(probe))
        trials.append((facts, model_t, converted))
    facts, deploy, converted = min(trials, key=lambda t: t[0].get("probe", {}).get("rel_error", 0.0))
    choice = ({"equalize": "auto", "equalize_trials": [
        {"equalize_alpha": f["equalize_alpha"], **{k: f["probe"][k] for k in ("top1_agreement", "rel_error")}}
        for f, _, _ in trials]} if len(alphas) > 1 else {})
    facts.pop("probe", None)
    runner = torch.compile(converted, dynamic=False) if compile else converted  # static kernels per batch size
    with torch.no_grad(), _freezing():
        out = runner(probe)  # the first call compiles
    check = dict(agreement(reference, out), min_agreement=min_agreement, max_rel_error_allowed=max_rel_error,
                 backend=backend, compiled=bool(compile), calibration_images=sum(len(b) for b in batches),
                 calibration_batches=len(batches), fp32_modules=list(fp32_modules), **facts, **choice)
    _judge(check, "the INT8 model")
    return Int8Model(converted, runner, check, reference, float_model=deploy)


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
    from ..data import Normalize, calibration_batches as draw, load_splits

    splits = load_splits(dataset, data_dir, val_size=5000, split_seed=0, seed=seed, flip=False)
    norm = Normalize(mean if mean is not None else splits.mean, std if std is not None else splits.std)
    calibration = [norm(b) for b in draw(splits.train, batches, batch_size, seed=seed, cycle=0)]
    probe = norm(splits.val[torch.arange(min(probe_images, len(splits.val)))][0])
    return {"calibration": calibration, "probe": probe,
            "split": {"dataset": splits.name, "calibration": f"{sum(len(b) for b in calibration)} train-split images",
                      "probe": f"{len(probe)} validation images (training files, held out)"}}



"""Export that refuses half-fused graphs (issue 10, point 5): ONNX and TorchScript.

Every export goes the same way:

1. **fuse a copy**: :func:`repan_zoo.reparameterize` on a deep copy (verified against the
   caller's model, Eq. 1–2, 5); the caller's model is never touched;
2. **refuse** (:class:`~repan_zoo.errors.ExportError`) when a multi-branch block survived:
   a Rep block still in train form, a loose Rep branch, or a foreign module with a fusion
   method (``fuse`` / ``reparameterize`` / ``switch_to_deploy``, the hooks
   ``timm.utils.reparameterize_model`` calls) that still holds BatchNorm layers;
3. **export** to a temp file next to ``path``;
4. **run the exported file** (onnxruntime on CPU for ONNX, ``torch.jit.load`` for TorchScript)
   on the probe input (:func:`repan_zoo.verify.probe_input`) and on a one-sample slice of it
   (the batch axis is dynamic), and compare with torch: the relative error
   (:func:`repan_zoo.verify.relative_error`) against the fused copy (both inputs) *and*
   against the caller's own model (the probe) must stay within fp32 rounding (1e-5). The file's graph must also hold
   exactly as many convolutions as the fused model runs and no BatchNorm beyond those
   outside the Rep blocks — the "exported ONNX still held the unfused branches" failure;
5. only then move the file to ``path`` (:func:`repan_zoo.fileio.atomic_write`): a
   refused or failed export leaves no file behind.

ONNX goes through the ``torch.export``-based exporter (``dynamo=True``, the default of
``torch.onnx.export`` since torch 2.9; it needs ``onnxscript``); the deprecated TorchScript-based
exporter is available with ``dynamo=False``. TorchScript files are made with ``torch.jit.trace``
(torch ≥ 2.10 marks TorchScript as deprecated; the files still load with ``torch.jit.load``).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from .blocks import Branch, RepBlock
from .fileio import atomic_write, check_file_target, file_facts
from .convert import default_tolerance, reparameterize
from .errors import ExportError
from .extras import require_extra
from .verify import eval_mode, flatten_tensors, probe_input, relative_error, weights_device_dtype

__all__ = [
    "FUSION_HOOKS",
    "unfused_modules",
    "check_fully_fused",
    "export_onnx",
    "export_torchscript",
    "onnx_op_counts",
    "EXPORTERS",
]

#: method names that mark a module as re-parameterizable (the hooks ``timm.utils.reparameterize_model`` calls).
FUSION_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd)


def unfused_modules(model: nn.Module) -> List[Tuple[str, str]]:
    """``(qualified name, reason)`` of every module that still computes parallel branches.

    * a :class:`RepBlock` in train form;
    * a Rep :class:`~repan_zoo.blocks.Branch` anywhere (a deploy block holds none);
    * any other module that offers a fusion hook (:data:`FUSION_HOOKS`), holds no RepBlock
      (those are judged above) and still holds BatchNorm layers, e.g. a timm
      ``MobileOneBlock`` that nobody reparameterized.
    """
    found: List[Tuple[str, str]] = []
    for name, m in model.named_modules():
        label = name or "<model>"
        if isinstance(m, RepBlock):
            if not m.deploy:
                kinds = ["conv_kxk", *m.branch_kinds]
                found.append((label, f"RepBlock in train form with {len(kinds)} branches {kinds}"))
            elif m.trunk is not None or len(m.extras):
                found.append((label, "deploy RepBlock that still carries branch modules"))
            continue
        if isinstance(m, Branch):
            if not any(label.startswith(b + ".") for b, _ in found):
                found.append((label, f"loose Rep branch of kind {m.kind!r}"))
            continue
        hooks = [h for h in FUSION_HOOKS if callable(getattr(m, h, None))]
        inner = list(m.modules())
        if hooks and any(isinstance(c, _BN_TYPES) for c in inner) and not any(isinstance(c, RepBlock) for c in inner):
            found.append((label, f"{type(m).__name__} offers {hooks[0]}() but still holds BatchNorm layers"))
    return found


def check_fully_fused(model: nn.Module) -> None:
    """Raise :class:`ExportError` naming every module of ``model`` that still holds unfused branches."""
    found = unfused_modules(model)
    if not found:
        return
    listing = "; ".join(f"{name}: {why}" for name, why in found[:8])
    more = f" ... ({len(found)} in all)" if len(found) > 8 else ""
    raise ExportError(
        f"refusing to export a half-fused graph: {len(found)} module(s) still compute unfused branches "
        f"({listing}{more}). An exported file would carry the training-time branches. Make sure every "
        "RepBlock fuses (repan_zoo.reparameterize) and fuse foreign blocks with their own method or "
        "timm.utils.reparameterize_model(model) before exporting",
        modules=[name for name, _ in found],
    )


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Hide torch's own "TorchScript / legacy exporter is deprecated" notices during export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*")
        yield


# -- the shared part: a fused, checked copy and its torch reference outputs -----------------------


class _Prepared:
    """A fused copy of the caller's model on CPU, its probe input and the torch reference outputs."""

    def __init__(self, model: nn.Module, example_input: Any, input_size: Optional[Sequence[int]], batch_size: int,
                 tolerance: Optional[float]):
        model = unwrap_model(model)  # DataParallel / DDP / ModelEma / torch.compile: the model inside, as saved
        self.tolerance = default_tolerance(model) if tolerance is None else float(tolerance)
        probe = _make_probe(model, example_input, input_size, batch_size)
        deploy = reparameterize(model, inplace=False, verify=True, example_input=probe)
        check_fully_fused(deploy)
        self.fusion = dict(getattr(deploy, "repan_exactness", {}) or {})
        self.deploy = deploy.cpu().eval()
        self.probe = probe.detach().cpu()
        # inputs the exported file is run on: the probe, and one sample (proves the dynamic batch axis)
        self.inputs = [self.probe, self.probe[:1]]
        with torch.no_grad(), _count_calls(self.deploy) as self.calls:
            self.reference = [self._flat(self.deploy(self.probe))]
        with torch.no_grad():
            self.reference += [self._flat(self.deploy(x)) for x in self.inputs[1:]]
            with eval_mode(model):  # the caller's model, as it is (train form): end-to-end check on the probe
                self.source = self._flat(model(probe))

    @staticmethod
    def _flat(out: Any) -> List[torch.Tensor]:
        tensors = flatten_tensors(out)
        if not tensors:
            raise ExportError("the model returned no tensor; only models with tensor outputs can be exported")
        return [t.detach().float().cpu() for t in tensors]

    @property
    def num_outputs(self) -> int:
        return len(self.reference[0])

    def compare(self, outputs: Sequence[Sequence[torch.Tensor]], what: str) -> Tuple[float, float]:
        """Relative errors of ``outputs`` (one list per input) against the fused copy and the source model."""
        errs_deploy = []
        for got, ref in zip(outputs, self.reference):
            if len(got) != len(ref) or any(tuple(g.shape) != tuple(r.shape) for g, r in zip(got, ref)):
                raise ExportError(
                    f"{what} returned outputs of shapes {[tuple(g.shape) for g in got]}, torch returned "
                    f"{[tuple(r.shape) for r in ref]}; the export did not capture the model's forward"
                )
            errs_deploy += [relative_error(r, g) for g, r in zip(got, ref)]
        err = max(errs_deploy)
        err_src = max(relative_error(s, g) for g, s in zip(outputs[0], self.source))
        # against the original: the tolerance, or what the fusion certified on this probe by the float64
        # rule (reparameterize's: the fp32 gap is the train form's own rounding) plus the tolerance
        certified = (self.fusion.get("float64") or {}).get("model")
        src_bound = self.tolerance + (float(self.fusion.get("model_rel_error") or 0.0) if certified else 0.0)
        if not (err <= self.tolerance and err_src <= src_bound):
            raise ExportError(
                f"{what} differs from torch beyond fp32 rounding: max relative error {err:.3g} against the fused "
                f"model (tolerance {self.tolerance:g}) and {err_src:.3g} against the original (bound {src_bound:.3g}). "
                "No file was written. "
                + ("Try another opset / exporter, or report the model" if err > self.tolerance else
                   "The file computes the fused model; the fusion itself moved on the way: report the model"),
                rel_error=max(err, err_src),
            )
        return err, err_src

    def check_graph(self, convs: int, bns: int, what: str) -> None:
        """The exported graph runs exactly the fused model's convolutions and no extra BatchNorm."""
        want_convs, max_bns = self.calls["conv"], self.calls["bn"]
        if convs != want_convs or bns > max_bns:
            raise ExportError(
                f"{what} holds {convs} convolution(s) and {bns} BatchNorm node(s), but the fused model runs "
                f"{want_convs} convolution(s) and {max_bns} BatchNorm layer(s) outside its Rep blocks: "
                "the exported graph still carries unfused branches (or lost layers). No file was written"
            )


def _make_probe(model: nn.Module, example_input: Any, input_size: Optional[Sequence[int]], batch_size: int) -> torch.Tensor:
    if example_input is None and input_size is not None:
        size = tuple(int(s) for s in input_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"input_size={input_size!r}: give (channels, height, width), e.g. (3, 224, 224)")
        device, dtype = weights_device_dtype(model)
        gen = torch.Generator().manual_seed(0)
        example_input = torch.randn(batch_size, *size, generator=gen).to(device=device, dtype=dtype)
    probe = probe_input(model, example_input, batch_size=batch_size)
    if not isinstance(probe, torch.Tensor) or probe.dim() < 2:
        raise TypeError(
            f"export needs one batched input tensor (N, C, H, W); got {type(probe).__name__}. "
            "Pass example_input=torch.randn(2, C, H, W) or input_size=(C, H, W)"
        )
    return probe


@contextlib.contextmanager
def _count_calls(model: nn.Module) -> Iterator[Counter]:
    """Count the convolutions / BatchNorms that the forwards run inside the ``with`` (module calls)."""
    counts: Counter = Counter(conv=0, bn=0)
    handles = []
    for m in model.modules():
        kind = "conv" if _is_conv(m) else "bn" if isinstance(m, _BN_TYPES) else None
        if kind:
            handles.append(m.register_forward_hook(lambda *_a, kind=kind: counts.update([kind])))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _report(prep: _Prepared, fmt: str, path: os.PathLike, facts: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {
        "format": fmt,
        "path": os.fspath(path),
        **extra,
        "input_shape": list(prep.probe.shape),
        "dynamic_batch": True,
        "max_rel_error": facts.pop("rel_error"),
        "max_rel_error_vs_source": facts.pop("rel_error_source"),
        "tolerance": prep.tolerance,
        "fusion_exactness": prep.fusion,
        "conv_nodes": facts.pop("convs"),
        "batchnorm_nodes": facts.pop("bns"),
        **facts,
        "torch": torch.__version__,
    }


# -- ONNX ------------------------------------------------------------------------------------------


def onnx_op_counts(model_proto: Any) -> Counter:
    """Op types in an ONNX model, sub-graphs (If/Loop bodies) and local functions included.

    Args:
        model_proto: an ``onnx.ModelProto`` (``onnx.load(path)``).

    Returns:
        ``Counter`` of op type → number of nodes (``counts["Conv"]``, ``counts["BatchNormalization"]``).
    """
    counts: Counter = Counter()

    def walk(nodes: Any) -> None:
        for node in nodes:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model_proto.graph.node)
    for fn in model_proto.functions:
        walk(fn.node)
    return counts


def _run_onnx(path: str, inputs: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the thread budget the caller gave torch
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [[torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})] for x in inputs]


def export_onnx(
    model: nn.Module,
    path: os.PathLike,
    example_input: Optional[torch.Tensor] = None,
    *,
    input_size: Optional[Sequence[int]] = None,
    batch_size: int = 2,
    opset: Optional[int] = None,
    dynamo: bool = True,
    tolerance: Optional[float] = None,
) -> Dict[str, Any]:
    """Fuse a copy of ``model``, export it to ONNX at ``path`` and prove the file computes the model.

    ``example_input`` (a batch ``N×C×H×W``) or ``input_size`` ``(C, H, W)`` sets the probe input;
    by default it comes from the model's ``pretrained_cfg`` (:func:`repan_zoo.verify.probe_input`).
    The batch axis is dynamic. ``dynamo=True`` uses the ``torch.export``-based exporter,
    ``dynamo=False`` the legacy TorchScript-based one; ``opset`` ``None`` takes the exporter's default.

    Raises :class:`~repan_zoo.errors.MissingExtraError` (before any work) without the ``export``
    extra's onnx / onnxruntime (and onnxscript for ``dynamo=True``); :class:`ExportError` when a
    bfloat16 model (before any work: ONNX Runtime has no bfloat16 convolution), when a
    multi-branch block survives fusion, when the graph holds
    more convolutions / BatchNorms than the fused model runs, or when onnxruntime's output differs
    from torch beyond ``tolerance`` (fp32: 1e-5 relative); no file is left at ``path`` then.
    Returns a report: path, exporter, opset, input shape, max relative error (against the fused
    copy and the original model), node counts, file size and sha256.
    """
    require_extra("export", "ONNX export", ("onnx", "onnxruntime", *(("onnxscript",) if dynamo else ())))
    import onnx
    import onnxruntime

    check_file_target(path)  # a folder at ``path`` is named before the model is fused and exported
    _, dtype = weights_device_dtype(unwrap_model(model))
    if dtype == torch.bfloat16:
        raise ExportError("the model's weights are torch.bfloat16, and ONNX Runtime has no bfloat16 convolution to "
                          "check (or run) the file with: export model.float() (float32, the file is checked against "
                          "it) and convert the file's precision with ONNX tools if needed")
    prep = _Prepared(model, example_input, input_size, batch_size, tolerance)
    output_names = ["output"] if prep.num_outputs == 1 else [f"output_{i}" for i in range(prep.num_outputs)]
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        kwargs: Dict[str, Any] = dict(
            input_names=["input"], output_names=output_names, opset_version=opset, dynamo=dynamo, verbose=False,
        )
        if dynamo:
            kwargs.update(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        else:
            kwargs.update(dynamic_axes={name: {0: "batch"} for name in ["input", *output_names]})
        with _quiet_deprecations():
            torch.onnx.export(prep.deploy, (prep.probe,), tmp, **kwargs)
        proto = onnx.load(tmp)
        ops = onnx_op_counts(proto)
        facts["convs"], facts["bns"] = ops.get("Conv", 0), ops.get("BatchNormalization", 0)
        prep.check_graph(facts["convs"], facts["bns"], "the exported ONNX graph")
        facts["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and facts["opset"] != opset:  # the dynamo exporter falls back to its own opset
            raise ExportError(
                f"asked for ONNX opset {opset}, but the exporter wrote opset {facts['opset']} (torch.export's exporter "
                "writes its own opset and keeps it when it cannot convert the graph). No file was written. Use the "
                f"legacy exporter for opset {opset} (dynamo=False; `repan export --legacy-onnx`), or leave the opset "
                "to the exporter")
        facts["rel_error"], facts["rel_error_source"] = prep.compare(_run_onnx(tmp, prep.inputs), "onnxruntime")
        facts.update(file_facts(tmp))

    out = atomic_write(path, write)
    opset_used = facts.pop("opset")
    return _report(
        prep, "onnx", out, facts,
        exporter="torch.export (dynamo=True)" if dynamo else "torchscript-based (dynamo=False)",
        opset=opset_used, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
    )


# -- TorchScript -------------------------------------------------------------------------------------

_TS_CONV_OPS = {"aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution"}
_TS_BN_OPS = {"aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm"}


def _torchscript_op_counts(module: Any) -> Tuple[int, int]:
    kinds = Counter(node.kind() for node in module.inlined_graph.nodes())
    return sum(kinds[k] for k in _TS_CONV_OPS), sum(kinds[k] for k in _TS_BN_OPS)


def export_torchscript(
    model: nn.Module,
    path: os.PathLike,
    example_input: Optional[torch.Tensor] = None,
    *,
    input_size: Optional[Sequence[int]] = None,
    batch_size: int = 2,
    tolerance: Optional[float] = None,
) -> Dict[str, Any]:
    """Fuse a copy of ``model``, trace it (``torch.jit.trace``) to ``path`` and prove the file
    computes the model: ``torch.jit.load`` it back, run the probe input and a one-sample batch, and
    compare with torch. Same checks, errors and report as :func:`export_onnx`."""
    check_file_target(path)  # a folder at ``path`` is named before the model is fused and traced
    prep = _Prepared(model, example_input, input_size, batch_size, tolerance)
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        with _quiet_deprecations(), torch.no_grad():
            # strict=False records dict / list outputs (timm's feature_cls='dict'): their keys do not depend
            # on the input, and the file's outputs are checked against torch below
            traced = torch.jit.trace(prep.deploy, (prep.probe,), check_trace=False, strict=False)
            torch.jit.save(traced, tmp)
            loaded = torch.jit.load(tmp, map_location="cpu")
            facts["convs"], facts["bns"] = _torchscript_op_counts(loaded)
            prep.check_graph(facts["convs"], facts["bns"], "the traced TorchScript graph")
            outputs = [_Prepared._flat(loaded(x)) for x in prep.inputs]
        facts["rel_error"], facts["rel_error_source"] = prep.compare(outputs, "the TorchScript file")
        facts.update(file_facts(tmp))

    out = atomic_write(path, write)
    return _report(prep, "torchscript", out, facts, exporter="torch.jit.trace")


#: format name → export function (the ``repan export --format`` choices).
EXPORTERS: Dict[str, Callable[..., Dict[str, Any]]] = {"onnx": export_onnx, "torchscript": export_torchscript}

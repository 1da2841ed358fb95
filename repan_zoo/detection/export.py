"""Export of the deployed detector: TorchScript and ONNX, each file run and compared.

Both exports start like :mod:`repan_zoo.export`: reparameterize a copy of the detector
(:func:`repan_zoo.reparameterize`, verified), refuse a half-fused graph
(:func:`repan_zoo.export.check_fully_fused`), write to a temp file, load the file back, run
it on probe images and compare with torch, and only then move it to ``path``
(:func:`repan_zoo.fileio.atomic_write`); a failed comparison raises
:class:`~repan_zoo.errors.ExportError` and leaves no file.

* ``part="full"`` — the whole detector, pre- and post-processing included:
  TorchScript by ``torch.jit.script`` (torchvision's detectors are scriptable; the scripted
  model returns ``(losses, detections)``), ONNX by the TorchScript-based exporter
  (``dynamo=False``, one image ``[C, H, W]`` in, ``boxes``/``scores``/``labels`` out, dynamic
  height/width). The ``torch.export``-based exporter (``dynamo=True``) cannot export them: it
  stops at the data-dependent number of boxes in torchvision's ``batched_nms``. Detections are
  compared as sets (:func:`repan_zoo.detection.compare.match_detections`), the TorchScript
  file's FPN features directly.
* ``part="dense"`` — backbone + FPN + head up to the raw head outputs (RetinaNet: class logits
  and box regression per anchor; Faster R-CNN: the RPN's objectness and box deltas), one
  normalised batch ``[N, C, H, W]`` in: :func:`repan_zoo.export.export_onnx` /
  ``export_torchscript`` with their conv/BN node counts and dynamic batch axis. Anchor
  decoding and NMS are then the caller's.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..fileio import atomic_write, check_file_target, file_facts
from ..convert import reparameterize
from ..errors import ExportError
from ..extras import require_extra
from ..export import check_fully_fused, export_onnx, export_torchscript, onnx_op_counts
from .compare import NEAR_TIE_FLIPS, detections_match, feature_error, feature_noise, match_detections
from .detectors import probe_images
from .rep import calibration_batches

__all__ = ["DenseDetector", "export_detector", "FORMATS", "PARTS"]

FORMATS = ("torchscript", "onnx")
PARTS = ("full", "dense")


class DenseDetector(nn.Module):
    """Backbone + FPN + head of a torchvision detector, up to the raw head outputs.

    ``forward(batch)`` takes a normalised, padded batch (what ``detector.transform`` makes) and
    returns a tuple: the FPN maps, then RetinaNet's ``cls_logits`` and ``bbox_regression``, or
    Faster R-CNN's RPN objectness maps and box-delta maps (one per level).
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.retinanet = hasattr(detector, "head") and hasattr(detector.head, "classification_head")
        self.head = detector.head if self.retinanet else detector.rpn.head

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = list(self.backbone(x).values())
        if self.retinanet:
            out = self.head(feats)
            return tuple(feats) + (out["cls_logits"], out["bbox_regression"])
        objectness, deltas = self.head(feats)
        return tuple(feats) + tuple(objectness) + tuple(deltas)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _deploy_copy(detector: nn.Module) -> nn.Module:
    deploy = reparameterize(detector, inplace=False, verify=True)  # the package's probe (verify.probe_input)
    check_fully_fused(deploy)
    return deploy.cpu().eval()


def _check(report: Dict[str, Any], what: str, tolerance: float) -> None:
    if not detections_match(report, tolerance=tolerance, max_flips=NEAR_TIE_FLIPS):
        raise ExportError(
            f"{what} does not reproduce the detector: {report}. No file was written. Try another opset, "
            "or export part='dense' (backbone + FPN + head outputs) and decode the boxes yourself",
            rel_error=max(report["feature_rel_error"], report["box_rel_error"], report["score_abs_error"]),
        )


def _export_full_torchscript(detector: nn.Module, deploy: nn.Module, images: List[torch.Tensor], path: os.PathLike,
                             tolerance: float) -> Dict[str, Any]:
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        with _quiet(), torch.no_grad():
            torch.jit.script(deploy).save(tmp)
            loaded = torch.jit.load(tmp, map_location="cpu").eval()
            _, got = loaded(images)
            batch = calibration_batches(deploy, images, len(images))[0]
            ref_feats, new_feats = deploy.backbone(batch), loaded.backbone(batch)
        with torch.no_grad():
            ref = deploy(images)
            src = _eval_outputs(detector, images)
        from ..verify import relative_error

        vs_deploy = {"feature_rel_error": max(relative_error(ref_feats[k], new_feats[k]) for k in ref_feats),
                     **match_detections(ref, got)}
        vs_source = {"feature_rel_error": feature_error(detector, deploy, images),
                     "feature_noise": feature_noise(detector, images), **match_detections(src, got)}
        _check(vs_deploy, "the TorchScript file", tolerance)
        _check(vs_source, "the TorchScript file (against the unfused detector)", tolerance)
        facts.update(vs_deploy=vs_deploy, vs_source=vs_source, **file_facts(tmp))

    atomic_write(path, write)
    return facts


@torch.no_grad()
def _eval_outputs(detector: nn.Module, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
    from ..verify import eval_mode

    device = next(detector.parameters()).device
    with eval_mode(detector):
        out = detector([img.to(device) for img in images])
    return [{k: v.cpu() for k, v in o.items()} for o in out]


@torch.no_grad()
def _conv_calls(model: nn.Module, image: torch.Tensor) -> int:
    """Convolutions one forward of the detector on one image runs (module calls)."""
    calls = [0]
    handles = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model([image])
    finally:
        for h in handles:
            h.remove()
    return calls[0]


def _export_full_onnx(detector: nn.Module, deploy: nn.Module, images: List[torch.Tensor], path: os.PathLike,
                      tolerance: float, opset: int) -> Dict[str, Any]:
    import onnxruntime as ort

    with torch.no_grad():
        ref = deploy(images)
    src = _eval_outputs(detector, images)
    keys = list(ref[0].keys())  # RetinaNet: boxes, scores, labels; Faster R-CNN: boxes, labels, scores
    want_convs = _conv_calls(deploy, images[0])
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        axes = {"image": {1: "height", 2: "width"}, **{k: {0: "detections"} for k in keys}}
        with _quiet():
            torch.onnx.export(deploy, ([images[0]],), tmp, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=keys, dynamic_axes=axes)
        import onnx

        convs = onnx_op_counts(onnx.load(tmp)).get("Conv", 0)
        if convs != want_convs:
            raise ExportError(f"the exported ONNX graph holds {convs} Conv node(s), but the fused detector runs "
                              f"{want_convs} convolution(s): the graph does not compute the fused model. No file was written")
        facts["conv_nodes"] = convs
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = []
        for img in images:
            outs = session.run(None, {"image": img.numpy()})
            got.append({k: torch.from_numpy(v) for k, v in zip(keys, outs)})
        # the file computes detections only: its features are those of the fused copy by construction
        vs_deploy = {"feature_rel_error": 0.0, **match_detections(ref, got)}
        vs_source = {"feature_rel_error": feature_error(detector, deploy, images),
                     "feature_noise": feature_noise(detector, images), **match_detections(src, got)}
        _check(vs_deploy, "the ONNX file (onnxruntime)", tolerance)
        _check(vs_source, "the ONNX file (onnxruntime, against the unfused detector)", tolerance)
        facts.update(vs_deploy=vs_deploy, vs_source=vs_source, outputs=keys, **file_facts(tmp))

    atomic_write(path, write)
    return facts


def _checked_images(detector: nn.Module, images: Any) -> Sequence[torch.Tensor]:
    """``images`` if they are probe images the detector takes: a non-empty list of float ``[C, H, W]``
    tensors with the detector's input channels; ``ValueError`` naming the first that is not."""
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise ValueError(f"images: give a list of [C, H, W] tensors (torchvision's detector input), got a "
                         f"{type(images).__name__}{' of shape ' + str(tuple(images.shape)) if isinstance(images, torch.Tensor) else ''}")
    if not images:
        raise ValueError("images: give at least one image [C, H, W] in [0, 1] (or None: seeded random images)")
    channels = ((getattr(detector, "pretrained_cfg", None) or {}).get("input_size") or (None,))[0]
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"images: image {i} has shape {shape}; an image is [C, H, W]")
        if not img.is_floating_point():
            raise ValueError(f"images: image {i} holds {img.dtype}; give float images in [0, 1] (e.g. x.float() / 255)")
        if channels is not None and img.shape[0] != channels:
            raise ValueError(f"images: image {i} has {img.shape[0]} channel(s) and the detector takes {channels}")
    return images


def export_detector(
    detector: nn.Module,
    path: os.PathLike,
    *,
    fmt: str = "torchscript",
    part: str = "full",
    images: Optional[Sequence[torch.Tensor]] = None,
    opset: int = 17,
    tolerance: float = 1e-5,
) -> Dict[str, Any]:
    """Reparameterize a copy of ``detector`` and export it (see the module docstring).

    ``images``: probe images ``[C, H, W]`` in [0, 1] (default: two seeded images of the
    detector's input size); a list that is empty or holds anything else is a ``ValueError``,
    and so is a folder at ``path`` (``IsADirectoryError``), before the detector is fused. Returns a report (format, part, exporter, errors against the fused
    copy and the unfused detector, file size and sha256). The caller's detector is not changed.
    ONNX without the ``export`` extra: :class:`~repan_zoo.errors.MissingExtraError`, before any work.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: choose one of {FORMATS}")
    if part not in PARTS:
        raise ValueError(f"part={part!r}: choose one of {PARTS}")
    if fmt == "onnx":
        require_extra("export", "ONNX export of a detector", ("onnx", "onnxruntime"))
    check_file_target(path)
    images = [img.detach().cpu() for img in (_checked_images(detector, images) if images is not None
                                             else probe_images(detector))]
    deploy = _deploy_copy(detector)
    report: Dict[str, Any] = {"format": fmt, "part": part, "path": os.fspath(path),
                              "fusion_exactness": dict(getattr(deploy, "repan_exactness", {}) or {})}
    if part == "dense":
        batch = calibration_batches(deploy, images, len(images))[0]
        exporter = export_onnx if fmt == "onnx" else export_torchscript
        with _quiet():
            inner = exporter(DenseDetector(deploy), path, example_input=batch, tolerance=tolerance)
        report.update(exporter=inner.get("exporter"), dense=inner)
        return report
    if fmt == "torchscript":
        report.update(exporter="torch.jit.script", **_export_full_torchscript(detector, deploy, images, path, tolerance))
    else:
        report.update(exporter="torch.onnx.export(dynamo=False)", opset=opset,
                      **_export_full_onnx(detector, deploy, images, path, tolerance, opset))
    return report

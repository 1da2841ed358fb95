"""``repan export MODEL --out FILE``: fuse a copy, export it (ONNX / TorchScript, or an INT8
``torch.export`` program with ``--int8``) and check the written file against torch.

``export`` refuses half-fused graphs and writes the file only once it checked out
(:mod:`repan_zoo.export`); ``--int8`` quantizes with torchao's PT2E flow, calibrated on the
dataset's training images (:func:`repan_zoo.quantize.export_int8`, extra ``repan-zoo[quant]``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..cli_types import number, writable_file
from ..errors import ExportError
from .model_options import add_model_options, model_from_args, weights_of

NAME = "export"
HELP = "fuse a copy, export (ONNX / TorchScript / INT8) and check the file against torch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="file format (default: from the --out name: .onnx → onnx, .pt / .ts → torchscript; else onnx)")
    p.add_argument("--out", required=True, type=writable_file, metavar="PATH",
                   help="file to write (written only once it checked out)")
    p.add_argument("--batch-size", type=number(int, 1), default=2, help="probe batch size (the batch axis stays dynamic)")
    p.add_argument("--opset", type=number(int, 7), help="ONNX opset (default: the exporter's)")
    p.add_argument("--legacy-onnx", action="store_true",
                   help="use torch's deprecated TorchScript-based ONNX exporter instead of torch.export")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    q = p.add_argument_group("INT8 (--int8: torchao PT2E, x86 CPU; needs repan-zoo[quant])")
    q.add_argument("--int8", action="store_true",
                   help="write an INT8 torch.export program (.pt2) instead of --format, self-checked against fp32")
    q.add_argument("--dataset", default="fashion_mnist", help="calibration dataset (its training files only)")
    q.add_argument("--data-dir", help="dataset folder (default: the dataset's standard location)")
    q.add_argument("--calib-batches", type=number(int, 1), default=32, help="calibration batches of training images")
    q.add_argument("--calib-batch-size", type=number(int, 1), default=64)
    q.add_argument("--probe-images", type=number(int, 2), default=512,
                   help="held-out validation images of the self-check")
    q.add_argument("--equalize", type=number(float, 0.0, 1.0, none=True, words=("auto",)), default="auto",
                   metavar="ALPHA", help="SmoothQuant strength of the activation equalization in [0, 1], 'none', or "
                                         "'auto' (the default: 0.5 or none, whichever is closer to fp32 on the probe)")
    q.add_argument("--fp32-module", dest="fp32_modules", action="append", default=[], metavar="NAME",
                   help="leave this submodule in fp32 (repeatable; names as in the deploy model's named_modules())")


def run(args: argparse.Namespace) -> int:
    """Export and print the check (one line, or the JSON report)."""
    from ..export import export_onnx, export_torchscript

    fmt = export_format(args.out, args.format, args.int8)
    model = model_from_args(args)
    weights = weights_of(args, model)
    if fmt == "int8":
        return _export_int8(model, args, weights)
    common = dict(input_size=args.input_size, batch_size=args.batch_size)
    if fmt == "onnx":
        report = export_onnx(model, args.out, opset=args.opset, dynamo=not args.legacy_onnx, **common)
    else:
        report = export_torchscript(model, args.out, **common)
    report["weights"] = weights
    _warn_if_random(weights, args.model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        shape = "×".join(map(str, report["input_shape"]))
        opset = f", opset {report['opset']}" if "opset" in report else ""
        print(
            f"wrote {report['path']} ({report['format']}{opset}, probe {shape}, dynamic batch): "
            f"max relative error {report['max_rel_error']:.2g} vs the fused model, "
            f"{report['max_rel_error_vs_source']:.2g} vs {args.model} (tolerance {report['tolerance']:g}); "
            f"{report['conv_nodes']} conv, {report['batchnorm_nodes']} BatchNorm nodes; weights {_said(weights)}; "
            f"sha256 {report['sha256']}"
        )
    return 0


#: file-name suffix → the format it names
SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pt2": "int8"}


def export_format(out: str, fmt: Optional[str], int8: bool) -> str:
    """The format to write: ``int8`` with ``--int8``, else ``--format``, else the one the ``--out``
    name says (``onnx`` when it says none). Raises :class:`~repan_zoo.errors.ExportError` when the
    options and the name disagree (an ONNX file named ``.pt`` helps no one)."""
    named = SUFFIX_FORMATS.get(Path(out).suffix.lower())
    if int8:
        if fmt is not None:
            raise ExportError(f"--int8 writes a torch.export program, not --format {fmt}; drop one of the two")
        if named not in (None, "int8"):
            raise ExportError(f"--int8 writes a torch.export program, but --out {out} is named as a {named} file; "
                              "name it .pt2")
        return "int8"
    if named == "int8":
        raise ExportError(f"--out {out} is named as a torch.export program (.pt2), which --int8 writes; add --int8, "
                          "or name the file .onnx / .pt")
    if fmt is not None and named is not None and named != fmt:
        raise ExportError(f"--format {fmt} but --out {out} is named as a {named} file; drop --format (the name "
                          "decides) or rename the file")
    return fmt or named or "onnx"


def _warn_if_random(weights, model: str) -> None:
    """Once the file is written (a refusal stays one line): a file of freshly initialised weights is said so."""
    if weights["source"] == "random init":
        print(f"repan export: warning: no --pretrained or --checkpoint, so the file holds {model}'s random initial "
              "weights (fine for timing or a graph check, not for predictions)", file=sys.stderr, flush=True)


def _said(weights) -> str:
    """The weights of :func:`~repan_zoo.cli.model_options.weights_of` in a few words."""
    if weights["source"] == "checkpoint":
        return weights["path"]
    if weights["source"] == "pretrained":
        return f"{weights['pretrained'].get('name', 'pretrained')} (sha256 {weights['pretrained'].get('sha256', '?')[:12]}…)"
    return weights["source"]


def _export_int8(model, args: argparse.Namespace, weights) -> int:
    import torch.nn as nn

    from ..quantize import calibration_data, export_int8

    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    norm = {k: cfg[k] for k in ("mean", "std") if len(cfg.get(k) or ()) == chans}  # else the dataset's own
    data = calibration_data(args.dataset, args.data_dir, batches=args.calib_batches, batch_size=args.calib_batch_size,
                            probe_images=args.probe_images, **norm)
    report = export_int8(model, args.out, data["calibration"], probe=data["probe"], equalize=args.equalize,
                         fp32_modules=args.fp32_modules)
    report["data"] = data["split"]
    report["weights"] = weights
    _warn_if_random(weights, args.model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        c = report["check"]
        print(
            f"wrote {report['path']} (INT8 torch.export program, dynamic batch): top-1 agreement with fp32 "
            f"{c['top1_agreement']:.3f}, relative error {c['rel_error']:.3f} on {c['probe_images']} held-out images; "
            f"calibrated on {c['calibration_images']} training images; {len(c['folded'])} layer(s) with constant "
            f"channels folded, {len(c['equalized'])} activation(s) equalized; weights {_said(weights)}; "
            f"sha256 {report['sha256']}"
        )
    return 0

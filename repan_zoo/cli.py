"""The ``repan`` console command.

::

    repan list [PATTERN] [--pretrained]
    repan export MODEL --format onnx|torchscript --out PATH [--checkpoint FILE] [--input-size C H W]
    repan export MODEL --int8 --out PATH.pt2 [--dataset fashion_mnist] [--data-dir DIR] [--calib-batches N]
    repan profile MODEL [--input-size C H W] [--batch-size N] [--threads T] [--json]

Models come from ``timm.create_model(MODEL, ...)`` once ``repan_zoo.models`` has registered the
``repan_*`` families. ``--checkpoint`` loads a typed safetensors file strictly, in either form
(:func:`repan_zoo.checkpoint.load_into`). ``export`` fuses a copy, refuses half-fused graphs and
checks the written file against torch (:mod:`repan_zoo.export`); ``export --int8`` quantizes
with torchao's PT2E flow, calibrated on the dataset's training images, and writes a checked
``torch.export`` program (:func:`repan_zoo.quantize.export_int8`, extra ``repan-zoo[quant]``); ``profile`` measures the train and
the deploy form (:mod:`repan_zoo.profile`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from .cli_types import OneLineParser, number, writable_file_problem

__all__ = ["main", "build_parser", "create_model", "list_models"]

MODEL_PREFIX = "repan_"


def list_models(pattern: str = MODEL_PREFIX + "*", pretrained: bool = False) -> List[str]:
    """Registered ``repan_*`` model names matching ``pattern`` (timm wildcards)."""
    import timm

    from . import models  # noqa: F401  (registers the repan_* families with timm)

    return [name for name in timm.list_models(pattern, pretrained=pretrained) if name.startswith(MODEL_PREFIX)]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    input_size: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    model_args: Sequence[str] = (),
):
    """``timm.create_model(name, ...)`` with the CLI's options; ``checkpoint`` is loaded strictly
    (train or deploy form, converted exactly). ``input_size`` ``(C, H, W)`` sets ``in_chans=C``."""
    import timm

    from . import models  # noqa: F401  (registers the repan_* families with timm)
    from .checkpoint import load_into, read_checkpoint
    from .cli_types import check_model_name

    kwargs: Dict[str, Any] = {}
    for item in model_args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg {item!r}: write KEY=VALUE, e.g. --model-arg drop_rate=0.1")
        kwargs[key] = _parse_value(value)
    if input_size is not None:
        kwargs.setdefault("in_chans", int(input_size[0]))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    check_model_name(name)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Hub errors of timm's own hf-hub: fetch become ours
        from .hub.download import translate_hub_error

        mapped = translate_hub_error(exc, name) if name.startswith("hf-hub:") else exc
        if mapped is exc:
            raise
        raise mapped from exc
    if checkpoint:
        state_dict, metadata = read_checkpoint(checkpoint)
        load_into(model, state_dict, metadata, what=checkpoint)
    return model.eval()


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name, e.g. repan_repvgg_a0 (see `repan list`)")
    p.add_argument("--checkpoint", metavar="FILE", help="typed safetensors checkpoint (train or deploy form)")
    p.add_argument("--pretrained", action="store_true", help="load the published weights (hub, sha256-checked)")
    p.add_argument("--input-size", nargs=3, type=number(int, 1), metavar=("C", "H", "W"),
                   help="input channels, height, width (default: the model's pretrained_cfg)")
    p.add_argument("--num-classes", type=number(int, 0), help="classifier size (must match --checkpoint)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model keyword (VALUE parsed as JSON when it can be); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="repan", description="RepAn Zoo: list, export and profile repan_* models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered repan_* models")
    p.add_argument("pattern", nargs="?", default=MODEL_PREFIX + "*", help="timm wildcard (default: repan_*)")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")

    p = sub.add_parser("export", help="fuse a copy, export (ONNX / TorchScript) and check the file against torch")
    _add_model_options(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (written only once it checked out)")
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

    p = sub.add_parser("profile", help="params, FLOPs and CPU latency of the train and the deploy form")
    _add_model_options(p)
    p.add_argument("--batch-size", type=number(int, 1), default=1)
    p.add_argument("--threads", type=number(int, 1), default=1, help="intra-op CPU threads while timing")
    p.add_argument("--repeats", type=number(int, 1), default=20)
    p.add_argument("--warmup", type=number(int, 0), default=3)
    p.add_argument("--json", action="store_true", help="print the measurements as JSON instead of a table")
    return parser


def _model_from(args: argparse.Namespace):
    return create_model(
        args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, input_size=args.input_size,
        num_classes=args.num_classes, model_args=args.model_arg,
    )


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"no repan model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, export_torchscript

    model = _model_from(args)
    if args.int8:
        return _export_int8(model, args)
    common = dict(input_size=args.input_size, batch_size=args.batch_size)
    if args.format == "onnx":
        report = export_onnx(model, args.out, opset=args.opset, dynamo=not args.legacy_onnx, **common)
    else:
        report = export_torchscript(model, args.out, **common)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        shape = "×".join(map(str, report["input_shape"]))
        opset = f", opset {report['opset']}" if "opset" in report else ""
        print(
            f"wrote {report['path']} ({report['format']}{opset}, probe {shape}, dynamic batch): "
            f"max relative error {report['max_rel_error']:.2g} vs the fused model, "
            f"{report['max_rel_error_vs_source']:.2g} vs {args.model} (tolerance {report['tolerance']:g}); "
            f"{report['conv_nodes']} conv, {report['batchnorm_nodes']} BatchNorm nodes; sha256 {report['sha256']}"
        )
    return 0


def _export_int8(model, args: argparse.Namespace) -> int:
    import torch.nn as nn

    from .quantize import calibration_data, export_int8

    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    norm = {k: cfg[k] for k in ("mean", "std") if len(cfg.get(k) or ()) == chans}  # else the dataset's own
    data = calibration_data(args.dataset, args.data_dir, batches=args.calib_batches, batch_size=args.calib_batch_size,
                            probe_images=args.probe_images, **norm)
    report = export_int8(model, args.out, data["calibration"], probe=data["probe"])
    report["data"] = data["split"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        c = report["check"]
        print(
            f"wrote {report['path']} (INT8 torch.export program, dynamic batch): top-1 agreement with fp32 "
            f"{c['top1_agreement']:.3f}, relative error {c['rel_error']:.3f} on {c['probe_images']} held-out images; "
            f"calibrated on {c['calibration_images']} training images; {len(c['folded'])} layer(s) with constant "
            f"channels folded; sha256 {report['sha256']}"
        )
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profile import forms_markdown, profile_forms

    model = _model_from(args)
    result = profile_forms(
        model, args.input_size, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        threads=args.threads,
    )
    result["model"] = args.model
    print(json.dumps(result, indent=2) if args.json else forms_markdown([result]))
    return 0


_COMMANDS = {"list": _cmd_list, "export": _cmd_export, "profile": _cmd_profile}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``repan`` console script; returns the exit status: 0 done, 1 ``list``
    matched nothing, 2 a refused command (bad option, model, checkpoint or weights: one line on
    stderr, nothing written)."""
    from .errors import RepanError

    parser = build_parser()
    args = parser.parse_args(argv)
    problem = writable_file_problem(args.out) if getattr(args, "out", None) else None
    if problem:
        parser.error(f"argument --out: {problem}")
    try:
        return _COMMANDS[args.command](args)
    except (RepanError, ValueError) as exc:
        print(f"repan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

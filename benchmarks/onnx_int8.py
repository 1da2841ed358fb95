"""ONNX Runtime's INT8 route (issue 18, build point 3), measured beside torch: the shipped checkpoints
exported with :func:`repan_zoo.export.export_onnx` (checked), quantized by onnxruntime's static
QDQ quantizer (per-channel int8 weights, uint8 activations, calibrated on the same training-split
images as :func:`repan_zoo.quantize.quantize`), timed at 1 thread against ORT fp32 and torch fp32 eager.

    OMP_NUM_THREADS=1 python benchmarks/onnx_int8.py --out benchmarks/results/onnx_int8_shipped.json

Run it with no training on the machine (time it through a SIGSTOP wrapper as inference.py is).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import timm
import torch

import repan_zoo
from repan_zoo.export import export_onnx
from repan_zoo.fileio import atomic_write
from repan_zoo.manifest import load_manifest
from repan_zoo.profile import cpu_name
from repan_zoo.quantize import agreement, calibration_data, equalize_activations, fold_constant_channels


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time(fns: Dict[str, object], repeats: int, warmup: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for k, fn in fns.items():  # interleaved
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 64 training images")
    ap.add_argument("--transforms", action=argparse.BooleanOptionalAction, default=True,
                    help="fold constant channels and equalize activations at alpha 0.5 (repan_zoo.quantize's pre-steps, "
                         "with its equalized candidate) before export")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.set_num_threads(args.threads)
    rows = []
    for entry in load_manifest().values():
        model = repan_zoo.reparameterize(timm.create_model(entry.name, pretrained=True).eval())
        data = calibration_data("fashion_mnist", mean=entry.mean, std=entry.std, batches=args.calib_batches,
                                batch_size=64, probe_images=512)
        x = data["probe"][:args.batch].contiguous()
        exported = model
        if args.transforms:  # quantize()'s pre-steps: constant channels folded, activations equalized (alpha 0.5)
            import copy

            exported = copy.deepcopy(model)
            fold_constant_channels(exported, data["calibration"])
            equalize_activations(exported, data["calibration"])
        with tempfile.TemporaryDirectory() as tmp:
            fp32, pre, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            export_onnx(exported, fp32, x[:2])
            quant_pre_process(str(fp32), str(pre))
            name = _session(pre, 1).get_inputs()[0].name

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(data["calibration"])

                def get_next(self):
                    batch = next(self.it, None)
                    return None if batch is None else {name: batch.numpy()}

            quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            s32, s8 = _session(pre, args.threads), _session(int8, args.threads)
            feed = {name: x.numpy()}
            with torch.inference_mode():
                ref = model(data["probe"])
            check = agreement(ref, torch.from_numpy(s8.run(None, {name: data["probe"].numpy()})[0]))
            with torch.inference_mode():
                times = _time({"ort_int8": lambda: s8.run(None, feed), "ort_fp32": lambda: s32.run(None, feed),
                               "torch_fp32": lambda: model(x)}, args.repeats, args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": entry.name, "input": list(x.shape), "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                     "ort_int8_vs": {k: round(med[k] / med["ort_int8"], 3) for k in med if k != "ort_int8"},
                     "check": {k: round(v, 4) if isinstance(v, float) else v for k, v in check.items()}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"benchmark": "ONNX Runtime static QDQ INT8 vs ORT fp32 vs torch fp32 eager (shipped checkpoints)",
              "config": {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                         "onnxruntime": ort.__version__, "torch": torch.__version__, "cpu": cpu_name(), "calibration_images": 64 * args.calib_batches,
                         "fold_and_equalize": args.transforms,
                         "statistic": "median time per batch, interleaved runs", "conditions": args.note},
              "results": rows}
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    return result


def markdown(result: Dict) -> str:
    """README table of one result file."""
    lines = ["| checkpoint | input | ORT INT8 ms | ORT fp32 ms | torch fp32 eager ms | ORT INT8 vs torch fp32 | agreement / rel. error |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        m, c = r["median_ms"], r["check"]
        lines.append(f"| {r['model']} | {'×'.join(map(str, r['input']))} | {m['ort_int8']:.1f} | {m['ort_fp32']:.1f} | "
                     f"{m['torch_fp32']:.1f} | {r['ort_int8_vs']['torch_fp32']:.2f}× | {c['top1_agreement']:.3f} / {c['rel_error']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""INT8 vs fp32 test top-1 of every shipped checkpoint (issue 18), re-runnable for whatever is shipped.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py [--update-manifest] [--only MODEL.TAG ...]

For each entry of ``weights_manifest/`` (those whose weights load: bundled always, Hub ones when
cached or online) the script builds ``timm.create_model("<model>.<tag>", pretrained=True)``,
quantizes it with :func:`repan_zoo.quantize.quantize` (torchao PT2E, ``X86InductorQuantizer``,
compiled with inductor freezing) calibrated on ``--calib-batches`` × ``--calib-batch-size``
images of the *training split* and self-checked on ``--probe-images`` held-out validation images
(both from the training files: :func:`repan_zoo.quantize.calibration_data`), and measures fp32 and
INT8 top-1 on the full Fashion-MNIST *test* set with the entry's mean/std. ``--sweep`` also scores the
eager INT8 graph for several calibration sizes (the remedy that mattered for MobileOne-S0). Arms:

``int8``              the shipped recipe (:func:`~repan_zoo.quantize.quantize`'s defaults: constant-channel
                      folding, activation equalization at alpha 0.5 or none, whichever the probe prefers);
``int8_no_fold``      the same without folding,
``int8_equalize``     always equalized (alpha 0.5), and
``int8_no_equalize``  never equalized (``--arms``), all three measured with the self-check's thresholds
                      lifted so that a refused model can still be scored (its check is recorded).

Writes ``benchmarks/results/int8_accuracy.json``; ``--update-manifest`` records the ``int8`` arm as
``metrics.fashion_mnist_int8`` of each entry (``repan_zoo.manifest.write_entry``). Exit 1 when an
entry's INT8 top-1 is more than ``--bar`` points below its fp32 top-1 or its check failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict

import timm
import torch

import repan_zoo  # noqa: F401  (registers the models)
from repan_zoo.checkpoint import atomic_write
from repan_zoo.data import Normalize, load_splits
from repan_zoo.errors import WeightsError
from repan_zoo.manifest import load_manifest, write_entry
from repan_zoo.metrics import top1
from repan_zoo.quantize import calibration_data, quantize

OUT = Path(__file__).resolve().parent / "results" / "int8_accuracy.json"
#: arm → quantize() options; every arm but the shipped one is scored with the self-check's thresholds lifted
ARMS = {"int8": {}, "int8_no_fold": {"fold_constants": False}, "int8_equalize": {"equalize": 0.5},
        "int8_no_equalize": {"equalize": None}}
COMMAND = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py --update-manifest"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: Debian's location)")
    p.add_argument("--calib-batches", type=int, default=32)
    p.add_argument("--calib-batch-size", type=int, default=64)
    p.add_argument("--probe-images", type=int, default=512)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--sweep", type=int, nargs="*", default=[8, 16, 32, 64], metavar="BATCHES",
                   help="also score the eager INT8 graph (folding on) calibrated on each of these numbers of batches")
    p.add_argument("--no-compile", action="store_true", help="score the eager reference-quantized graph instead")
    p.add_argument("--bar", type=float, default=0.5, help="allowed INT8 drop in top-1 points")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--update-manifest", action="store_true", help="write metrics.fashion_mnist_int8 of each entry")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--only", nargs="+", default=None, metavar="MODEL.TAG",
                   help="measure these entries only; the rows of the other listed entries are kept from --out "
                        "(rows of entries no longer in the manifest are dropped)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import torchao

    test = load_splits("fashion_mnist", a.data_dir, val_size=5000, split_seed=0, seed=0, flip=False).test
    test_images, test_labels = test[torch.arange(len(test))]
    rows, failed = [], False
    entries = list(load_manifest().values())
    kept = {}
    if a.only:
        unknown = sorted(set(a.only) - {e.name for e in entries})
        if unknown:
            p.error(f"--only: {', '.join(unknown)} not in the weights manifest (listed: "
                    f"{', '.join(e.name for e in entries)})")
        if a.out.is_file():
            kept = {r["model"]: r for r in json.loads(a.out.read_text())["rows"]}
    for entry in entries:
        if a.only and entry.name not in a.only:
            if entry.name in kept:
                rows.append(kept[entry.name])
                failed |= not kept[entry.name].get("within_bar", True)
            continue
        row: Dict[str, Any] = {"model": entry.name, "source": entry.source,
                               "manifest_fp32_test_top1": entry.metrics.get("fashion_mnist", {}).get("test_top1")}
        try:
            model = timm.create_model(entry.name, pretrained=True).eval()
        except WeightsError as exc:  # a Hub entry while offline with an empty cache
            rows.append(dict(row, status="unavailable", error=str(exc)))
            continue
        data = calibration_data("fashion_mnist", a.data_dir, mean=entry.mean, std=entry.std, batches=a.calib_batches,
                                batch_size=a.calib_batch_size, probe_images=a.probe_images)
        images = Normalize(entry.mean, entry.std)(test_images)
        row["fp32_test_top1"] = top1(model, images, test_labels)
        row["data"] = dict(data["split"], test=f"{len(images)} test images (scored only)")
        for arm in a.arms:
            start = time.time()
            lifted = {} if arm == "int8" else {"min_agreement": 0.0, "max_rel_error": float("inf")}
            int8 = quantize(model, data["calibration"], probe=data["probe"], **ARMS[arm],
                            compile=not a.no_compile, **lifted)
            acc = top1(int8, images, test_labels)
            row[arm] = {"test_top1": acc, "drop": round(row["fp32_test_top1"] - acc, 4), "check": int8.check,
                        "seconds": round(time.time() - start, 1)}
            print(f"{entry.name} {arm}: fp32 {row['fp32_test_top1']:.2f} int8 {acc:.2f} "
                  f"(agreement {int8.check['top1_agreement']:.3f}, rel error {int8.check['rel_error']:.3f})", flush=True)
        row["calibration_sweep"] = {}
        for n in a.sweep:  # calibration size, the remedy that moved MobileOne-S0 (eager graph: same ops, no compile)
            swept = calibration_data("fashion_mnist", a.data_dir, mean=entry.mean, std=entry.std, batches=n,
                                     batch_size=a.calib_batch_size, probe_images=a.probe_images)
            int8 = quantize(model, swept["calibration"], probe=swept["probe"], compile=False, min_agreement=0.0,
                            max_rel_error=float("inf"))
            row["calibration_sweep"][str(n * a.calib_batch_size)] = {
                "test_top1": top1(int8, images, test_labels), "check_passed_at_defaults": _passes(int8.check)}
        shipped = row.get("int8")
        if shipped:
            row["within_bar"] = shipped["drop"] <= a.bar and shipped["check"]["passed"]
            failed |= not row["within_bar"]
            if a.update_manifest:
                _record(entry, row, torchao.__version__, a)
        rows.append(dict(row, status="ok"))
    result = {
        "benchmark": "INT8 (torchao PT2E, X86InductorQuantizer) vs fp32 test top-1 of the shipped checkpoints",
        "command": COMMAND, "bar_points": a.bar, "compiled": not a.no_compile, "threads": a.threads,
        "torch": torch.__version__, "torchao": torchao.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "rows": rows,
    }
    atomic_write(a.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(markdown(result))
    return 1 if failed else 0


def _passes(check: Dict[str, Any]) -> bool:
    from repan_zoo.quantize import DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_AGREEMENT

    return check["top1_agreement"] >= DEFAULT_MIN_AGREEMENT and check["rel_error"] <= DEFAULT_MAX_REL_ERROR


def _record(entry: Any, row: Dict[str, Any], torchao_version: str, a: argparse.Namespace) -> None:
    """``metrics.fashion_mnist_int8`` of ``entry``: the INT8 variant's figures, written to the manifest."""
    shipped = row["int8"]
    metrics = dict(entry.metrics)
    metrics["fashion_mnist_int8"] = {
        "top1": round(shipped["test_top1"], 2), "test_top1": round(shipped["test_top1"], 2),
        "fp32_test_top1": round(row["fp32_test_top1"], 2), "drop": round(shipped["drop"], 2),
        "variant": f"int8: torchao {torchao_version} PT2E X86InductorQuantizer (per-channel int8 weights, per-tensor "
                   "uint8 activations), constant channels folded"
                   + (f", activations equalized (alpha {shipped['check']['equalize_alpha']})"
                      if shipped["check"].get("equalize_alpha") is not None else "") + ", torch.compile freezing",
        "calibration": row["data"]["calibration"], "self_check": {
            k: round(shipped["check"][k], 4) for k in ("top1_agreement", "rel_error")},
        "command": COMMAND,
    }
    write_entry(dataclasses.replace(entry, metrics=metrics))


def markdown(result: Dict[str, Any]) -> str:
    """The README table: fp32 and INT8 test top-1 per shipped checkpoint."""
    sizes = sorted({int(k) for r in result["rows"] for k in r.get("calibration_sweep", {})})
    lines = ["| checkpoint | fp32 test top-1 | INT8 test top-1 | drop (points) | equalization (chosen on the probe) "
             "| INT8 without folding | INT8 always equalized (α 0.5) | INT8 never equalized "
             "| agreement / rel. error (probe) |"
             + "".join(f" eager INT8, {n} calib. images |" for n in sizes),
             "|---|---:|---:|---:|---|---:|---:|---:|---:|" + "---:|" * len(sizes)]
    for r in result["rows"]:
        if r.get("status") != "ok" or "int8" not in r:
            continue
        arms = [r.get(arm, {}).get("test_top1") for arm in ("int8_no_fold", "int8_equalize", "int8_no_equalize")]
        c = r["int8"]["check"]
        alpha = c.get("equalize_alpha")
        lines.append(f"| {r['model']} | {r['fp32_test_top1']:.2f} | {r['int8']['test_top1']:.2f} | {r['int8']['drop']:.2f} "
                     + f"| {'none' if alpha is None else f'α {alpha}'} "
                     + "".join(f"| {'—' if v is None else f'{v:.2f}'} " for v in arms)
                     + f"| {c['top1_agreement']:.3f} / {c['rel_error']:.3f} |"
                     + "".join(f" {r['calibration_sweep'][str(n)]['test_top1']:.2f} |" if str(n) in r.get("calibration_sweep", {})
                               else " — |" for n in sizes))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

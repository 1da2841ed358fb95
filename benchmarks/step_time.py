"""What RepAn costs while training: the time of one training step of each form of a network.

For each model (default: the three of the accuracy sweep, at their Fashion-MNIST input 1×28×28,
batch 128, NHWC, one CPU thread, float32) this times a full SGD step
(:func:`repan_zoo.profile.train_step_time`) of

* ``deploy``   — one conv per Rep block: what an ordinary CNN of the same inference cost trains;
* ``train``    — the architecture's own branches (RepVGG: 3×3+1×1+id, ACNet, MobileOne ×k), what
  the sweep's baseline and KD arms train;
* ``expanded k`` — fused, then Expand + Restore (Eq. 3, inverse of Eq. 2) with ``k`` new
  ``conv_kxk`` + ``conv_1x1`` branches per block at λ = 0.5: what RepAn trains in cycles ≥ 2
  (``--first-cycle plain``; cycle 1 trains the ``train`` form).

    python benchmarks/step_time.py [--models ...] [--ks 1 2 3] [--threads 1] [--repeats 10]
                                   [--out benchmarks/results/step_time.json]

Writes the JSON (one row per model × form, with the ratio to the ``train`` form) and prints a
markdown table. A shared machine makes single numbers noisy: read the quartiles with the median.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]

import repan_zoo.models  # noqa: E402,F401  (registers the repan_* models with timm)
from repan_zoo.checkpoint import atomic_write  # noqa: E402
from repan_zoo.convert import reparameterize, unfold  # noqa: E402
from repan_zoo.profile import count_params, cpu_name, train_step_time  # noqa: E402
from readme_tables import step_time_table  # noqa: E402  (same folder; the README renders the same table)

DEFAULT_MODELS = ("repan_repvgg_a1_w025", "repan_resnet18_acb_w025", "repan_mobileone_s0")


def forms(name: str, ks, seed: int = 0):
    """(form name, module) pairs of ``name`` built for 1×28×28, 10 classes."""
    torch.manual_seed(seed)
    model = timm.create_model(name, in_chans=1, num_classes=10)
    fused = reparameterize(model, example_input=torch.randn(2, 1, 28, 28))
    out = [("deploy", fused), ("train", model)]
    gen = torch.Generator().manual_seed(seed)
    for k in ks:
        out.append((f"expanded k={k}", unfold(fused, ("conv_kxk", "conv_1x1"), k=k, lam=0.5, generator=gen,
                                              example_input=torch.randn(2, 1, 28, 28))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3], help="new branches per kind (Table 5's k)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--contiguous", action="store_true", help="NCHW instead of NHWC (the sweep trains NHWC)")
    p.add_argument("--note", default="", help="how loaded the machine was, for the record")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_time.json"))
    args = p.parse_args(argv)
    registered = set(timm.list_models("repan_*"))
    missing = [m for m in args.models if m not in registered]
    if missing:
        p.error(f"not registered: {missing}; registered repan models: {sorted(registered)}")
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    x = torch.randn(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rows, start = [], time.time()
    for name in args.models:
        model_rows = []
        for form, module in forms(name, args.ks):
            step = train_step_time(module, x, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                   memory_format=fmt)
            model_rows.append({"model": name, "form": form, "params": count_params(module), "step": step,
                               "images_per_s": args.batch_size / (step["median_ms"] / 1e3)})
            print(f"{name} {form}: {step['median_ms']:.0f} ms", file=sys.stderr)
        train_ms = next(r["step"]["median_ms"] for r in model_rows if r["form"] == "train")
        for r in model_rows:
            r["vs_train"] = r["step"]["median_ms"] / train_ms
        rows += model_rows
    result = {
        "benchmark": "step_time",
        "what": "one SGD training step (forward, cross-entropy, backward, update), CPU, float32, "
                f"batch {args.batch_size} of 1x28x28, {'NCHW' if args.contiguous else 'NHWC'}",
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "timm": timm.__version__, "threads": args.threads, "note": args.note},
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print("\n".join(step_time_table(rows)))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

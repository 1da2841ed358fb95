"""Train form vs deploy form, measured: parameters, FLOPs (torch.utils.flop_counter) and CPU latency.

For each model (default: repan_repvgg_a0, repan_resnet18_dbb, repan_mobileone_s0) at 3×224×224 and
batch 1 and 8, :func:`repan_zoo.profile.profile_forms` builds the train form (as created) and the
verified deploy form (``repan_zoo.reparameterize``) and measures both on CPU, float32, eval mode,
with a fixed number of intra-op threads (median of ``--repeats`` timed runs after ``--warmup``).

    python benchmarks/forms.py [--models ...] [--batch-sizes 1 8] [--threads 1] [--repeats 5]
                               [--out benchmarks/results/forms.json]

Writes the JSON (one row per model × batch, plus the machine) and prints a markdown table.
Latency on a shared machine is noisy: read the p25/p75 columns of the JSON with the median.
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
from repan_zoo.profile import cpu_name, forms_markdown, profile_forms  # noqa: E402

DEFAULT_MODELS = ("repan_repvgg_a0", "repan_resnet18_dbb", "repan_mobileone_s0")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--input-size", nargs=3, type=int, default=(3, 224, 224), metavar=("C", "H", "W"))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "forms.json"))
    args = p.parse_args(argv)

    registered = set(timm.list_models("repan_*"))
    missing = [m for m in args.models if m not in registered]
    if missing:
        p.error(f"not registered: {missing}; registered repan models: {sorted(registered)}")

    rows = []
    start = time.time()
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        for batch in args.batch_sizes:
            t0 = time.time()
            r = profile_forms(model, args.input_size, batch_size=batch, repeats=args.repeats,
                              warmup=args.warmup, threads=args.threads)
            rows.append({"model": name, **r})
            print(f"{name} batch {batch}: {time.time() - t0:.1f}s", file=sys.stderr)
    result = {
        "benchmark": "forms",
        "what": "params / FLOPs (torch.utils.flop_counter, multiply-add = 2) / CPU latency (ms, median) "
                "of the train form and the deploy form, float32, eval mode, torch.inference_mode",
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "timm": timm.__version__, "threads": args.threads,
                    "note": "CPU shared with other processes while measured; latencies are indicative"},
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(forms_markdown(rows))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

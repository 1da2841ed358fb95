"""Training throughput of the options the accuracy sweep can use (issue #14): images per second of a
full training step — batch gathered and augmented (``crop_flip_erase``), normalised, forward,
loss, backward, SGD update — for fp32 and bf16 autocast (``repan-train --amp``), NHWC, batch 128,
one thread per process on CPU (the sweep runs one-thread processes side by side).

Forms: ``train`` (the architecture's own branches: the baseline and KD arms, and RepAn's first
cycle) and ``expanded`` (fused, then Expand with each block's own kinds, k = 1: RepAn's later cycles).

    python benchmarks/train_throughput.py [--models ...] [--device cpu|cuda] [--repeats 10]
                                          [--out benchmarks/results/train_throughput.json]

One file per kind of machine: ``train_throughput.json`` from a CPU with bf16 kernels (AVX-512),
``train_throughput_avx2.json`` from one without (the README shows every ``train_throughput*.json``).

Stop training runs first (``/work/tools``-style pausing, or nothing else running): a shared
machine's numbers are noise. The JSON records the CPU, torch and the note given with ``--note``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import repan_zoo.models  # noqa: E402,F401  (registers the repan_* models with timm)
from repan_zoo.augment import get_augment_policy  # noqa: E402
from repan_zoo.checkpoint import atomic_write  # noqa: E402
from repan_zoo.convert import reparameterize, unfold  # noqa: E402
from repan_zoo.profile import cpu_name, train_step_time  # noqa: E402
from repan_zoo.runtime.onednn import cpu_bf16_native  # noqa: E402
from repan_zoo.verify import rep_blocks  # noqa: E402

DEFAULT_MODELS = ("repan_repvgg_a1_w025", "repan_resnet18_acb_w025", "repan_mobileone_s0", "repan_mobileone_s0_w050",
                  "repan_resnet18_w025")
OPTIONS = {"fp32": None, "bf16": torch.bfloat16}


def augment_ms(batch: int, device: torch.device, repeats: int = 20) -> float:
    """Median ms to augment one uint8 batch of 1×28×28 with ``crop_flip_erase`` on ``device``."""
    policy = get_augment_policy("crop_flip_erase")
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
    draws = {k: v.to(device) for k, v in policy.draw(batch, (1, 28, 28), seed=0, epoch=0).items()}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        policy.apply(x, draws)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--note", default="", help="how loaded the machine was")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    aug = augment_ms(a.batch_size, device)
    rows = []
    t0 = time.time()
    for name in a.models:
        torch.manual_seed(0)
        model = timm.create_model(name, in_chans=1, num_classes=10).to(device)
        x = torch.randn(a.batch_size, 1, 28, 28, device=device)
        fused = reparameterize(model, example_input=x[:2])
        forms = [("train", model)]
        if any(b.arch_branches for _, b in rep_blocks(fused)):
            forms.append(("expanded", unfold(fused, lam=1.0, generator=torch.Generator().manual_seed(0),
                                             example_input=x[:2])))
        for form, net in forms:
            for option, dtype in OPTIONS.items():
                step = train_step_time(net, x, repeats=a.repeats, threads=a.threads,
                                       memory_format=torch.channels_last, autocast_dtype=dtype)
                ms = step["median_ms"] + aug
                rows.append({"model": name, "form": form, "option": option, "step": step, "augment_ms": aug,
                             "images_per_s": a.batch_size / (ms / 1e3)})
                print(f"{name:26s} {form:9s} {option:5s} {step['median_ms']:8.1f} ms + augment {aug:.1f} ms "
                      f"= {rows[-1]['images_per_s']:7.0f} images/s", flush=True)
    for r in rows:
        fp32 = next(q for q in rows if (q["model"], q["form"], q["option"]) == (r["model"], r["form"], "fp32"))
        r["speedup_vs_fp32"] = r["images_per_s"] / fp32["images_per_s"]
    doc = {"benchmark": "train_throughput",
           "what": f"one training step incl. crop_flip_erase augmentation, batch {a.batch_size} of 1x28x28, NHWC",
           "machine": {"device": a.device, "cpu": cpu_name(), "threads": a.threads, "torch": torch.__version__,
                       "bf16_native": cpu_bf16_native() if device.type == "cpu" else None,
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "note": a.note},
           "sweep_uses": "bf16 autocast (--amp), NHWC, one thread per process, except fp32 for the models where bf16 is "
                         "slower (sweep.py FP32_MODELS) and for every model on a CPU without bf16 kernels "
                         "(repan_zoo.runtime.cpu_bf16_native(): AVX2 only; the sweep adds --no-amp)",
           "seconds": round(time.time() - t0, 1), "rows": rows}
    atomic_write(Path(a.out), lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

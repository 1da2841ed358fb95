"""CPU inference throughput: our deploy models vs timm's reparameterized twins vs the plain limit.

For each model, four networks computing the same function (timm's weights, random BN statistics,
loaded into ours with :func:`repan_zoo.models.checkpoint_filter`) are timed in one run:

``deploy``     our ``repan_*`` model after :func:`repan_zoo.reparameterize`
``timm``       timm's twin (``repvgg_*`` / ``mobileone_*``) after ``timm.utils.reparameterize_model``
``plain``      the limit: an ``nn.Sequential`` of the very same fused ``Conv2d`` modules and ``ReLU``s
               (+ global average pool + linear), no wrapper modules at all
``train``      our train form (multi-branch, eval mode): what fusion buys

``int8``       (``--int8``) :func:`repan_zoo.quantize.quantize` of the deploy model: torchao PT2E with
               ``X86InductorQuantizer``, calibrated on Fashion-MNIST *training* images (resized to the
               input, channels repeated), compiled with inductor freezing, self-checked on held-out
               validation images; the check (agreement, relative error, passed) is recorded. The
               random-weight networks then get BN statistics measured on such images (train-mode
               passes) instead of random ones: random statistics make MobileOne's fp32 logits explode
               (~1e15, one class for every input), a probe on which no agreement means anything.

``--shipped`` times the shipped checkpoints instead (``weights_manifest/``, at their 28×28 or at
``--size``, images resized): ``deploy`` fp32 eager, ``int8``, and timm's fp32 twin where timm has
the architecture (``mobileone_s0`` with the entry's channels and classes). Trained weights give
the self-check a probe on which top-1 means something, which random weights do not.

Outputs are checked to agree (≤1e-5 relative) before timing. Fixed thread count, warm-up, then
``--repeats`` rounds in which every network runs one batch, in a new (seeded) random order each
round, so that load from other processes and the cache state left by the previous network hit
all of them alike; the median time per batch is reported, and each ratio is also given as the
median of the per-round ratios (paired within a round, robust to load that changes between rounds).
Writes ``benchmarks/results/inference.json`` and prints a markdown table.

    python benchmarks/inference.py                      # batch 8 at 224, 1 thread
    python benchmarks/inference.py --models repan_repvgg_a0 --repeats 5
    python benchmarks/inference.py --int8 --models repan_repvgg_a0 repan_mobileone_s0 --out benchmarks/results/inference_int8.json
    python benchmarks/inference.py --shipped --batch 64 --out benchmarks/results/inference_int8_shipped.json
    python benchmarks/inference.py --shipped --only mobileone --size 224 --batch 8 --out benchmarks/results/inference_int8_s0_224.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import repan_zoo
from repan_zoo.checkpoint import atomic_write
from repan_zoo.models import RepConvAct, checkpoint_filter
from repan_zoo.models.families import MODELS
from repan_zoo.metrics import top1
from repan_zoo.profile import cpu_name
from repan_zoo.verify import relative_error

#: the models timed against their timm twin (models.families.ModelDef.timm_twin)
TWINS = {name: MODELS[name].timm_twin for name in
         ("repan_repvgg_a0", "repan_repvgg_a1", "repan_mobileone_s0", "repan_mobileone_s1")}
RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"


def plain_twin(deploy: nn.Module) -> nn.Sequential:
    """Conv+ReLU chain of identical shapes: the fused convs of a deploy VGG-style ``RepNet``
    (shared, same weights) with bare ReLUs, then global average pooling and the same classifier."""
    layers: List[nn.Module] = []
    for module in deploy.modules():
        if isinstance(module, RepConvAct):
            if module.attn is not None:
                raise ValueError("the plain limit is defined for conv+ReLU chains (no SE)")
            layers += [module.conv.reparam_conv, nn.ReLU(inplace=True)]
    if not layers:
        raise ValueError("not a VGG-style RepNet")
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), deploy.get_classifier())


def images(size: int, chans: int, batches: int, batch_size: int, probe: int) -> Dict:
    """Fashion-MNIST calibration batches (train split) and probe (validation split), resized to
    ``size``² and repeated to ``chans`` channels (:func:`repan_zoo.quantize.calibration_data`)."""
    from repan_zoo.quantize import calibration_data

    data = calibration_data(batches=batches, batch_size=batch_size, probe_images=probe)

    def shape(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.expand(-1, chans, -1, -1).contiguous()

    return {"calibration": [shape(b) for b in data["calibration"]], "probe": shape(data["probe"]), "split": data["split"]}


def measured_bn(model: nn.Module, batches: List[torch.Tensor]) -> None:
    """Running statistics of every BN measured on ``batches`` (train-mode passes, cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    model.eval()


def int8_of(deploy: nn.Module, data: Dict) -> Dict:
    """The INT8 model of ``deploy`` and its self-check. A refused model is quantized again with the
    thresholds lifted so that it can still be timed; its failed check is what is recorded."""
    from repan_zoo.errors import QuantizationError
    from repan_zoo.quantize import quantize

    try:
        int8 = quantize(deploy, data["calibration"], probe=data["probe"])
    except QuantizationError as exc:
        int8 = quantize(deploy, data["calibration"], probe=data["probe"], min_agreement=0.0, max_rel_error=float("inf"))
        int8.check = dict(exc.check, note="refused by the self-check; timed with the thresholds lifted")
    return {"net": int8, "check": {k: v for k, v in int8.check.items() if k not in ("folded", "equalized")},
            "folded_layers": len(int8.check["folded"]), "equalized_pairs": len(int8.check.get("equalized", []))}


def fit(model: nn.Module, size: int, steps: int, seed: int, *, amp: bool, fit_size: int = 64, batch_size: int = 32,
        lr: float = 0.05) -> Dict:
    """Give an ImageNet-shaped train-form ``model`` weights on which top-1 means something.

    ``steps`` SGD steps (momentum 0.9, cosine LR, label smoothing 0.1; bf16 autocast unless
    ``amp`` is off — depthwise MobileOne runs slower in bf16) on Fashion-MNIST *training* images
    resized to ``fit_size``² (cheap: the networks are fully convolutional) and repeated to 3
    channels, classes 0–9 of the 1000-way head; then BN statistics measured on training images at
    the timed input ``size``² and top-1 on 256 validation images there. Random weights give
    near-uniform logits, where an INT8 self-check's top-1 agreement is noise. Returns what was done
    (recorded with the result).
    """
    from repan_zoo.data import load_splits, train_loader

    splits = load_splits("fashion_mnist", None, val_size=5000, split_seed=0, seed=seed, flip=False)
    norm = splits.normalizer(torch.contiguous_format)

    def shape(x: torch.Tensor, side: int) -> torch.Tensor:
        x = F.interpolate(norm(x), size=(side, side), mode="bilinear", align_corners=False)
        return x.expand(-1, 3, -1, -1).contiguous()

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    step, epoch, t0, loss = 0, 0, time.perf_counter(), torch.tensor(float("nan"))
    while step < steps:
        for images, labels in train_loader(splits.train, batch_size, seed=seed, epoch=epoch):
            if step >= steps:
                break
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(shape(images, fit_size)).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        epoch += 1
    batches = itertools.islice(train_loader(splits.train, 16, seed=seed + 1, epoch=0), 4)
    measured_bn(model, [shape(b, size) for b, _ in batches])
    images, labels = splits.val[torch.arange(256)]
    val_top1 = top1(model, shape(images, size), labels)
    return {"steps": steps, "batch": batch_size, "lr": lr, "bf16": amp, "fit_size": fit_size, "size": size,
            "seconds": round(time.perf_counter() - t0), "val_top1_256": round(val_top1, 2),
            "final_loss": round(float(loss.detach()), 4)}


def build(name: str, seed: int, data: Optional[Dict] = None) -> Dict[str, nn.Module]:
    gen = torch.Generator().manual_seed(seed)
    theirs = timm.create_model(TWINS[name]).eval()
    if data is not None:
        measured_bn(theirs, data["calibration"][:4])
    else:
        with torch.no_grad():
            for bn in (m for m in theirs.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    train = timm.create_model(name).eval()
    train.load_state_dict(checkpoint_filter(theirs.state_dict(), train))
    deploy = repan_zoo.reparameterize(train)
    return {
        "deploy": deploy,
        "timm": timm.utils.reparameterize_model(theirs),
        "plain": plain_twin(deploy).eval(),
        "train": train,
    }


@torch.inference_mode()
def measure(nets: Dict[str, nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> Dict[str, List[float]]:
    for net in nets.values():
        for _ in range(warmup):
            net(x)
    times: Dict[str, List[float]] = {k: [] for k in nets}
    order = random.Random(0)
    for _ in range(repeats):
        keys = list(nets)
        order.shuffle(keys)  # a new order each round: no network always runs first or after another
        for key in keys:
            start = time.perf_counter()
            nets[key](x)
            times[key].append(time.perf_counter() - start)
    return times


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TWINS), choices=list(TWINS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default 224; with --shipped the checkpoint's own, e.g. 28)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="how loaded the machine was (recorded as conditions)")
    parser.add_argument("--int8", action="store_true", help="time INT8 (torchao PT2E) against fp32 deploy and timm")
    parser.add_argument("--shipped", action="store_true", help="time the shipped checkpoints (28×28) with INT8")
    parser.add_argument("--fit-steps", type=int, default=0,
                        help="with --int8: first fine-tune our model this many steps on Fashion-MNIST at --size "
                             "(trained weights for the self-check; 0: random weights)")
    parser.add_argument("--fit-size", type=int, default=0,
                        help="with --fit-steps: the training input side (0: --size; smaller is cheaper but transfers "
                             "badly: fitted at 64², RepVGG-A0 / MobileOne-S0 reached 21 %% / 8 %% at 224²)")
    parser.add_argument("--fit-batch", type=int, default=16, help="with --fit-steps: images per step")
    parser.add_argument("--fit-more", type=int, default=0,
                        help="with --fit-steps: continue the (cached) fit this many steps more, a second cosine cycle")
    parser.add_argument("--fit-only", action="store_true",
                        help="with --fit-steps: fit (and cache) only; no quantization, no timing (e.g. while training runs)")
    parser.add_argument("--fit-lr", type=float, default=0.05, help="with --fit-steps: peak learning rate (cosine)")
    parser.add_argument("--fit-cache", type=Path, default=Path.home() / ".cache" / "repan" / "int8_fit",
                        help="fitted weights are kept here (outside the tree) and reused by a run with the same fit")
    parser.add_argument("--calib-batches", type=int, default=4, help="with --int8: calibration batches of 16 images")
    parser.add_argument("--fit-threads", type=int, default=0, help="threads while fitting (0: all cores; not timed)")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="with --shipped: only the checkpoints whose name contains one of these")
    args = parser.parse_args(argv)
    if args.size is None and not args.shipped:
        args.size = 224

    torch.set_num_threads(args.threads)
    if args.int8 or args.shipped:
        return int8_main(args)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for name in args.models:
        nets = build(name, args.seed)
        with torch.inference_mode():
            ref = nets["timm"](x[:2])
            agreement = {k: relative_error(ref, net(x[:2])) for k, net in nets.items() if k != "timm"}
        if max(agreement.values()) > 1e-5:
            raise SystemExit(f"{name}: the networks do not compute the same function: {agreement}")
        times = measure(nets, x, args.warmup, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": name,
            "timm_twin": TWINS[name],
            "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
            "images_per_s": {k: round(args.batch / v, 2) for k, v in med.items()},
            "all_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
            "deploy_vs_timm": round(med["timm"] / med["deploy"], 4),
            "deploy_vs_plain": round(med["plain"] / med["deploy"], 4),
            "deploy_vs_train": round(med["train"] / med["deploy"], 4),
            "paired": {
                f"deploy_vs_{k}": round(statistics.median(a / b for a, b in zip(times[k], times["deploy"])), 4)
                for k in ("timm", "plain", "train")
            },
            "max_rel_error_vs_timm": {k: float(f"{v:.3g}") for k, v in agreement.items()},
            "deploy_modules": sum(1 for _ in nets["deploy"].modules()),
            "plain_modules": sum(1 for _ in nets["plain"].modules()),
        }
        rows.append(row)
        print(f"{name}: {row['median_ms']}", file=sys.stderr)
        del nets

    result = {
        "benchmark": "cpu inference throughput, deploy vs timm twin vs plain conv+relu limit vs train form",
        "config": {
            "batch": args.batch, "input": [3, args.size, args.size], "threads": args.threads,
            "warmup": args.warmup, "repeats": args.repeats, "statistic": "median time per batch; paired: median of per-round ratios (random order per round)",
            "torch": torch.__version__, "timm": timm.__version__, "repan_zoo": repan_zoo.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "targets": {"deploy_vs_timm": ">= 1.0", "deploy_vs_plain": ">= 0.97"},
        "results": rows,
    }
    save(result, args.out)
    print(markdown(result))
    return result


def save(result: Dict, out: Path) -> None:
    """Write ``result`` as JSON to ``out`` atomically (folders made as needed)."""
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))


def int8_main(args: argparse.Namespace) -> Dict:
    """``--int8`` / ``--shipped``: INT8 vs fp32 deploy eager vs timm's fp32 eager twin, one process."""
    import torchao

    from repan_zoo.manifest import load_manifest

    jobs = [(e.name, e) for e in load_manifest().values() if not args.only or any(t in e.name for t in args.only)] \
        if args.shipped else [(n, None) for n in args.models]
    rows = []
    for name, entry in jobs:
        chans, size = (entry.input_size[0], args.size or entry.input_size[1]) if entry else (3, args.size)
        data = images(size, chans, batches=args.calib_batches, batch_size=16, probe=max(64, args.batch))
        fitted = None
        if entry is None:
            nets = build(name, args.seed, data)
            del nets["plain"], nets["train"]
            if args.fit_steps:  # trained weights for ours; the timm twin keeps its (timing-only) random ones
                torch.manual_seed(args.seed)
                train = timm.create_model(name)
                key = f"{name}-steps{args.fit_steps}-size{args.fit_size or size}-{size}-batch{args.fit_batch}-lr{args.fit_lr}-seed{args.seed}"
                # the fit, then optionally a continuation (--fit-more: a second cosine cycle, the next seed's
                # data order), each cached under its own key (fitting is slow on a CPU; it is not timed)
                stages = [(key, args.fit_steps, args.seed, None)]
                if args.fit_more:
                    stages.append((f"{key}-more{args.fit_more}", args.fit_more, args.seed + 1, key))
                for stage_key, steps, seed, previous in stages:
                    cached = args.fit_cache / f"{stage_key}.safetensors"
                    if cached.is_file():
                        from safetensors.torch import load_file

                        train.load_state_dict(load_file(str(cached)))
                        fitted = dict(json.loads(cached.with_suffix(".json").read_text()), cached=True)
                        continue
                    torch.set_num_threads(args.fit_threads or os.cpu_count())
                    fitted = fit(train, size, steps, seed, amp="mobileone" not in name,
                                 fit_size=args.fit_size or size, batch_size=args.fit_batch, lr=args.fit_lr)
                    if previous:
                        fitted.update(continued_from=previous, total_steps=args.fit_steps + steps)
                    torch.set_num_threads(args.threads)
                    from safetensors.torch import save_file

                    args.fit_cache.mkdir(parents=True, exist_ok=True)
                    save_file({k: v.contiguous() for k, v in train.state_dict().items()}, str(cached))
                    cached.with_suffix(".json").write_text(json.dumps(fitted))
                nets["deploy"] = repan_zoo.reparameterize(train.eval())
                print(f"{name}: fitted {fitted}", file=sys.stderr)
                if args.fit_only:
                    continue
        else:
            nets = {"deploy": repan_zoo.reparameterize(timm.create_model(name, pretrained=True).eval())}
            if entry.model in TWINS:
                twin = timm.create_model(TWINS[entry.model], in_chans=chans, num_classes=entry.num_classes).eval()
                nets["timm"] = timm.utils.reparameterize_model(twin)
        x = data["probe"][:args.batch]
        if "timm" in nets and entry is None and not fitted:
            with torch.inference_mode():
                err = relative_error(nets["timm"](x[:2]), nets["deploy"](x[:2]))
            if err > 1e-3:  # measured BN statistics hold near-dead channels (tiny variance): fp32 rounding grows
                raise SystemExit(f"{name}: deploy and timm twin differ by {err:.3g}")
        int8 = int8_of(nets["deploy"], data)
        nets["int8"] = int8["net"]
        times = measure(nets, x, args.warmup, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": name, "timm_twin": (TWINS.get(entry.model if entry else name)) if "timm" in nets else None,
            "input": [args.batch, chans, size, size],
            "weights": "shipped checkpoint" if entry else (
                f"ours fitted {fitted.get('total_steps', fitted['steps'])} steps on Fashion-MNIST at {fitted['fit_size']}², BN measured at {size}² "
                "(timm twin random, timing only)"
                if fitted else "random, BN statistics measured on Fashion-MNIST images"),
            "fit": fitted,
            "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
            "all_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
            "int8_vs": {k: round(med[k] / med["int8"], 3) for k in nets if k != "int8"},
            "paired_int8_vs": {k: round(statistics.median(a / b for a, b in zip(times[k], times["int8"])), 3)
                               for k in nets if k != "int8"},
            "check": int8["check"], "folded_layers": int8["folded_layers"], "equalized_pairs": int8["equalized_pairs"],
            "data": data["split"],
            "deploy_vs_timm_rel_error": None if entry or fitted or "timm" not in nets else float(f"{err:.3g}"),
        }
        rows.append(row)
        print(f"{name}: {row['median_ms']} check passed {row['check']['passed']}", file=sys.stderr)
        del nets
    if args.fit_only:
        return {"results": []}  # nothing timed: no result file written
    result = {
        "benchmark": "cpu inference: INT8 (torchao PT2E, X86InductorQuantizer, torch.compile freezing) vs fp32 eager",
        "config": {
            "batch": args.batch, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
            "statistic": "median time per batch; paired: median of per-round ratios (random order per round)",
            "torch": torch.__version__, "torchao": torchao.__version__, "timm": timm.__version__,
            "repan_zoo": repan_zoo.__version__, "python": platform.python_version(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "conditions": args.note,
        },
        "targets": {"int8_vs_timm": ">= 3 at 224² batch 8; >= 2 for the shipped 28² models at batch 64 (vs fp32 eager)"},
        "results": rows,
    }
    save(result, args.out)
    print(markdown_int8(result))
    return result


def markdown_int8(result: Dict) -> str:
    """INT8 speed table: median ms per batch of each network, INT8's speed-ups, and the self-check."""
    c = result["config"]
    lines = [
        f"CPU ({c['cpu']}), {c['threads']} thread(s), median of {c['repeats']} interleaved runs; torch {c['torch']}, "
        f"torchao {c['torchao']}",
        "",
        "| model | input | INT8 ms | fp32 deploy ms | timm fp32 ms | INT8 vs timm | INT8 vs fp32 deploy "
        "| check: agreement / rel. error (passed) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["results"]:
        ms, k = r["median_ms"], r["check"]
        timm_ms = f"{ms['timm']:.1f}" if "timm" in ms else "—"
        vs_timm = f"{r['int8_vs']['timm']:.2f}×" if "timm" in ms else "—"
        lines.append(
            f"| {r['model']} | {'×'.join(map(str, r['input']))} | {ms['int8']:.1f} | {ms['deploy']:.1f} | {timm_ms} "
            f"| {vs_timm} | {r['int8_vs']['deploy']:.2f}× | {k['top1_agreement']:.3f} / {k['rel_error']:.3f} "
            f"({'yes' if k['passed'] else 'no'}) |"
        )
    return "\n".join(lines)


def markdown(result: Dict) -> str:
    c = result["config"]
    lines = [
        f"CPU, {c['threads']} thread(s), batch {c['batch']} at {c['input'][1]}×{c['input'][2]}, "
        f"median of {c['repeats']} interleaved runs (images/s; speed ratios: of median times, and paired per round)",
        "",
        "| model | deploy | timm twin | plain conv+ReLU | train form | deploy/timm | deploy/plain | deploy/train "
        "| paired deploy/timm | paired deploy/plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        ips = r["images_per_s"]
        lines.append(
            f"| {r['model']} (vs {r['timm_twin']}) | {ips['deploy']:.1f} | {ips['timm']:.1f} | {ips['plain']:.1f} | "
            f"{ips['train']:.1f} | {r['deploy_vs_timm']:.3f}× | {r['deploy_vs_plain']:.3f}× | {r['deploy_vs_train']:.2f}× "
            f"| {r['paired']['deploy_vs_timm']:.3f}× | {r['paired']['deploy_vs_plain']:.3f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

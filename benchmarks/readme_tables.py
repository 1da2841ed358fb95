"""Render the README's results section from the benchmark result files (no number is typed by hand).

    python benchmarks/readme_tables.py          # rewrite the block between the README markers
    python benchmarks/readme_tables.py --check  # exit 1 if the README is out of date

Reads ``benchmarks/results/*.json`` and ``benchmarks/accuracy/results/*/*/summary.md``; every table
names the command that produced its file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start (benchmarks/readme_tables.py) -->", "<!-- results:end -->"


def _load(name: str) -> Optional[dict]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> List[str]:
    """A markdown table: the header line, its rule, then one line per row of already formatted cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def exactness() -> List[str]:
    d = _load("exactness.json")
    if not d:
        return []
    s = d["setup"]
    out = ["### Exactness of fusion, per branch kind", "",
           f"`python benchmarks/exactness.py` — {d['metric']}; {s['seeds']} seeds, {s['channels']} channels, "
           f"k = 3 and 5, stride 1/2, groups 1/depthwise, random BN statistics, {s['dtype']} on {s['device']}.", "",
           *_table(("branches", "cases", "fused vs train", "train vs fp64", "fused vs fp64"),
                   ((kind, r["cases"], f"{r['worst_rel_error']:.2e}", f"{r['train_vs_fp64']:.2e}", f"{r['fused_vs_fp64']:.2e}")
                    for kind, r in d["results"].items()))]
    out += ["", f"Worst: {d['worst_rel_error']:.2e}. 3×3 blocks stay below 1e-6; at 5×5 the fp32 convolution of the "
            "*train form itself* is up to ~1e-6 away from float64, which bounds the comparison (fusion is done in float64).", ""]
    return out


def inference() -> List[str]:
    d = _load("inference.json")
    if not d:
        return []
    c = d["config"]
    out = ["### Deploy inference speed vs timm's reparameterized twin and the plain-conv limit", "",
           f"`python benchmarks/inference.py --repeats {c['repeats']}` — batch {c['batch']} at {'×'.join(map(str, c['input']))}, {c['threads']} thread, "
           f"median of {c['repeats']} rounds (random order per round); torch {c['torch']}, timm {c['timm']}, CPU {c['cpu']}.", ""]

    def row(r: dict) -> tuple:
        ips, p = r["images_per_s"], r.get("paired", r)
        return (r["model"], r.get("timm_twin") or "–", f"{ips['deploy']:.1f}", f"{ips.get('timm', float('nan')):.1f}",
                f"{ips['plain']:.1f}", f"{ips['train']:.1f}", f"{p.get('deploy_vs_timm', float('nan')):.3f}",
                f"{p['deploy_vs_plain']:.3f}")

    return out + _table(("model", "timm twin", "deploy img/s", "timm img/s", "plain limit img/s", "train form img/s",
                         "deploy / timm", "deploy / plain"), map(row, d["results"])) + [""]


def forms() -> List[str]:
    d = _load("forms.json")
    if not d:
        return []
    m = d["machine"]
    out = ["### Train form vs deploy form", "",
           f"`python benchmarks/forms.py` — parameters, FLOPs (`torch.utils.flop_counter`, multiply-add = 2) and CPU latency "
           f"({m['threads']} thread, {m['cpu']}; {m.get('note', '')}).", ""]

    def row(r: dict) -> tuple:
        t, dep = r["train"], r["deploy"]
        return (r["model"], r["batch_size"], f"{t['params'] / 1e6:.2f} → {dep['params'] / 1e6:.2f}",
                f"{t['flops'] / 1e9:.3f} → {dep['flops'] / 1e9:.3f}",
                f"{t['latency']['median_ms']:.1f} → {dep['latency']['median_ms']:.1f}")

    return out + _table(("model", "batch", "params train → deploy (M)", "GFLOPs train → deploy",
                         "latency train → deploy (ms)"), map(row, d["rows"])) + [""]


def cycle_overhead() -> List[str]:
    rows = [d for d in (_load("cycle_overhead.json"), _load("cycle_overhead_cuda.json")) if d]
    if not rows:
        return []
    out = ["### RepAn cycle overhead (Rep + Expand + Restore + Calibrate) vs one training epoch", "",
           "`python benchmarks/cycle_overhead.py` (CPU row); `python benchmarks/cycle_overhead.py --device cuda "
           "--out benchmarks/results/cycle_overhead_cuda.json` (CUDA row)", "",
           *_table(("model", "device", "train images", "epoch (s)", "cycle overhead (s)", "fraction"),
                   ((d["model"], d["device"], d["train_images"], f"{d['epoch_train_s']:.1f}",
                     f"{d['cycle_overhead_s_median']:.2f}", f"{100 * d['overhead_fraction_of_epoch']:.2f} %")
                    for d in rows)), ""]
    return out


#: plan folders in reading order: the default sweep (cpu scale) first
_PLAN_ORDER = ("long/ship", "long/main", "long/continue", "long/ablations", "long/layouts", "cpu/main", "cpu/ablations", "cpu/expansion", "cpu/bf16",
               "cpu/ablations_extra", "small/main", "full/main", "full/ablations")


def _plan_key(plan: str):
    return (_PLAN_ORDER.index(plan) if plan in _PLAN_ORDER else len(_PLAN_ORDER), plan)


def long_plan() -> List[str]:
    """Where the ``long`` comparison (issue #14) stands: its runs, and which have finished."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "accuracy"))
    import sweep  # noqa: E402  (same repository; the plan is defined there)

    base = ROOT / "benchmarks" / "accuracy" / "results" / "long" / "main"
    runs = sweep.plan_runs("main", "long")
    done = [r["name"] for r in runs if (base / r["name"] / "final.json").exists()]
    out = ["### The `long` comparison: plan and progress", "",
           "`python benchmarks/accuracy/sweep.py --scale long --plan main --jobs 2` (resumable; `--status` prints what is "
           "done, what remains and the time left; `train_scripts/gpu_long.py` runs it on a GPU machine). All 55,000 "
           "training images (5,000 held out for validation), crop + flip + random erasing, label smoothing 0.1, "
           "lr 0.1, wd 5e-4, bf16 autocast; a 100-epoch budget per run: baseline and KD 1 × 100, RepAn 4 × 25 "
           "re-adding each block's own branch kinds at γ = 0; KD α = 0.9, T = 10 from a ResNet-18 0.25× teacher trained "
           f"150 epochs on the same split. {len(runs)} runs (3 seeds of RepVGG-A1 0.25×, one of ResNet-18-ACB 0.25× and "
           f"one of MobileOne-S0 as `{sweep.variant('long', 'repan_mobileone_s0')}`, its half-width small-input "
           "layout, in fp32 at lr 0.1 with a 1-epoch warm-up); "
           f"**{len(done)} finished so far**" + (": " + ", ".join(f"`{n}`" for n in done) if done else "") + ".", ""]
    return out


def train_throughput() -> List[str]:
    """One table per kind of machine measured (``train_throughput*.json``: a CPU with bf16 kernels,
    one without), then the GPU calls."""
    paths = sorted(RESULTS.glob("train_throughput*.json"))
    if not paths:
        return []
    out = ["### Training throughput of the sweep's options", ""]
    for path in paths:
        d = json.loads(path.read_text())
        m = d["machine"]
        bf16 = {True: "; bf16 kernels", False: "; no bf16 kernels"}.get(m.get("bf16_native"), "")
        out += [f"`python benchmarks/train_throughput.py --out benchmarks/results/{path.name}` — {d['what']}; "
                f"{m['threads']} thread, {m['cpu']}{bf16}" + (f", {m['gpu']}" if m.get("gpu") else "")
                + (f"; {m['note']}" if m.get("note") else "") + f". The sweep uses {d['sweep_uses']}.", "",
                *_table(("model", "form", "option", "step ms (median)", "images/s", "× fp32"),
                        ((r["model"], r["form"], r["option"], f"{r['step']['median_ms']:.0f}",
                          f"{r['images_per_s']:.0f}", f"{r['speedup_vs_fp32']:.2f}") for r in d["rows"])), ""]
    return out + gpu_throughput()


#: images per training epoch of the long plan: 55,000 training images in whole batches of 128
LONG_EPOCH_IMAGES = (55000 // 128) * 128


def gpu_throughput() -> List[str]:
    """The long plan's GPU calls (``train_scripts/gpu_long.py``; their summaries under
    ``benchmarks/accuracy/results/long/gpu_calls``): median epoch time per run while the call's runs
    shared the GPU, and what the runs trained together."""
    calls = sorted((ROOT / "benchmarks" / "accuracy" / "results" / "long" / "gpu_calls").glob("*.json"))
    if not calls:
        return []
    out = ["GPU: measured inside the `long` plan's calls on a lent GPU machine (`train_scripts/gpu_long.py`: "
           "every run of a call trains at once, one process each, dataset on the GPU, eager PyTorch, fp16 autocast "
           "for the `--amp` models; an epoch includes the validation pass). Median epoch time of each run over "
           f"its GPU epochs; images/s per run = {LONG_EPOCH_IMAGES:,} training images per epoch / that time; a call's runs "
           "together trained the sum.", ""]
    rows = []
    for path in calls:
        c = json.loads(path.read_text())
        times = sorted(r["epoch_s"] for r in c["runs"].values() if r.get("epoch_s"))
        if not times:
            continue
        mid = times[len(times) // 2]
        total = sum(LONG_EPOCH_IMAGES / t for t in times)
        rows.append((f"`{path.stem}`", c.get("gpu", c["device"]), c["mps"], len(times),
                     f"{mid:.1f} ({times[0]:.1f}–{times[-1]:.1f})", f"{LONG_EPOCH_IMAGES / mid:.0f}", f"{total:.0f}"))
    return out + _table(("call", "GPU", "sharing", "runs", "epoch s per run (median, range)", "images/s per run",
                         "images/s, runs together"), rows) + [""]


def accuracy() -> List[str]:
    base = ROOT / "benchmarks" / "accuracy" / "results"
    summaries = {f"{s.parent.parent.name}/{s.parent.name}": s for s in base.glob("*/*/summary.md")}
    out: List[str] = long_plan()
    default = [json.loads((base / plan / "summary.json").read_text()) for plan in ("cpu/main", "cpu/ablations")
               if (base / plan / "summary.json").exists()]
    if default:
        total = sum(d["total_train_time_s"] for d in default)
        runs = sum(len(d["runs"]) for d in default)
        out += ["### Cost of the default sweep", "",
                f"`cpu/main` + `cpu/ablations`: {runs} training runs, {total / 3600:.2f} hours of training in total: "
                "the sum of the runs' wall-clock training times as recorded in their `final.json`, each run on one "
                "CPU thread, two to four runs sharing the 2-core machine (so this bounds the CPU time from above).", ""]
    for plan in sorted(summaries, key=_plan_key):
        scale, name = plan.split("/")
        curves = summaries[plan].parent / "curves.png"
        out += [f"### Accuracy: `{plan}`", "",
                f"`python benchmarks/accuracy/sweep.py --scale {scale} --plan {name}` then "
                "`python benchmarks/accuracy/aggregate.py`"
                + (f" (curves: `{curves.relative_to(ROOT)}`)" if curves.exists() else "") + ".", "",
                summaries[plan].read_text().strip(), ""]
    return out


def step_time() -> List[str]:
    d = _load("step_time.json")
    if not d:
        return []
    m = d["machine"]
    out = ["### Training-step cost of each form (what RepAn pays while training)", "",
           f"`python benchmarks/step_time.py` — {d['what']}; {m['threads']} thread, {m['cpu']}"
           + (f"; {m['note']}" if m.get("note") else "") + ".", "",
           *step_time_table(d["rows"]), ""]
    return out


def step_time_table(rows) -> List[str]:
    """The markdown table of ``benchmarks/step_time.py`` rows (that script prints it too)."""
    return _table(("model", "form", "trainable params", "step ms (median)", "p25–p75", "images/s", "× train form"),
                  ((r["model"], r["form"], f"{r['params'] / 1e6:.2f} M", f"{r['step']['median_ms']:.0f}",
                    f"{r['step']['p25_ms']:.0f}–{r['step']['p75_ms']:.0f}", f"{r['images_per_s']:.0f}",
                    f"{r['vs_train']:.2f}") for r in rows))


def shipped() -> List[str]:
    d = _load("pretrained_check.json")
    if not d:
        return []
    out = ["### Shipped weights, re-measured through timm", "",
           f"`{d['command']}` — `timm.create_model(name, pretrained=True)` with no network, top-1 on the "
           f"Fashion-MNIST test set vs the manifest (tolerance {d['tolerance']} pt). The last two columns are where "
           "fine-tuning starts: the same model in training mode (each batch of 128 test images normalised by its own "
           "BN statistics), as loaded (its BNs restored with μ = 0, σ = 1) and after `repan_zoo.calibrate_bn` on 5 "
           "batches of 128 training images.", "",
           *_table(("model.tag", "source", "deploy params", "manifest test top-1", "measured", "difference", "status",
                    "train mode, as loaded", "train mode, calibrated"),
                   ((r["model"], r["source"], f"{r['deploy_params'] / 1e6:.2f} M" if r.get("deploy_params") else "—",
                     f"{r['manifest_test_top1']:.2f}", f"{r['measured_test_top1']:.2f}",
                     f"{r['difference']:+.2f}", r["status"], _pct(r.get("train_mode_test_top1")),
                     _pct(r.get("train_mode_test_top1_calibrated"))) for r in d["rows"])), ""]
    return out


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def detection() -> List[str]:
    d = _load("detection.json")
    if not d:
        return []
    out = ["### Detection (torchvision RetinaNet / Faster R-CNN on a Rep backbone)", "",
           "`python benchmarks/detection.py --parts latency` — one 96×96 image through the whole detector, and the "
           f"backbone+FPN at batch 8; 1 thread, medians of interleaved rounds, CPU {d['machine']['cpu']}.", "",
           *_table(("detector", "backbone", "form", "branches", "params", "detector ms (1 img)",
                    "backbone+FPN ms (batch 8)"),
                   ((row["detector"], row["backbone"], form, f["rep_branches"], f"{f['params'] / 1e6:.2f} M",
                     f"{f['detector_latency_1img']['median_ms']:.1f}", f"{f['backbone_fpn_latency_batch8']['median_ms']:.1f}")
                    for row in d["latency"]["rows"] for form, f in row["forms"].items()))]
    m = d.get("map")
    if m:
        command = m.get("command", "benchmarks/detection.py")
        moved = (("; the backbones are the `small/main` sweep's seed-0 runs, whose folders the sweep now keeps under "
                  "`~/.cache/repan/runs/accuracy/small/main/` (`python benchmarks/accuracy/sweep.py --scale small "
                  "--plan main` trains them again)") if "runs/accuracy_cpu/" in command else "")
        out += ["", f"mAP, baseline-trained vs RepAn-trained backbone (`{command}`{moved})"
                + (": **smoke run only** (a few steps on 64 canvases), so these figures say nothing about RepAn yet; "
                   "the real comparison is still to be run." if m.get("smoke") else ":"), ""]

        def mean(runs: list, form: str, metric: str) -> str:
            return f"{sum(r[form][metric] for r in runs) / len(runs):.4f}"

        out += _table(("backbone training", "seeds", "val mAP (deploy)", "val mAP50 (deploy)", "val mAP (train form)"),
                      ((method, len(runs), mean(runs, "val_deploy", "mAP"), mean(runs, "val_deploy", "mAP50"),
                        mean(runs, "val_train_form", "mAP")) for method, runs in m.get("runs", {}).items()))
        if all(len(r) == 1 for r in m.get("runs", {}).values()):
            out += ["", "One seed per backbone: no spread was measured, so a difference this small is not evidence either way."]
    out.append("")
    return out


#: prose of the INT8 section (issue #18); every figure is in the tables rendered from the result files
INT8_TEXT = (
    "`repan_zoo.quantize.quantize(model, calibration_batches, probe=...)` (extra `pip install 'repan-zoo[quant]'`, torchao 0.18) fuses the model, folds constant channels, equalizes the per-channel ranges of every conv → ReLU → conv activation (exact rescaling; by default `equalize='auto'` quantizes with SmoothQuant α 0.5 and without, and keeps the one with the lower relative error on the probe: neither wins everywhere, see the columns below), runs `torch.export` → `prepare_pt2e(X86InductorQuantizer)` → calibration on training images → `convert_pt2e` → `torch.compile` with freezing, and refuses the result when it disagrees with fp32 on the probe (top-1 agreement < 0.9 or ‖q−f‖/‖f‖ > 0.25). `repan export MODEL --int8 --out m.pt2` writes the checked `torch.export` program (`repan_zoo.quantize.load_int8` reads it back, refusing pickled payloads); `--equalize` and `--fp32-module NAME` expose the two remedies. `repan_zoo.quantize.layer_errors(int8_model, x)` gives every layer's propagated SQNR against the fp32 model.",
    'MobileOne-S0\'s wrong INT8 outputs had one cause, a layer pattern: dead stem channels (always ≤ 0 before the ReLU) make the next depthwise conv output a constant (its bias); the following 1×1 conv learned large weights on those constant channels (`folded` in the result file), balanced by large biases. Exact in fp32; in INT8 the constant is rounded to the per-tensor activation step and that column sets the per-channel weight scale. Folding such channels into the 1×1 conv\'s bias (exact) fixes it; it is on by default. The issue\'s "agreement 0.0" on random weights was also a probe problem: with random BN statistics MobileOne\'s fp32 logits explode and one class wins for every input.',
    '`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py --update-manifest` (writes `benchmarks/results/int8_accuracy.json` and `metrics.fashion_mnist_int8` in `weights_manifest/`): full Fashion-MNIST test set; calibration on train-split images, probe 512 validation images (training files), compiled INT8; "always equalized" and "never equalized" fix the choice that `equalize="auto"` makes on the probe; the last columns score the eager INT8 graph calibrated on other numbers of images. Bar: drop ≤ 0.5 points. MobileOne-S0 is the sensitive one: compare its calibration columns with the bar.',
)
INT8_SPEED_TEXT = ("Speed, INT8 vs timm's fp32 eager twin (reparameterized) and our fp32 deploy model, one process, 1 thread, training runs paused (SIGSTOP) while timing (recorded as `conditions` in each file):\n"
                   "`python benchmarks/inference.py --int8 --models repan_repvgg_a0 --batch 8 --fit-steps 200 --fit-threads 2 --out benchmarks/results/inference_int8_224_a0.json`,\n"
                   "`python benchmarks/inference.py --int8 --models repan_mobileone_s0 --batch 8 --fit-steps 500 --fit-more 1000 --fit-lr 0.1 --calib-batches 32 --out benchmarks/results/inference_int8_224_s0_fit1500.json`,\n"
                   "`python benchmarks/inference.py --int8 --models repan_mobileone_s0 --fit-steps 500 --fit-lr 0.1 --out benchmarks/results/inference_int8_224_s0.json` (and with `--calib-batches 32 --out benchmarks/results/inference_int8_224_s0_calib512.json`; both measured before activation equalization existed),\n"
                   "`python benchmarks/inference.py --shipped --only mobileone --size 224 --batch 8 --out benchmarks/results/inference_int8_s0_224.json`,\n"
                   "`python benchmarks/inference.py --shipped --batch 64 --out benchmarks/results/inference_int8_shipped.json`.\n"
                   "The ImageNet-shaped 224² rows (3 channels, 1000 classes) are our models *fitted* first (`--fit-steps`, `--fit-more`: SGD on Fashion-MNIST training images resized to 224², classes 0–9; the `fit` record in each file gives steps, time and top-1 on 256 validation images; fitted weights are cached outside the tree), because there are no ImageNet weights here and random weights give near-uniform logits on which top-1 agreement is noise. timm's twin keeps random weights: it is only timed. "
                   "RepVGG-A0 fitted 200 steps (61 % validation top-1) passes the self-check at 4.0× timm's speed. MobileOne-S0 passes once it is trained enough to have margins between its classes: fitted 1,500 steps (80 %) it agrees on 0.938 of the probe (relative error 0.13) at 3.5× timm's speed; fitted 500 steps (66 %) it was refused (0.58 / 0.70 agreement with 64 / 512 calibration images before equalization, 0.79 with it — the analysis below). The shipped 28×28 checkpoints run {shipped_speedup}× faster in INT8 than in their fp32 deploy form (eager, `inference_int8_shipped.json`), and the MobileOne-S0 checkpoint shipped when it was measured (`repan_mobileone_s0.fmnist_repan_kd`, since superseded by the `repan_mobileone_s0_w050` layout and no longer in the manifest) passed at 224² too (1 channel, trained at 28²); the same command now measures today's MobileOne entry.")
INT8_SPEED_FILES = ("inference_int8_224_a0.json", "inference_int8_224_s0_fit1500.json", "inference_int8_224_s0.json",
                    "inference_int8_224_s0_calib512.json", "inference_int8_s0_224.json", "inference_int8_shipped.json")
INT8_SENSITIVITY_TEXT = (
    "Why MobileOne-S0 fitted only 500 steps is refused at 224² (`python benchmarks/int8_sensitivity.py --model repan_mobileone_s0 "
    "--weights ~/.cache/repan/int8_fit/repan_mobileone_s0-steps500-size224-224-batch16-lr0.1-seed0.safetensors --size 224 "
    "--calib-batches 32 --weights-only --layers --groups --equalize 0.5 none --out benchmarks/results/int8_sensitivity_mobileone_s0.json`, "
    "then the same with `--equalize --split-diagonals --append`; "
    "eager INT8 graph, 512 calibration images, 256 validation images as probe). Three layer patterns, two of them fixed: "
    "(1) dead channels read by a 1×1 conv with huge weights (the fold); (2) the depthwise convs' outputs have per-channel ranges a single "
    "per-tensor uint8 scale cannot hold — the propagated SQNR falls from 30 to 16 dB at the first depthwise → pointwise pair; "
    "activation equalization keeps it at 28 dB; (3) the identity branch fused into every square 1×1 conv makes its diagonal large: {diag_high} "
    "the largest other weight of its row (median over rows; {diag_low}), so the per-channel int8 scale is set by the diagonal (weight error "
    "{err} instead of {err_kept} with the diagonal kept apart). "
    "What is left is diffuse: the SQNR falls ≈0.5 dB per layer over 43 layers; no group of layers kept in fp32 brings the "
    "agreement to 0.9 (best: the 21 pointwise convs, 0.875), and splitting each square 1×1 conv into its off-diagonal part and a "
    "depthwise 1×1 conv for the diagonal (`--split-diagonals`) does not either. The model is also fragile: 66 % validation top-1 "
    "after 8,000 training images, so small changes of its logits flip its top-1 on many probe images; trained 1,000 steps "
    "more (80 %) the same flow passes (0.938, above).")
INT8_SENSITIVITY_FILE = "int8_sensitivity_mobileone_s0.json"
ONNX_INT8_TEXT = (
    "ONNX Runtime's INT8 route, for comparison (`python benchmarks/onnx_int8.py --out benchmarks/results/onnx_int8_shipped.json`, "
    "training paused; {cpu}): the checked ONNX export of each shipped checkpoint, after the same constant-channel fold and activation "
    "equalization as `quantize` (`--no-transforms` turns them off, to see what they do for MobileOne-S0), quantized by "
    "onnxruntime's static QDQ quantizer (per-channel int8 weights, uint8 activations, 512 training-split calibration images). "
    "Top-1 agreement with the fp32 model, ORT INT8 on 512 validation images against the torchao program on 64 (its "
    "self-check): {agreements}. Its INT8 time as a fraction of the torchao program's, same checkpoint, input "
    "and thread (this file and `inference_int8_shipped.json`, measured one after the other): {ratios}. The torchao route "
    "stays the default because it is one `torch.export` artefact checked in one process.")
ONNX_INT8_FILE = "onnx_int8_shipped.json"


def _diagonal_figures(sens: Dict) -> Dict[str, str]:
    """Pattern (3) of the INT8 sensitivity text, from the file: the diagonal of each square 1×1 conv over the
    largest other weight of its row (median over rows), and the per-channel weight error with and without it."""
    rows = sens["results"]["weights_only"]["square_pointwise"]
    ratio = {k: v["diag_over_max_offdiag_median"] for k, v in rows.items()}
    high = [r for r in ratio.values() if r >= 2]
    low = [r for r in ratio.values() if r < 2]
    pct = lambda xs: f"{100 * min(xs):.2g}–{100 * max(xs):.2g} %"  # noqa: E731
    return {"diag_high": f"in {len(high)} of the {len(ratio)} square 1×1 convs it is {min(high):.1f}–{max(high):.1f}×",
            "diag_low": f"{min(low):.2f}–{max(low):.1f}× in the other {len(low)}" if low else "no other conv",
            "err": pct([v["weight_rel_error"] for v in rows.values()]),
            "err_kept": pct([v["weight_rel_error_diagonal_kept"] for v in rows.values()])}


def int8() -> List[str]:
    acc = _load("int8_accuracy.json")
    if not acc:
        return []
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import inference  # noqa: E402  (same folder: the tables are the scripts' own)
    import int8_accuracy  # noqa: E402

    out = ["### INT8 on CPU (torchao PT2E): accuracy per shipped checkpoint and speed", ""]
    for para in INT8_TEXT:
        out += [para, ""]
    shipped_timing = (_load("inference_int8_shipped.json") or {}).get("results", [])
    shipped = [r["int8_vs"]["deploy"] for r in shipped_timing]
    speedup = f"{min(shipped):.1f}–{max(shipped):.1f}" if shipped else "(not measured)"
    out += [int8_accuracy.markdown(acc), "", INT8_SPEED_TEXT.format(shipped_speedup=speedup), ""]
    speed = [d for d in (_load(n) for n in INT8_SPEED_FILES) if d]
    for i, d in enumerate(speed):  # the machine line again wherever the machine changes (sessions differ)
        table = inference.markdown_int8(d).split("\n")
        same = i > 0 and speed[i - 1]["config"]["cpu"] == d["config"]["cpu"]
        out += (table[2:] if same else table) + [""]
    ort = _load(ONNX_INT8_FILE)
    if ort:
        import onnx_int8  # noqa: E402

        torchao = {r["model"]: r for r in shipped_timing}
        both = [r for r in ort["results"] if r["model"] in torchao]
        ratios = "; ".join(f"{r['model'].split('.')[0]} {r['median_ms']['ort_int8'] / torchao[r['model']]['median_ms']['int8']:.2f}"
                           for r in both) or "not measured"
        agreements = "; ".join(f"{r['model'].split('.')[0]} {r['check']['top1_agreement']:.3f} / "
                               f"{torchao[r['model']]['check']['top1_agreement']:.3f}" for r in both) or "not measured"
        out += [ONNX_INT8_TEXT.format(ratios=ratios, agreements=agreements,
                                      cpu=ort["config"].get("cpu", "CPU not recorded")), "", onnx_int8.markdown(ort), ""]
    sens = _load(INT8_SENSITIVITY_FILE)
    if sens:
        import int8_sensitivity  # noqa: E402

        out += [INT8_SENSITIVITY_TEXT.format(**_diagonal_figures(sens)), "", int8_sensitivity.markdown(sens), ""]
    return out


def render() -> str:
    lines = [START, ""]
    for part in (accuracy, shipped, int8, train_throughput, exactness, inference, forms, step_time, cycle_overhead, detection):
        lines += part()
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the markers {START} ... {END}", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render() + tail
    if a.check:
        return 0 if new == text else 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

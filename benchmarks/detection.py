"""Detection with RepAn backbones on the Fashion-MNIST canvas set: mAP of a baseline-trained vs a
RepAn-trained backbone, and latency of the deploy vs train-form detector.

Default command (the comparison; deploy checkpoints from ``repan-train``, e.g.
``repan-train --method baseline --model repan_repvgg_a0_w025 --out runs/a0-base`` and
``repan-train --method repan ... --out runs/a0-repan``)::

    python benchmarks/detection.py \
        --baseline-checkpoint runs/a0-base/deploy.safetensors \
        --repan-checkpoint runs/a0-repan/deploy.safetensors

Without checkpoints, ``--train-backbones`` first trains both backbones itself with ``repan-train``
(``--backbone-epochs`` per cycle, baseline: 1 cycle of ``cycles × epochs``, RepAn: ``--backbone-cycles``
cycles), into ``--work-dir``. Other forms::

    python benchmarks/detection.py --parts latency                 # latency only (minutes)
    python benchmarks/detection.py --parts map --train-backbones --smoke   # a tiny end-to-end smoke run

What it does:

* **data**: ``--data-root`` (default ``data/fmnist_det``) is created if missing by
  :func:`repan_zoo.detection.make_fmnist_detection` (1000 train / 200 val canvases, 96×96, seed 0);
* **mAP**: each backbone checkpoint is fine-tuned with the same recipe
  (``train_scripts/finetune_detection.py``: ``--detector``, ``--epochs``, ``--unfold`` ...,
  ``--finetune-args`` for more) for every ``--seeds`` seed; the deploy detector's COCO mAP / mAP50
  on the validation canvases is reported per run and as mean ± std;
* **latency**: for each ``--detectors`` kind, the detector on a deploy backbone, its train form
  (each Rep block unfolded into its architecture's branches, :func:`architecture_train_form`)
  and the RepAn fine-tuning form (:func:`repan_zoo.detection.unfold_backbone`, default branches,
  λ=0), all three computing the same function (so the same detections and post-processing):
  parameters, FLOPs and CPU latency (:mod:`repan_zoo.profile`) of the whole detector on one image
  and of backbone + FPN on a batch, and each unfused form's FPN features against its fused copy.
  The weights are random (cost only): latency does not depend on them.

Writes ``--out`` (default ``benchmarks/results/detection.json``); a run of one part keeps the other
part's last results in the file.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

import repan_zoo  # noqa: E402
import repan_zoo.models  # noqa: E402,F401  (registers the repan_* models)
from repan_zoo.checkpoint import atomic_write  # noqa: E402
from repan_zoo.detection import (  # noqa: E402
    DetectorConfig,
    build_detector,
    compare_detectors,
    make_fmnist_detection,
    probe_images,
    unfold_backbone,
)
from repan_zoo.detection.fmnist import CanvasSpec  # noqa: E402
from repan_zoo.profile import count_flops, count_params, cpu_latency, cpu_name  # noqa: E402


# -- data ---------------------------------------------------------------------------------------------
def ensure_data(root: Path, num_train: int, num_val: int, canvas: int, seed: int) -> Dict[str, Any]:
    marker = [root / s / "instances.json" for s in ("train", "val")]
    spec = CanvasSpec(canvas=canvas, min_side=max(8, round(canvas * 20 / 96)), max_side=max(8, round(canvas * 44 / 96)))
    if not all(p.is_file() for p in marker):
        print(f"[bench] writing the Fashion-MNIST detection set to {root}", flush=True)
        make_fmnist_detection(root, num_train=num_train, num_val=num_val, seed=seed, spec=spec)
    info = json.loads(marker[0].read_text()).get("info", {})
    counts = {s: len(json.loads((root / s / "instances.json").read_text())["images"]) for s in ("train", "val")}
    return {"root": str(root), "images": counts, "info": info}


# -- backbones ----------------------------------------------------------------------------------------
def train_backbones(args: argparse.Namespace) -> Dict[str, str]:
    """Train a baseline and a RepAn backbone with repan-train (same total epochs); returns their
    deploy checkpoints."""
    work = Path(args.work_dir)
    total = args.backbone_cycles * args.backbone_epochs
    common = ["--model", args.backbone, "--out"]
    extra = shlex.split(args.backbone_args)
    runs = {
        "baseline": ["--method", "baseline", "--cycles", "1", "--epochs", str(total)],
        "repan": ["--method", "repan", "--cycles", str(args.backbone_cycles), "--epochs", str(args.backbone_epochs)],
    }
    paths = {}
    for name, method_args in runs.items():
        out = work / f"backbone-{name}"
        ckpt = out / "deploy.safetensors"
        if not ckpt.is_file():
            cmd = [sys.executable, "-m", "repan_zoo.train_cli", *method_args, *common, str(out), *extra]
            if (out / "checkpoints" / "latest.json").is_file():
                cmd.append("--resume")
            print("[bench] " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        paths[name] = str(ckpt)
    return paths


# -- mAP ----------------------------------------------------------------------------------------------
def finetune(args: argparse.Namespace, name: str, checkpoint: str, seed: int, data_root: str) -> Dict[str, Any]:
    out = Path(args.work_dir) / f"det-{name}-{args.detector}-s{seed}"
    cmd = [
        sys.executable, str(ROOT / "train_scripts" / "finetune_detection.py"),
        "--data-root", data_root, "--out", str(out), "--detector", args.detector, "--backbone", args.backbone,
        "--backbone-checkpoint", checkpoint, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--seed", str(seed), "--no-progress",
    ]
    if args.unfold:
        cmd.append("--unfold")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += shlex.split(args.finetune_args)
    if args.rerun and out.exists():
        import shutil

        shutil.rmtree(out)
    if (out / "final.json").is_file():
        print(f"[bench] {out}/final.json exists: reusing it (--rerun to train again)", flush=True)
    else:
        if (out / "checkpoints" / "latest.json").is_file():
            cmd.append("--resume")
        print("[bench] " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"[bench] {name} seed {seed}: {time.time() - start:.0f}s", flush=True)
    final = json.loads((out / "final.json").read_text())
    return {
        "seed": seed,
        "run": str(out),
        "command": " ".join(shlex.quote(c) for c in cmd),
        "val_deploy": final["val_deploy"],
        "val_train_form": final["val_train_form"],
        "detections_match": final["exactness"]["detections_match"],
        "feature_rel_error": final["exactness"]["train_vs_deploy"]["feature_rel_error"],
        "train_time_s": final["train_time_s"],
    }


def _mean_std(values: List[float]) -> Dict[str, Optional[float]]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def map_part(args: argparse.Namespace, data: Dict[str, Any]) -> Dict[str, Any]:
    checkpoints = {"baseline": args.baseline_checkpoint, "repan": args.repan_checkpoint}
    trained_here = False
    if args.train_backbones:
        checkpoints = {**train_backbones(args), **{k: v for k, v in checkpoints.items() if v}}
        trained_here = True
    missing = [k for k, v in checkpoints.items() if not v]
    if missing:
        raise SystemExit(f"--parts map needs --baseline-checkpoint and --repan-checkpoint (missing: {missing}), "
                         "or --train-backbones")
    result: Dict[str, Any] = {"detector": args.detector, "backbone": args.backbone, "data": data,
                              "backbones_trained_by_this_script": trained_here, "checkpoints": checkpoints,
                              "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                         "unfold": args.unfold, "finetune_args": args.finetune_args},
                              "runs": {}, "summary": {}}
    for name, ckpt in checkpoints.items():
        runs = [finetune(args, name, ckpt, seed, data["root"]) for seed in args.seeds]
        result["runs"][name] = runs
        result["summary"][name] = {
            "mAP": _mean_std([r["val_deploy"]["mAP"] for r in runs]),
            "mAP50": _mean_std([r["val_deploy"]["mAP50"] for r in runs]),
        }
    base, rep = result["summary"]["baseline"]["mAP"]["mean"], result["summary"]["repan"]["mAP"]["mean"]
    result["summary"]["repan_minus_baseline_mAP"] = rep - base
    return result


# -- latency ------------------------------------------------------------------------------------------
def architecture_train_form(deploy: torch.nn.Module) -> torch.nn.Module:
    """The detector with every Rep block unfolded into its architecture's branches (λ=1) whose new
    output BNs have γ=0: the train form's cost with the deploy form's function, so that both
    forms make the same detections and the post-processing costs the same."""
    import copy

    work = copy.deepcopy(deploy)
    for _, block in repan_zoo.rep_blocks(work):
        block.unfold(block.arch_branches, k=1, lam=1.0, restore="inherit", branch_gamma=0.0, skip_unfit=True)
    return work


def latency_part(args: argparse.Namespace) -> Dict[str, Any]:
    rows = []
    for kind in args.detectors:
        cfg = DetectorConfig(detector=kind, backbone=args.backbone, num_classes=11, min_size=args.canvas,
                             max_size=args.canvas, model_kwargs={"deploy": True})
        torch.manual_seed(0)
        deploy = build_detector(cfg).eval()
        forms = {
            "deploy": deploy,
            "train": architecture_train_form(deploy).eval(),
            "repan_unfolded": unfold_backbone(deploy, generator=torch.Generator().manual_seed(0)).eval(),  # λ=0
        }
        image = probe_images(deploy, 1)
        batch = torch.rand(args.latency_batch, *deploy.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))
        entry: Dict[str, Any] = {"detector": kind, "backbone": args.backbone, "image_size": args.canvas,
                                 "threads": args.latency_threads, "rounds": args.rounds,
                                 "repeats_per_round": args.repeats, "forms": {}}
        body = f"body_latency_batch{args.latency_batch}"
        fpn = f"backbone_fpn_latency_batch{args.latency_batch}"
        jobs = {}
        for name, model in forms.items():
            norm, _ = model.transform(list(batch))
            entry["forms"][name] = {
                "rep_branches": sum(1 + len(b.extras) if not b.deploy else 1 for _, b in repan_zoo.rep_blocks(model)),
                "params": count_params(model),
                "detector_flops_1img": count_flops(model, image),
                "body_params": count_params(model.backbone.body),
                "body_flops_1img": count_flops(model.backbone.body, norm.tensors[:1]),
            }
            jobs[name] = {"detector_latency_1img": (model, image), fpn: (model.backbone, norm.tensors),
                          body: (model.backbone.body, norm.tensors)}
        # rounds interleave the forms, so that load from other processes on a shared machine hits all alike
        medians: Dict[str, Dict[str, List[float]]] = {n: {k: [] for k in jobs[n]} for n in jobs}
        for _ in range(args.rounds):
            for name, measures in jobs.items():
                for key, (module, x) in measures.items():
                    t = cpu_latency(module, x, repeats=args.repeats, warmup=1, threads=args.latency_threads)
                    medians[name][key].append(t["median_ms"])
        for name, per_key in medians.items():
            for key, values in per_key.items():
                entry["forms"][name][key] = {"median_ms": statistics.median(values), "min_ms": min(values),
                                             "max_ms": max(values), "round_medians_ms": values}
        for name in ("train", "repan_unfolded"):  # each form against its own fused copy
            fused = repan_zoo.reparameterize(forms[name])
            report = compare_detectors(forms[name], fused, probe_images(deploy, 2, seed=3))
            entry["forms"][name]["vs_fused"] = {k: report[k] for k in ("feature_rel_error", "feature_noise")}
        f = entry["forms"]
        d = f["deploy"]["detector_latency_1img"]["median_ms"]
        entry["speedup_deploy_vs_train"] = {
            "detector_1img": f["train"]["detector_latency_1img"]["median_ms"] / d,
            "body": f["train"][body]["median_ms"] / f["deploy"][body]["median_ms"]}
        entry["speedup_deploy_vs_repan_unfolded"] = {
            "detector_1img": f["repan_unfolded"]["detector_latency_1img"]["median_ms"] / d,
            "body": f["repan_unfolded"][body]["median_ms"] / f["deploy"][body]["median_ms"]}
        rows.append(entry)
        print(f"[bench] {kind}: detector on 1 image: deploy {d:.1f} ms, train "
              f"{f['train']['detector_latency_1img']['median_ms']:.1f} ms, RepAn-unfolded "
              f"{f['repan_unfolded']['detector_latency_1img']['median_ms']:.1f} ms; backbone body on "
              f"{args.latency_batch}: deploy {f['deploy'][body]['median_ms']:.1f} ms, train "
              f"{f['train'][body]['median_ms']:.1f} ms, RepAn-unfolded {f['repan_unfolded'][body]['median_ms']:.1f} ms",
              flush=True)
    return {"rows": rows, "cpu": cpu_name(), "torch": torch.__version__}


# -- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", default="latency,map", help="latency, map, or both")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detection.json"))
    p.add_argument("--backbone", default="repan_repvgg_a0_w025")
    p.add_argument("--detector", default="retinanet", choices=("retinanet", "fasterrcnn"), help="mAP part")
    p.add_argument("--detectors", default="retinanet,fasterrcnn", help="latency part")
    p.add_argument("--data-root", default=str(ROOT / "data" / "fmnist_det"))
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--canvas", type=int, default=96)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--baseline-checkpoint", default=None, help="deploy safetensors of the baseline-trained backbone")
    p.add_argument("--repan-checkpoint", default=None, help="deploy safetensors of the RepAn-trained backbone")
    p.add_argument("--train-backbones", action="store_true", help="train both backbones with repan-train first")
    p.add_argument("--backbone-cycles", type=int, default=4, help="RepAn cycles (baseline: one cycle of the same epochs)")
    p.add_argument("--backbone-epochs", type=int, default=3, help="epochs per RepAn cycle")
    p.add_argument("--backbone-args", default="", help="more repan-train options, e.g. '--train-subset 20000'")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_detection"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=12, help="detection fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, the script's default)")
    p.add_argument("--unfold", action=argparse.BooleanOptionalAction, default=True,
                   help="unfold the deploy backbone for fine-tuning (repan_zoo.unfold)")
    p.add_argument("--finetune-args", default="", help="more finetune_detection.py options")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training processes")
    p.add_argument("--rerun", action="store_true", help="delete earlier fine-tuning runs in --work-dir and train again")
    p.add_argument("--latency-threads", type=int, default=1)
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per form and round (median taken)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the forms; reported: median of round medians")
    p.add_argument("--smoke", action="store_true",
                   help="tiny everything (64 train / 16 val canvases of 64 px, 1 epoch, 0.25-epoch backbones)")
    args = p.parse_args(argv)
    args.detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    if args.smoke:
        args.num_train, args.num_val, args.canvas, args.epochs, args.batch_size = 64, 16, 64, 1, 8
        args.data_root = str(Path(args.work_dir) / "smoke_data")
        args.backbone_cycles, args.backbone_epochs = 2, 1
        args.backbone_args = (args.backbone_args + " --train-subset 2000 --val-size 500 --test-subset 1000 "
                              "--max-steps-per-epoch 4 --calib-batches 1").strip()
        args.finetune_args = (args.finetune_args + " --max-steps-per-epoch 4").strip()
        args.repeats, args.rounds = min(args.repeats, 3), min(args.rounds, 2)

    out = Path(args.out)
    results: Dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    command = " ".join(shlex.quote(a) for a in (["python", *sys.argv] if argv is None else ["main", *argv]))
    results.pop("command", None)
    results["machine"] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if "latency" in parts:
        results["latency"] = {**latency_part(args), "command": command,
                              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "map" in parts:
        data = ensure_data(Path(args.data_root), args.num_train, args.num_val, args.canvas, args.data_seed)
        results["map"] = {**map_part(args, data), "smoke": bool(args.smoke), "command": command,
                          "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(results, indent=1)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(f"[bench] wrote {out}")
    if "map" in results:
        s = results["map"]["summary"]
        print(f"[bench] val mAP: baseline {s['baseline']['mAP']['mean']:.4f}, RepAn {s['repan']['mAP']['mean']:.4f} "
              f"(smoke: {results['map']['smoke']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

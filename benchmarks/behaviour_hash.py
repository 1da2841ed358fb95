#!/usr/bin/env python3
"""Hash the deploy tensors of fixed short classification runs (plain, RepAn + KD) and a fixed short detection run.

A refactor of the training code must not change what it produces: run this before and after,
on the same machine, and compare the two hashes (issue 17). Both runs are seeded, on CPU with
one thread, and spell every option out, so a changed default shows up as a changed hash rather
than passing silently. The hash covers the state dict (sorted names; dtype, shape and raw bytes
of every tensor), not the file bytes, so a change of the checkpoint's metadata or layout alone
does not count.

    python benchmarks/behaviour_hash.py --work /tmp/behaviour            # prints and writes the hashes
    python benchmarks/behaviour_hash.py --work /tmp/behaviour --expect benchmarks/results/behaviour.json

With ``--expect`` it exits 1 when a hash differs from the recorded one. Without ``--record``
nothing in the tree is written. Takes about a minute on one core.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("teacher", "classification", "detection")
RECORD = ROOT / "benchmarks" / "results" / "behaviour.json"

# every option of `repan-train`, spelled out (the values that matter for a short Algorithm-1 run)
CLASSIFICATION = [
    "--method", "repan", "--model", "repan_repvgg_a1_w025", "--model-kwargs", "{}",
    "--cycles", "2", "--epochs", "1", "--first-cycle", "expand", "--branches", "arch", "--k", "1",
    "--restore", "inherit", "--no-residual", "--branch-gamma", "0", "--calib-batches", "2",
    "--precise-bn", "0", "--calib-batch-size", "64", "--lam-schedule", "linear", "--lam-warmup", "0.3",
    "--lam-start", "0", "--lam-end", "1", "--lam-per-iter",
    "--teacher", "repan_resnet18_w025", "--teacher-kwargs", "{}", "--teacher-checkpoint", "$WORK/teacher/deploy.safetensors",
    "--kd-alpha", "0.9", "--kd-T", "10",
    "--dataset", "fashion_mnist", "--val-size", "256", "--train-subset", "1024", "--no-test-each-epoch",
    "--test-subset", "256", "--split-seed", "0", "--augment", "crop_flip_erase",
    "--batch-size", "64", "--eval-batch-size", "256", "--lr", "0.1", "--later-lr", "0.05", "--min-lr", "0",
    "--warmup-epochs", "0", "--wd", "5e-4", "--momentum", "0.9", "--no-nesterov", "--label-smoothing", "0.1",
    "--clip-grad", "5", "--no-amp", "--channels-last", "--no-sync-bn", "--seed", "7",
    "--max-steps-per-epoch", "8", "--device", "cpu", "--workers", "0", "--threads", "1", "--deterministic",
    "--no-progress", "--keep-checkpoints", "2", "--no-plot",
]

# the KD teacher: a plain run of the same data options (the baseline path)
TEACHER = ["--method", "baseline", "--model", "repan_resnet18_w025", "--model-kwargs", "{}", "--cycles", "1", "--epochs", "1",
           *CLASSIFICATION[CLASSIFICATION.index("--dataset"):]]
for _flag in ("--seed", "--max-steps-per-epoch"):
    TEACHER[TEACHER.index(_flag) + 1] = {"--seed": "11", "--max-steps-per-epoch": "4"}[_flag]

# every option of `repan-detect` that shapes the result
DETECTION = [
    "--detector", "retinanet", "--backbone", "repan_repvgg_a0_w025", "--model-kwargs", '{"in_chans": 1}',
    "--fpn-channels", "16", "--anchor-scale", "4", "--score-thresh", "0.05", "--detections-per-img", "100",
    "--unfold", "--branches", "arch", "--k", "1", "--restore", "inherit", "--no-residual",
    "--branch-gamma", "0", "--cycles", "2", "--lam-schedule", "linear", "--lam-start", "0", "--lam-end", "1",
    "--lam-warmup", "0.3", "--calib-batches", "1", "--calib-batch-size", "4",
    "--epochs", "1", "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.01", "--min-lr", "0",
    "--warmup-steps", "1", "--momentum", "0.9", "--wd", "1e-4", "--clip-grad", "10", "--seed", "3",
    "--max-steps-per-epoch", "3", "--device", "cpu", "--workers", "0", "--threads", "1",
    "--eval-batch-size", "4", "--eval-every", "1", "--no-flip", "--no-progress",
]


def tensor_hash(path: Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in a safetensors file, by name."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _run(cmd: List[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})


def commands(work: Path) -> Dict[str, List[str]]:
    py = sys.executable
    def at(args: List[str]) -> List[str]:
        return [a.replace("$WORK", str(work)) for a in args]

    return {
        "detection_data": [py, "train_scripts/make_fmnist_detection.py", "--out", str(work / "det_data"),
                           "--num-train", "12", "--num-val", "4", "--seed", "5", "--canvas", "64"],
        "teacher": [py, "-m", "repan_zoo.train_cli", *at(TEACHER), "--out", str(work / "teacher")],
        "classification": [py, "-m", "repan_zoo.train_cli", *at(CLASSIFICATION), "--out", str(work / "cls")],
        "detection": [py, "-m", "repan_zoo.detection.cli", "--data-root", str(work / "det_data"),
                      *DETECTION, "--out", str(work / "det")],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    p.add_argument("--expect", type=Path, default=None, help="compare with this recorded JSON; exit 1 on a mismatch")
    p.add_argument("--record", action="store_true", help=f"write the hashes to {RECORD.relative_to(ROOT)}")
    args = p.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cmds = commands(args.work)
    for name in ("detection_data", "teacher", "classification", "detection"):
        _run(cmds[name])
    result = {
        "teacher": tensor_hash(args.work / "teacher" / "deploy.safetensors"),
        "classification": tensor_hash(args.work / "cls" / "deploy.safetensors"),
        "detection": tensor_hash(args.work / "det" / "deploy.safetensors"),
        "commands": {k: ["python", *(a.replace(str(args.work), "$WORK") for a in v[1:])] for k, v in cmds.items()},
        "how": "python benchmarks/behaviour_hash.py --work DIR (hash of the deploy state dicts)",
    }
    print(json.dumps({k: result[k] for k in RUNS}, indent=1))
    if args.record:
        RECORD.write_text(json.dumps(result, indent=1) + "\n")
    if args.expect:
        want = json.loads(args.expect.read_text())
        bad = [k for k in RUNS if want[k] != result[k]]
        if bad:
            print(f"behaviour changed: {bad} differ from {args.expect}", file=sys.stderr)
            return 1
        print("behaviour preserved: all hashes match", args.expect)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The paper's training settings (Sec. 5.1), ready to run where a GPU and the data exist.

Each setting trains a teacher, then the four arms of the comparison with one shared recipe:
baseline (R·E epochs), KD only, RepAn without KD, RepAn + KD. Every run is one call of the
bundled training script (``python -m repan_zoo.train_cli``, under ``torchrun`` with ``--nproc``).

``cifar100`` — RepVGG-A1 at 0.25× width (``repan_repvgg_a1_w025``, CIFAR layout), batch 128,
SGD lr 0.2 with cosine annealing, weight decay 1e-4, 160 epochs for baseline/KD vs RepAn
5 cycles × 30 epochs, KD α = 0.9, T = 10 (Tables 1 and 4). The teacher (``repan_repvgg_b3_w025``)
is trained by the same script for 160 epochs.

``imagenet`` — RepVGG-A1 (full width) on an ImageFolder (``train/``, ``val/``; ``val`` is the
reported split), batch 256 over 8 GPUs, SGD lr 0.1 cosine with 5 warm-up epochs, weight decay 1e-4,
120 epochs vs RepAn 3 cycles × 40 epochs, KD α = 0.5 (the paper's value for large datasets; its
temperature is not stated, T = 10 as on CIFAR), AMP. The teacher is timm's ImageNet ``repvgg_b3``
(``--teacher-pretrained``, downloaded by timm). One difference from the paper: the ImageFolder
pipeline here augments with resize + centre crop + flips only, not RepVGG's random-resized crops,
so expect lower absolute accuracy from every arm alike.

    python train_scripts/paper_recipes.py cifar100 --data-dir DATA --out runs/paper_cifar100
    python train_scripts/paper_recipes.py imagenet --data-dir IMAGENET --nproc 8 --out runs/paper_imagenet
    python train_scripts/paper_recipes.py cifar100 --data-dir DATA --dry-run      # print the commands

Runs whose ``final.json`` exists are skipped, and a stopped run continues (``--resume``), so the
command can be repeated until every arm is done; ``benchmarks/accuracy/aggregate.py`` tables
the folders the same way as the Fashion-MNIST sweep.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ARMS = ("teacher", "baseline", "kd", "repan", "repan_kd")

SETTINGS: Dict[str, Dict] = {
    "cifar100": {
        "model": "repan_repvgg_a1_w025",
        "common": ["--dataset", "cifar100", "--batch-size", "128", "--lr", "0.2", "--wd", "1e-4",
                   "--momentum", "0.9", "--val-size", "5000"],
        "epochs": 160, "cycles": 5, "cycle_epochs": 30,
        "kd": ["--kd-alpha", "0.9", "--kd-T", "10"],
        "teacher": {"model": "repan_repvgg_b3_w025", "train": True},
        "nproc": 1,
    },
    "imagenet": {
        "model": "repan_repvgg_a1",
        "common": ["--dataset", "imagefolder", "--img-size", "224", "--batch-size", "256", "--lr", "0.1",
                   "--warmup-epochs", "5", "--wd", "1e-4", "--momentum", "0.9", "--amp", "--workers", "8"],
        "epochs": 120, "cycles": 3, "cycle_epochs": 40,
        "kd": ["--kd-alpha", "0.5", "--kd-T", "10"],
        "teacher": {"model": "repvgg_b3", "train": False},
        "nproc": 8,
    },
}
#: RepAn as the paper runs it: Alg. 1 line 2 fuses before cycle 1, so every cycle starts with Expand;
#: each Expand re-adds the network's own branch kinds (Sec. 3 (iii)), new branches at BN γ = 0
#: (``--branch-gamma``'s default: an exact no-op at the cycle start), Restore by Sec. 3.3, λ by Θ (Eq. 3).
REPAN = ["--first-cycle", "expand", "--restore", "inherit", "--branches", "arch", "--branch-gamma", "0",
         "--lam-schedule", "linear", "--lam-warmup", "0.3", "--calib-batches", "5"]


def commands(setting: str, data_dir: str, out: Path, device: str = "cuda", seed: int = 0) -> Dict[str, List[str]]:
    """``{arm: train_cli arguments}`` for one setting (without the launcher)."""
    s = SETTINGS[setting]
    common = s["common"] + ["--data-dir", data_dir, "--device", device, "--seed", str(seed), "--no-progress"]
    one = ["--cycles", "1", "--epochs", str(s["epochs"])]
    cyc = ["--cycles", str(s["cycles"]), "--epochs", str(s["cycle_epochs"])]
    t = s["teacher"]
    teacher = ["--teacher", t["model"]] + (["--teacher-checkpoint", str(out / "teacher" / "deploy.safetensors")]
                                           if t["train"] else ["--teacher-pretrained"])
    model = ["--model", s["model"]]
    arms = {
        "baseline": model + common + one + ["--method", "baseline"],
        "kd": model + common + one + ["--method", "kd"] + teacher + s["kd"],
        "repan": model + common + cyc + ["--method", "repan"] + REPAN,
        "repan_kd": model + common + cyc + ["--method", "repan"] + REPAN + teacher + s["kd"],
    }
    if t["train"]:
        arms = {"teacher": ["--model", t["model"]] + common + one + ["--method", "baseline"], **arms}
    return {arm: args + ["--out", str(out / arm)] for arm, args in arms.items()}


def launcher(nproc: int) -> List[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "repan_zoo.train_cli"]
    return [sys.executable, "-m", "repan_zoo.train_cli"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=sorted(SETTINGS))
    p.add_argument("--data-dir", required=True, help="CIFAR-100 folder (torchvision layout) or ImageNet ImageFolder root")
    p.add_argument("--out", default=None, help="run folders (default runs/paper_<setting>)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--nproc", type=int, default=None, help="GPUs (torchrun processes); default: the setting's")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    out = Path(a.out or f"runs/paper_{a.setting}")
    nproc = a.nproc or SETTINGS[a.setting]["nproc"]
    for arm, args in commands(a.setting, a.data_dir, out, a.device, a.seed).items():
        if arm not in a.arms:
            continue
        run_dir = out / arm
        if (run_dir / "final.json").exists():
            print(f"skip {arm}: {run_dir / 'final.json'} exists")
            continue
        cmd = launcher(nproc) + args + (["--resume"] if (run_dir / "checkpoints").exists() else [])
        print(" ".join(cmd), flush=True)
        if not a.dry_run:
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"{arm} failed (exit {rc}); fix the cause and run the same command again to resume", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())

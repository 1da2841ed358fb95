"""The main job of the README (`make demo`): a few minutes on 2 CPU cores.

1. Train a narrow RepVGG briefly with RepAn (Algorithm 1: 2 cycles) on a Fashion-MNIST subset,
   with the bundled training script (``repan_zoo.train_cli``).
2. Reparameterize it (train → deploy) and verify exactness on held-out images.
3. Save the deploy checkpoint (typed safetensors) and reload it into a fresh
   ``timm.create_model(..., deploy=True)``.
4. Measure train-form vs deploy latency, parameters and FLOPs.
5. Load the bundled (offline) pretrained weights through timm and evaluate them on the test set.

Usage: ``python train_scripts/demo.py --out outputs/demo`` (add ``--quick`` for a smaller run).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import timm

import repan_zoo
from repan_zoo import metrics, train_cli
from repan_zoo.checkpoint import load_into, read_checkpoint
from repan_zoo.data import Normalize, load_splits
from repan_zoo.manifest import load_manifest
from repan_zoo.profile import profile_forms
from repan_zoo.verify import relative_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--model", default="repan_repvgg_a0_w025")
    p.add_argument("--quick", action="store_true", help="2,000 training images at batch 32 with LR warmup (smoke run, ~1 min)")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    out = Path(a.out)
    torch.manual_seed(0)
    t0 = time.time()

    # 1. RepAn training (Algorithm 1), 2 cycles x 1 epoch on a subset
    train_args = [
        "--method", "repan", "--model", a.model, "--dataset", "fashion_mnist",
        "--cycles", "2", "--epochs", "1", "--first-cycle", "plain",
        "--train-subset", "2000" if a.quick else "10000", "--val-size", "1000", "--test-subset", "2000",
        "--batch-size", "32" if a.quick else "128", "--lr", "0.1", "--calib-batches", "3", "--seed", "0",
        "--out", str(out / "run"), "--device", "cpu", "--no-progress",
    ]
    if a.data_dir:
        train_args += ["--data-dir", a.data_dir]
    if a.quick:
        # 2,000 images at batch 128 are 16 steps an epoch: too few to leave chance at lr 0.1, and the
        # cycle-2 restart then diverged (test ~10 %). Batch 32 gives 63 steps; a 0.2-epoch linear warmup
        # keeps the first steps of each cycle stable (test ~71 % in ~10 s of training on one core).
        train_args += ["--warmup-epochs", "0.2"]
    run_dir = out / "run"
    if (run_dir / "final.json").exists():  # a finished earlier demo: train again from scratch
        shutil.rmtree(run_dir)
    elif (run_dir / "checkpoints").exists():  # a demo that was stopped: continue it
        train_args.append("--resume")
    print("== 1. RepAn training:", "repan-train", " ".join(train_args), flush=True)
    result = train_cli.run(train_args)
    final = json.loads((out / "run" / "final.json").read_text())
    print(f"   deploy model: val top-1 {final['val_top1']:.2f}  test top-1 {final['test_top1']:.2f}  "
          f"({final['train_time_s']:.0f} s of training)")

    # 2. exactness of the last Rep, certified by the trainer on held-out images
    cert = final["exactness"]
    print(f"== 2. exactness (fused vs unfused, {cert.get('probe')}): max relative error "
          f"{cert['model_rel_error']:.2e} (tolerance {cert['tolerance']:g}); worst block {cert['worst_block']} "
          f"{cert['worst_block_rel_error']:.2e}")

    # 3. the deploy checkpoint reloads into a fresh timm model with identical outputs
    ckpt = out / "run" / "deploy.safetensors"
    state, meta = read_checkpoint(ckpt)
    fresh = timm.create_model(a.model, deploy=True, **final["create_kwargs"])
    load_into(fresh, state, meta, what=str(ckpt))
    x = torch.randn(8, final["create_kwargs"]["in_chans"], 28, 28)
    with torch.no_grad():
        same = relative_error(result.model.eval()(x), fresh.eval()(x))
    print(f"== 3. deploy checkpoint {ckpt} ({ckpt.stat().st_size / 1e6:.2f} MB, form={meta['form']}): "
          f"reloaded through timm.create_model(deploy=True), output difference {same:.1e}")
    if same > 0:
        print("   reload is not bit-identical", file=sys.stderr)
        return 1

    # 4. both forms measured
    train_form = timm.create_model(a.model, **final["create_kwargs"])
    prof = profile_forms(train_form, input_size=(1, 28, 28), batch_size=64, repeats=10)
    tr, de = prof["train"], prof["deploy"]
    print(f"== 4. batch 64 at 28x28, 1 thread: train form {tr['latency']['median_ms']:.2f} ms, "
          f"{tr['params'] / 1e6:.3f} M params, {tr['flops'] / 1e6:.1f} MFLOPs | deploy {de['latency']['median_ms']:.2f} ms, "
          f"{de['params'] / 1e6:.3f} M params, {de['flops'] / 1e6:.1f} MFLOPs")

    # 5. bundled weights through timm, no network
    bundled = [e for e in load_manifest().values() if e.source == "bundled"]
    if not bundled:
        print("== 5. no bundled weights in the manifest", file=sys.stderr)
        return 1
    data = load_splits("fashion_mnist", a.data_dir, val_size=1000, split_seed=0, seed=0, flip=False)
    images, labels = data.test[torch.arange(len(data.test))]
    for entry in bundled:
        model = timm.create_model(f"{entry.model}.{entry.tag}", pretrained=True)
        top1 = metrics.top1(model.eval(), images, labels, normalize=Normalize(entry.mean, entry.std))  # the weights' own preprocessing
        listed = entry.metrics.get("fashion_mnist", {})
        listed = listed.get("test_top1") if isinstance(listed, dict) else listed
        print(f"== 5. timm.create_model('{entry.model}.{entry.tag}', pretrained=True) (bundled, sha256 verified): "
              f"test top-1 {top1:.2f} (manifest: {listed})")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

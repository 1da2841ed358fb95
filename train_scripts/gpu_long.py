"""The ``long`` accuracy plan (issue #14) on a lent GPU machine, one call at a time.

A call runs for at most ``--budget`` seconds and leaves in ``--out`` what is to be committed:
``results.tgz`` (the plan's result folders: final.json, metrics, curves, command) and
``deploy-<n>.tgz`` (deploy checkpoints of the finished runs, chunked under 15 MB, for shipping and
for the teacher). Each GPU machine starts bare, so a call completes whole runs: phase 1 trains the
teacher and every run that needs no teacher; phase 2 (the teacher's ``deploy.safetensors`` given by
``--teacher``) the distillation runs. Runs still going at the budget are stopped and lost there; a
later call starts them again. The plan's runs share the GPU (``--jobs``), each with its dataset on
the device (no per-batch host work).

Here, once: ``mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/`` (ignored by git;
carry it). On the device machine (nothing can be installed there; torch, timm, safetensors and
huggingface_hub are)::

    PYTHONPATH=$PWD python3 train_scripts/gpu_long.py --out $OUT --data-dir .fmnist --budget 540
    PYTHONPATH=$PWD python3 train_scripts/gpu_long.py --out $OUT --data-dir .fmnist --budget 540 \\
        --teacher .gpu_state/teacher/deploy.safetensors                      # phase 2

Here, afterwards: unpack ``results.tgz`` into the work tree and commit it; keep the deploy files
under the runs root (``~/.cache/repan/runs/accuracy``) for ``benchmarks/accuracy/ship.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 15 * 2 ** 20


def _pack_deploy(work: Path, out: Path, max_files: int = 6) -> list:
    files = sorted(work.rglob("deploy.safetensors"))
    chunks, current, size = [], [], 0
    for f in files:
        if current and size + f.stat().st_size > CHUNK:
            chunks.append(current)
            current, size = [], 0
        current.append(f)
        size += f.stat().st_size
    if current:
        chunks.append(current)
    written = []
    for i, chunk in enumerate(chunks[:max_files]):
        path = out / f"deploy-{i}.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for f in chunk:
                tar.add(f, arcname=str(f.relative_to(work)))
        written.append(path.name)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder whose files come back ($OUT)")
    p.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's four IDX files")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole call, packing included")
    p.add_argument("--jobs", type=int, default=12, help="runs sharing the GPU at once")
    p.add_argument("--plan", default="main", help="sweep plan at the long scale (main | ablations)")
    p.add_argument("--teacher", default=None, help="phase 2: the teacher's deploy.safetensors from phase 1")
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    t0 = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    work, results = tmp / "repan-runs", tmp / "repan-results"
    env = dict(os.environ, REPAN_RESULTS=str(results), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "sweep.py"), "--scale", "long", "--plan", a.plan,
           "--device", a.device, "--jobs", str(a.jobs), "--work", str(work),
           "--deadline", str(max(30.0, a.budget - 60 - (time.time() - t0)))]
    if a.teacher:  # phase 2: the teacher's weights where the sweep looks for them, its results beside
        dest = work / "long" / "main" / "teacher"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a.teacher, dest / "deploy.safetensors")
        final = Path(a.teacher).with_name("final.json")
        tdir = results / "long" / "main" / "teacher"
        tdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(final if final.is_file() else ROOT / "benchmarks" / "accuracy" / "results" / "long" / "main"
                     / "teacher" / "final.json", tdir / "final.json")
    # phase 1: the teacher and the runs that need none; phase 2: the distillation runs
    cmd += ["--kd-runs", "only" if a.teacher else "skip"]
    extra = ["--", "--no-progress", "--keep-checkpoints", "1"] + (["--data-dir", a.data_dir] if a.data_dir else [])
    proc = subprocess.run(cmd + extra, cwd=ROOT, env=env)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        if results.is_dir():
            tar.add(results, arcname="results")
    packed = _pack_deploy(work, out)
    summary = {"rc": proc.returncode, "seconds": round(time.time() - t0, 1), "deploy_files": packed,
               "phase": 2 if a.teacher else 1}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

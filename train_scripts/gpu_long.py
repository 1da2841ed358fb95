"""The ``long`` accuracy plan (issue #14) on a lent GPU machine, one budgeted call at a time.

A call trains the chosen runs of the plan side by side on the GPU (``--runs``, in priority order;
default: every run without results) until ``--budget`` seconds, then leaves in ``--out`` what comes
back (at most 8 files, 16 MiB each, 64 MiB together):

* ``results.tgz``: the result folders of the runs that finished (final.json, metrics, curve, command);
* ``runs-<n>.tgz``: per run, in priority order while the size limits allow, either its
  ``deploy.safetensors`` (finished: for shipping) or its last epoch checkpoint with its metrics and
  recipe (stopped at the budget: it resumes *here*, on the CPU, where the GPU left it, with
  ``--amp`` bf16 here against fp16 there; each epoch's ``device`` is in the run's ``metrics.json``,
  and for runs older than that record, ``aggregate.py`` reads the GPU epochs from the summaries);
* ``summary.json`` (per run: state, epochs done, median epoch seconds, what was packed) and ``sweep.log``.

Each GPU machine starts bare: nothing can be installed there; torch, timm, safetensors and
huggingface_hub are (this repo's timm travels as a wheel: the device image's may differ). The
dataset and the KD teacher travel as ignored folders. Here, once per session::

    mkdir -p .fmnist .gpu_state/teacher && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/
    cp repan_zoo/weights/repan_resnet18_w025-fmnist_long.safetensors .gpu_state/teacher/deploy.safetensors
    echo /.whl/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: -d .whl timm==1.0.31

There (``carry``: ``.fmnist``, ``.gpu_state``, ``.whl``; as run on 2026-11-30, two calls of 561 s
and 240 s, the second on the still-warm machine continuing the first's runs from /tmp)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 python3 train_scripts/gpu_long.py --out $OUT --data-dir .fmnist --budget 560 \
        --pack-s 30 --teacher .gpu_state/teacher/deploy.safetensors --mps --runs NAME,NAME,...

Here, afterwards: ``python train_scripts/gpu_long.py --unpack FOLDER`` puts the finished results
and the call's summary (``long/gpu_calls/<finished_at>.json``: the epochs each run trained there)
into ``benchmarks/accuracy/results/`` (commit them) and the run folders under the runs root
(``~/.cache/repan/runs/accuracy``), where ``sweep.py`` continues the stopped runs and
``ship.py`` finds the deploy weights.
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
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "accuracy"))
import sweep  # noqa: E402
from repan_zoo.errors import RunLockedError  # noqa: E402
from repan_zoo.runlock import LOCK_NAME, RunLock  # noqa: E402
from repan_zoo.runtime.checkpointing import Checkpointer  # noqa: E402

#: what comes back from a call: files of at most 16 MiB, 64 MiB together, 8 files (the device
#: tool's limits), with room left for the archive headers, results.tgz, summary.json and sweep.log
CHUNK = 16 * 2 ** 20 - 2 ** 16
TOTAL = 61 * 2 ** 20
MAX_CHUNKS = 5
#: files of a stopped run that travel with its checkpoint (the lock and the deploy file do not)
RUN_FILES = ("recipe.json", "metrics.json", "metrics.csv", "log.txt")


def _epochs_done(run_dir: Path) -> int:
    """Epochs of the run's last checkpoint whose files are there (0: none, or a pointer to a folder
    a copy cut short)."""
    ck = Checkpointer(run_dir)
    try:
        folder = ck.latest_dir()  # the pointer's folder, else the newest epoch folder holding both files
    except OSError:
        return 0
    if folder is None or not all((folder / n).is_file() for n in ("model.safetensors", "state.pt")):
        return 0
    if folder.name[2:].isdigit():  # ep0020: the trainer names epoch folders by global epoch
        return int(folder.name[2:])
    try:
        return int(ck.progress().get("global_epoch", 0))
    except (TypeError, ValueError):
        return 0


def _run_files(run_dir: Path, finished: bool) -> List[Path]:
    """What of a run folder comes back: a finished run's deploy weights; a stopped run's last
    checkpoint (``latest.json`` and the folder it names) with its metrics and recipe."""
    if finished:
        return [run_dir / "deploy.safetensors"]
    ck = Checkpointer(run_dir)
    return ([ck.pointer] + sorted(p for p in ck.latest_dir().iterdir() if p.is_file())
            + [run_dir / n for n in RUN_FILES if (run_dir / n).is_file()])


def pack_runs(work: Path, results: Path, plan: str, names: List[str], out: Path,
              chunk: int = CHUNK, total: int = TOTAL, max_chunks: int = MAX_CHUNKS) -> Dict[str, str]:
    """Pack the run folders of ``names`` (priority order) into ``out/runs-<n>.tgz`` chunks of at
    most ``chunk`` bytes, ``total`` bytes and ``max_chunks`` files together; a run is never split.
    Returns, per run, ``"<file>"`` where it went or why it stayed (``"nothing to pack"``,
    ``"left: size limit"``)."""
    placed: Dict[str, str] = {}
    chunks: List[List[Path]] = []
    sizes: List[int] = []
    used = 0
    for name in names:
        run_dir = work / plan / name
        finished = (results / plan / name / "final.json").is_file() and (run_dir / "deploy.safetensors").is_file()
        if not finished and not (run_dir / "checkpoints" / "latest.json").is_file():
            placed[name] = "nothing to pack"
            continue
        files = _run_files(run_dir, finished)
        size = sum(f.stat().st_size for f in files)
        if used + size > total or size > chunk:
            placed[name] = "left: size limit"
            continue
        i = next((i for i, s in enumerate(sizes) if s + size <= chunk), None)
        if i is None:
            if len(chunks) >= max_chunks:
                placed[name] = "left: size limit"
                continue
            chunks.append([])
            sizes.append(0)
            i = len(chunks) - 1
        chunks[i] += files
        sizes[i] += size
        used += size
        placed[name] = f"runs-{i}.tgz"
    for i, files in enumerate(chunks):
        with tarfile.open(out / f"runs-{i}.tgz", "w:gz", compresslevel=1) as tar:
            for f in files:
                tar.add(f, arcname=str(f.relative_to(work)))
    return placed


def _median_epoch_s(run_dir: Path) -> Optional[float]:
    times = sweep._epoch_times(sweep._history(run_dir / "metrics.json"))
    return round(sweep._median(times), 2) if times else None


def _gpu_name() -> str:
    """The GPU as ``nvidia-smi`` names it (with the driver), or ``"none"``."""
    try:
        got = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return got.stdout.strip().replace("\n", "; ") if got.returncode == 0 and got.stdout.strip() else "none"


#: where the MPS daemon and its clients meet (set in the runs' environment)
MPS_DIRS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


def _start_mps(env: Dict[str, str]) -> str:
    """Start CUDA MPS (kernels of the runs' processes then share the GPU at once instead of taking
    turns) with its folders set in ``env``, and check that a CUDA process starts under it; stop it
    again (and take the folders out of ``env``) when one does not."""
    ctl = shutil.which("nvidia-cuda-mps-control")
    if ctl is None:
        return "no nvidia-cuda-mps-control: runs take turns on the GPU"
    for key in MPS_DIRS:
        env[key] = str(Path("/tmp") / key.lower())
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    if subprocess.run([ctl, "-d"], env=env).returncode == 0:
        probe = [sys.executable, "-c", "import torch; x = torch.ones(8, device='cuda'); print(float(x.sum()))"]
        try:
            if subprocess.run(probe, env=env, timeout=90, capture_output=True).returncode == 0:
                return "MPS on"
        except subprocess.TimeoutExpired:
            pass
        _stop_mps(env)
    for key in MPS_DIRS:
        env.pop(key)
    return "MPS did not start: runs take turns on the GPU"


def _stop_mps(env: Dict[str, str]) -> None:
    subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env=env)


def train(a: argparse.Namespace) -> int:
    t0 = time.time()
    all_runs = [r["name"] for r in sweep.plan_runs(a.plan, "long")]
    names = [n for n in (a.runs.split(",") if a.runs else all_runs) if n]
    unknown = sorted(set(names) - set(all_runs))
    if unknown:
        raise SystemExit(f"--runs: {', '.join(unknown)} not in the long/{a.plan} plan; choose from {', '.join(all_runs)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    work, results = tmp / "repan-runs", tmp / "repan-results"
    plan = f"long/{a.plan}"
    if not results.is_dir():  # the committed results: runs that have them are skipped, the teacher's is there
        shutil.copytree(sweep.RESULTS, results)
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)  # and the carried wheels
    env = dict(os.environ, REPAN_RESULTS=str(results), PYTHONPATH=path, PYTHONUNBUFFERED="1")
    names = [n for n in names if n != "teacher" and not (results / plan / n / "final.json").is_file()]
    if not names:  # every run asked for has results (or is the teacher): nothing to train
        _write_summary(out, plan=plan, rc=0, t0=t0, mps="not started", device=a.device, runs={},
                       note="every run asked for already has results (the teacher is never trained here); nothing trained")
        return 0
    mps = _start_mps(env) if a.mps else "not asked"
    print(mps, flush=True)
    if a.teacher:  # the teacher's weights where the sweep looks for them
        dest = work / "long" / "main" / "teacher"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a.teacher, dest / "deploy.safetensors")
    jobs = a.jobs or max(1, len(names))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "sweep.py"), "--scale", "long", "--plan", a.plan,
           "--device", a.device, "--jobs", str(jobs), "--work", str(work), "--only", ",".join(names),
           "--deadline", str(max(30.0, a.budget - a.pack_s - (time.time() - t0)))]
    extra = ["--", "--no-progress", "--keep-checkpoints", "1"] + (["--data-dir", a.data_dir] if a.data_dir else [])
    with open(out / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd + extra, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(line)
        proc.wait()
    if mps == "MPS on":
        _stop_mps(env)
    finished = [n for n in names if (results / plan / n / "final.json").is_file()]
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for n in finished:
            tar.add(results / plan / n, arcname=f"results/{plan}/{n}")
    packed = pack_runs(work, results, plan, names, out)
    _write_summary(out, plan=plan, rc=proc.returncode, t0=t0, mps=mps, device=a.device,
                   runs={n: {"state": "finished" if n in finished else "stopped",
                             "epochs_done": _epochs_done(work / plan / n),
                             "epoch_s": _median_epoch_s(work / plan / n), "packed": packed.get(n)} for n in names})
    return 0 if proc.returncode == 0 else 1


def _write_summary(out: Path, *, plan: str, rc: int, t0: float, mps: str, device: str, runs: Dict, **extra) -> None:
    """The call's ``summary.json`` (what ``--unpack`` files under ``gpu_calls/``), also printed."""
    summary = {"plan": plan, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rc": rc,
               "seconds": round(time.time() - t0, 1), "gpu": _gpu_name(), "mps": mps, "device": device, "runs": runs,
               **extra}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def unpack(folder: Path, results: Path = sweep.RESULTS, runs_root: Path = sweep.RUNS_ROOT) -> List[str]:
    """Put a call's files in place here: its ``summary.json`` into ``results/<scale>/gpu_calls/``,
    finished results into ``results`` (existing ones are kept), run files under ``runs_root``. A
    stopped run replaces the local folder of the same run only when it got further (the local one
    is then renamed ``<run>.before-gpu``). Returns what was done."""
    done: List[str] = []
    summary = folder / "summary.json"
    if summary.is_file():  # the call's record (epochs per run on the GPU, timings): committed beside the results
        call = json.loads(summary.read_text())
        stamp = call.get("finished_at", "").replace(":", "").replace("-", "") or f"{int(summary.stat().st_mtime)}"
        dest = results / call.get("plan", "long/main").split("/")[0] / "gpu_calls" / f"{stamp}.json"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(summary, dest)
            done.append(f"call summary {dest.relative_to(results)}")
    res = folder / "results.tgz"
    if res.is_file():
        with tarfile.open(res) as tar:
            staging = folder.parent / (folder.name + ".unpacked")
            tar.extractall(staging, filter="data")
        for final in sorted((staging / "results").glob("*/*/*/final.json")):
            rel = final.parent.relative_to(staging / "results")
            dest = results / rel
            if (dest / "final.json").is_file():
                done.append(f"kept existing results {rel}")
                continue
            shutil.copytree(final.parent, dest, dirs_exist_ok=True)
            done.append(f"results {rel}")
        shutil.rmtree(staging, ignore_errors=True)  # no folder when no run finished
    for chunk in sorted(folder.glob("runs-*.tgz")):
        staging = folder.parent / (folder.name + "." + chunk.stem)
        with tarfile.open(chunk) as tar:
            tar.extractall(staging, filter="data")
        for run_dir in sorted(p.parent for p in staging.glob("*/*/*/recipe.json")) + sorted(
                p.parent for p in staging.glob("*/*/*/deploy.safetensors")):
            rel = run_dir.relative_to(staging)
            dest = runs_root / rel
            if (run_dir / "deploy.safetensors").is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / "deploy.safetensors", dest / "deploy.safetensors")
                done.append(f"deploy {rel}")
                continue
            here, there = _epochs_done(dest), _epochs_done(run_dir)
            if dest.exists() and here >= there:
                done.append(f"kept local {rel} ({here} epochs; GPU {there})")
                continue
            lock = RunLock(dest, command="gpu_long.py --unpack")
            try:
                lock.acquire()  # a run training here now keeps its folder
            except RunLockedError as exc:
                done.append(f"skipped {rel}: being trained here ({exc.pid or 'lock held'}); unpack again once it stops")
                continue
            try:
                incoming = dest.with_name(dest.name + ".unpacking")
                shutil.rmtree(incoming, ignore_errors=True)
                shutil.copytree(run_dir, incoming)  # beside, then renamed into place whole
                if here or any(p.name != LOCK_NAME for p in dest.iterdir()):
                    backup = dest.with_name(dest.name + ".before-gpu")
                    shutil.rmtree(backup, ignore_errors=True)
                    dest.rename(backup)
                    lock.path = backup / LOCK_NAME  # the held lock moved with it: released there below
                else:
                    shutil.rmtree(dest)  # only the lock this call made
                    lock.path = dest / ".gone"  # nothing to unlink; never a lock a new run makes at dest
                incoming.rename(dest)
            finally:
                lock.release()
            done.append(f"checkpoint {rel} ({there} epochs)" + (f"; local {here} epochs kept as {dest.name}.before-gpu"
                                                               if here else ""))
        shutil.rmtree(staging)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder whose files come back ($OUT)")
    p.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's four IDX files")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole call, packing included")
    p.add_argument("--pack-s", type=float, default=45.0, help="seconds kept for packing at the end of the budget")
    p.add_argument("--jobs", type=int, default=0, help="runs sharing the GPU at once (default: all chosen runs)")
    p.add_argument("--plan", default="main", help="sweep plan at the long scale (main | ablations)")
    p.add_argument("--runs", default=None, help="comma-separated run names in priority order (default: all without results)")
    p.add_argument("--teacher", default=None, help="the teacher's deploy.safetensors (for the KD runs)")
    p.add_argument("--mps", action="store_true", help="share the GPU through CUDA MPS (falls back to turns)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--unpack", metavar="FOLDER", default=None, help="here: put a call's returned files in place")
    a = p.parse_args(argv)
    if a.unpack:
        for line in unpack(Path(a.unpack)):
            print(line)
        return 0
    if not a.out:
        p.error("--out is required (or --unpack FOLDER)")
    return train(a)


if __name__ == "__main__":
    sys.exit(main())

"""One writer per run directory (repan_zoo.runlock): a second repan-train on the same --out, or a
--resume beside the live run, is refused in one line naming the holder's PID, while the first run
finishes correctly; the lock goes with its process however it ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repan_zoo.data import FASHION_MNIST_DIR

LOCK_NAME = ".repan.lock"  # repan_zoo.runlock.LOCK_NAME

TESTS = Path(__file__).resolve().parent
SMALL = ["--model", "tinyrep_test", "--train-subset", "256", "--val-size", "64", "--test-subset", "64",
         "--batch-size", "32", "--eval-batch-size", "64", "--lr", "0.05", "--calib-batches", "1",
         "--threads", "1", "--no-progress", "--no-plot", "--method", "baseline", "--cycles", "1", "--epochs", "3"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), e.get("PYTHONPATH", "")])
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return e


def train(out: Path, *args: str, **kw):
    cmd = [sys.executable, "-m", "repan_zoo.train_cli", "--import", "tinyrep_models", "--out", str(out), *SMALL, *args]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(6000):  # polls the filesystem; not a timing assertion
        if path.exists() or proc.poll() is not None:
            return
        time.sleep(0.05)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist")
def test_second_writer_and_resume_beside_a_live_run_are_refused(tmp_path):
    out = tmp_path / "run"
    first = train(out, "--seed", "1")
    wait_for(out / "recipe.json", first)
    assert first.poll() is None, first.communicate()
    pid = first.pid
    os.kill(pid, signal.SIGSTOP)  # keep the first run alive, mid-run, however fast this machine is
    try:
        for args in (("--seed", "2"), ("--resume",)):
            second = train(out, *args)
            _, err = second.communicate(timeout=600)
            lines = [line for line in err.splitlines() if line.strip()]
            assert second.returncode == 2, err
            assert len(lines) == 1 and f"process {pid}" in lines[0] and "--out" in lines[0], err
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err
    final = json.loads((out / "final.json").read_text())
    assert final["recipe"]["seed"] == 1 and final["epochs_trained"] == 3
    assert json.loads((out / "recipe.json").read_text())["seed"] == 1
    assert not (out / "resume.json").exists()
    assert not (out / LOCK_NAME).exists()  # released on exit


def test_lock_is_released_when_its_process_is_killed(tmp_path):
    from repan_zoo.errors import RunLockedError
    from repan_zoo.runlock import RunLock

    out = tmp_path / "run"
    code = f"from repan_zoo.runlock import RunLock; RunLock({str(out)!r}).acquire(); print('held', flush=True); " \
           "import time; time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLockedError, match=f"process {holder.pid}") as info:
        RunLock(out).acquire()
    assert info.value.pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(out).acquire()  # the kernel dropped the dead holder's lock
    lock.release()
    assert not (out / LOCK_NAME).exists()


def test_refused_run_leaves_no_directory_behind(tmp_path):
    from repan_zoo.runlock import RunLock

    lock = RunLock(tmp_path / "new").acquire()
    lock.release(discard_dir=True)
    assert not (tmp_path / "new").exists()

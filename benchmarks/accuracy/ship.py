"""Pick the checkpoints the zoo ships: per model, the RepAn run (with or without KD) with the best
*validation* accuracy in a sweep plan, and bundle it with ``repan-publish --bundle``.

The test set plays no part in the choice (it is only reported), so the shipped test accuracy is
an honest estimate. Ties on validation go to the lower seed.

    python benchmarks/accuracy/ship.py --plan cpu/main                  # print the choice and the commands
    python benchmarks/accuracy/ship.py --plan cpu/main --publish        # run them (writes the manifest)
    python benchmarks/accuracy/ship.py --plan cpu/main --models repan_mobileone_s0 --publish

The run folders (``--work``, default ``runs/accuracy``) must still hold the deploy checkpoints;
their results under ``benchmarks/accuracy/results/`` carry the figures and the sha256 that the
checkpoint must still match.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

sys.path.insert(0, str(ROOT))
from repan_zoo.checkpoint import sha256_file  # noqa: E402


def best_runs(plan: str, models: Optional[List[str]] = None) -> Dict[str, Dict]:
    """``{model: final.json + "run"}`` of the best-by-validation RepAn run of each model."""
    best: Dict[str, Dict] = {}
    for path in sorted((RESULTS / plan).glob("*/final.json")):
        final = json.loads(path.read_text())
        if final.get("method") != "repan" or (models and final["model"] not in models):
            continue
        final["run"] = path.parent.name
        key = (final["val_top1"], -final["recipe"]["seed"])
        cur = best.get(final["model"])
        if cur is None or key > (cur["val_top1"], -cur["recipe"]["seed"]):
            best[final["model"]] = final
    return best


def publish_command(final: Dict, work: Path, plan: str) -> List[str]:
    run_dir = work / plan / final["run"]
    ckpt = run_dir / "deploy.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: re-run the sweep for {final['run']} (its results say which command)")
    if sha256_file(ckpt) != final["checkpoint"]["sha256"]:
        raise SystemExit(f"{ckpt} does not match the sha256 in its final.json: the run folder was overwritten; "
                         "re-run that sweep run before shipping it")
    tag = "fmnist_repan_kd" if final["recipe"].get("teacher") else "fmnist_repan"
    return [sys.executable, "-m", "repan_zoo.publish_cli", str(ckpt), "--metrics", str(run_dir / "final.json"),
            "--tag", tag, "--bundle"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="cpu/main", help="<scale>/<plan> folder under benchmarks/accuracy/results")
    p.add_argument("--work", default=str(ROOT / "runs" / "accuracy"), help="the sweep's run folders")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--publish", action="store_true", help="run repan-publish --bundle for each choice")
    a = p.parse_args(argv)
    best = best_runs(a.plan, a.models)
    if not best:
        print(f"no RepAn results under {RESULTS / a.plan}", file=sys.stderr)
        return 1
    for model, final in sorted(best.items()):
        cmd = publish_command(final, Path(a.work), a.plan)
        print(f"{model}: {final['run']} (val {final['val_top1']:.2f}, test {final['test_top1']:.2f})")
        print("  " + " ".join(cmd[1:]), flush=True)
        if a.publish:
            subprocess.run(cmd, cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pick the checkpoints the zoo ships: per model, the run with the best *validation* accuracy in a
sweep plan — in a comparison plan (``cpu/main``) its RepAn runs (with or without KD), in a ship plan
(``long/ship``) any run — and bundle it with ``repan-publish --bundle``. The manifest entry gets the
run's validation and test top-1, the mean ± std of its arm over the seeds of ``<scale>/main`` where
they exist, and the recipe with the teacher named by sha256 and manifest tag.

The test set plays no part in the choice (it is only reported), so the shipped test accuracy is
an honest estimate. Ties on validation top-1 go to the lower validation loss, then the lower seed.

    python benchmarks/accuracy/ship.py --plan cpu/main                  # print the choice and the commands
    python benchmarks/accuracy/ship.py --plan cpu/main --publish        # run them (writes the manifest)
    python benchmarks/accuracy/ship.py --plan cpu/main --models repan_mobileone_s0 --publish
    python benchmarks/accuracy/ship.py --plan long/ship --work ~/.cache/repan/runs/accuracy --publish
    python benchmarks/accuracy/ship.py --plan long/main --any-arm --replace --publish
                                      # any arm of the comparison; the new weights become the default tag
                                      # and the model's older entries are taken out of the manifest (with
                                      # those of a model it is shipped in place of: sweep.replaced_by)

Tags: ``fmnist_<arm>`` at the ``cpu`` scale, ``fmnist_<scale>_<arm>`` otherwise (``fmnist_long_kd``).

The run folders (``--work``, default ``runs/accuracy``) must still hold the deploy checkpoints;
their results under ``benchmarks/accuracy/results/`` carry the figures and the sha256 that the
checkpoint must still match.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

sys.path.insert(0, str(ROOT))
from repan_zoo import manifest  # noqa: E402
from repan_zoo.checkpoint import sha256_file  # noqa: E402


def best_runs(plan: str, models: Optional[List[str]] = None, any_arm: bool = False) -> Dict[str, Dict]:
    """``{model: final.json + "run"}`` of the best-by-validation run of each model (RepAn runs
    only, unless ``plan`` is a ship plan or ``any_arm``)."""
    any_method = any_arm or plan.endswith("/ship")
    best: Dict[str, Dict] = {}
    for path in sorted((RESULTS / plan).glob("*/final.json")):
        final = json.loads(path.read_text())
        if path.parent.name == "teacher" or (not any_method and final.get("method") != "repan") \
                or (models and final["model"] not in models):
            continue
        final["run"] = path.parent.name
        cur = best.get(final["model"])
        if cur is None or _rank(final) > _rank(cur):
            best[final["model"]] = final
    return best


def _rank(final: Dict) -> tuple:
    """Validation only: top-1, then (a tie) the lower validation loss, then the lower seed."""
    loss = final.get("val_loss")
    return final["val_top1"], -(loss if loss is not None else float("inf")), -final["recipe"]["seed"]


def run_arm(final: Dict) -> str:
    """The arm of a run: the middle of its ``<model>__<arm>__<seed|ship>`` name, else from its method
    and teacher."""
    parts = final["run"].split("__")
    if len(parts) == 3:
        return parts[1]
    return final.get("method", "run") + ("_kd" if final["recipe"].get("teacher") and final.get("method") == "repan" else "")


def ship_tag(plan: str, arm: str) -> str:
    scale = plan.split("/")[0]
    return f"fmnist_{arm}" if scale == "cpu" else f"fmnist_{scale}_{arm}"


def publish_command(final: Dict, work: Path, plan: str, replace: bool = False) -> List[str]:
    """The ``repan-publish --bundle`` command for ``final``'s run; ``replace``: as the model's default
    tag, superseding its other manifest entries."""
    run_dir = work / plan / final["run"]
    ckpt = run_dir / "deploy.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: re-run the sweep for {final['run']} (its results say which command)")
    if sha256_file(ckpt) != final["checkpoint"]["sha256"]:
        raise SystemExit(f"{ckpt} does not match the sha256 in its final.json: the run folder was overwritten; "
                         "re-run that sweep run before shipping it")
    arm = run_arm(final)
    tag = ship_tag(plan, arm)
    metrics_file = run_dir / "publish_metrics.json"
    metrics_file.write_text(json.dumps(with_arm_metrics(final, plan.split("/")[0], arm), indent=1) + "\n")
    cmd = [sys.executable, "-m", "repan_zoo.publish_cli", str(ckpt), "--metrics", str(metrics_file),
           "--tag", tag, "--bundle"]
    if replace:
        old = [e.tag for e in manifest.entries_for(final["model"]) if e.tag != tag]
        old += [f"{m}.{e.tag}" for m in replaced_layouts(final["model"]) for e in manifest.entries_for(m)]
        cmd += ["--default"] + (["--supersede", *old] if old else [])
    return cmd


def replaced_layouts(model: str) -> List[str]:
    """The models whose shipped weights ``model``'s weights replace: those a sweep scale trains in
    ``model``'s layout instead (``sweep.replaced_by``; e.g. ``repan_mobileone_s0_w050`` for MobileOne-S0
    at the ``long`` scale)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep  # noqa: E402  (same folder: the plans are defined there)

    return sweep.replaced_by(model)


def with_arm_metrics(final: Dict, scale: str, arm: str) -> Dict:
    """``final`` with ``metrics.fashion_mnist`` = this run's val/test top-1 plus the mean ± std of its
    arm over the seeds of ``<scale>/main`` (``arm_test_mean``, ``arm_val_mean``, ``arm_seeds``, and from
    two seeds on ``arm_test_std``, ``arm_val_std``) where that plan has them."""
    runs = [json.loads(p.read_text()) for p in sorted((RESULTS / scale / "main").glob(f"{final['model']}__{arm}__s*/final.json"))]
    figures = {"top1": final["test_top1"], "test_top1": final["test_top1"], "val_top1": final["val_top1"]}
    if runs:
        tests, vals = [r["test_top1"] for r in runs], [r["val_top1"] for r in runs]
        figures.update(arm_test_mean=statistics.fmean(tests), arm_val_mean=statistics.fmean(vals), arm_seeds=len(runs))
        if len(runs) > 1:  # a spread needs two seeds
            figures.update(arm_test_std=statistics.stdev(tests), arm_val_std=statistics.stdev(vals))
    return {**final, "metrics": {"fashion_mnist": figures}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="cpu/main", help="<scale>/<plan> folder under benchmarks/accuracy/results")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "repan" / "runs" / "accuracy"),
                   help="the sweep's run folders")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--publish", action="store_true", help="run repan-publish --bundle for each choice")
    p.add_argument("--any-arm", action="store_true",
                   help="choose among all arms of a comparison plan (baseline and KD too), not only RepAn's")
    p.add_argument("--replace", action="store_true",
                   help="publish as the model's default tag and supersede its other manifest entries (and those "
                        "of the model it is shipped in place of, sweep.replaced_by)")
    a = p.parse_args(argv)
    best = best_runs(a.plan, a.models, any_arm=a.any_arm)
    if not best:
        print(f"no {'' if a.any_arm else 'RepAn '}results under {RESULTS / a.plan}", file=sys.stderr)
        return 1
    for model, final in sorted(best.items()):
        cmd = publish_command(final, Path(a.work), a.plan, replace=a.replace)
        print(f"{model}: {final['run']} (val {final['val_top1']:.2f}, test {final['test_top1']:.2f})")
        print("  " + " ".join(cmd[1:]), flush=True)
        if a.publish:
            subprocess.run(cmd, cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

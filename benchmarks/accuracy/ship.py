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
    python benchmarks/accuracy/ship.py --plan long/ship --publish
    python benchmarks/accuracy/ship.py --plan long/main --any-arm --replace --publish
                                      # any arm of the comparison; the new weights become the default tag
                                      # and the model's older entries are taken out of the manifest (with
                                      # those of a model it is shipped in place of: sweep.replaced_by)
    python benchmarks/accuracy/ship.py --refresh-arm-metrics
                                      # after a run finishes: the arm mean ± std of every shipped entry
                                      # recomputed over the seeds finished now

Tags: ``fmnist_<arm>`` at the ``cpu`` scale, ``fmnist_<scale>_<arm>`` otherwise (``fmnist_long_kd``).

The run folders (``--work``, default the sweep's: ``$REPAN_RUNS`` or ``~/.cache/repan/runs/accuracy``)
must still hold the deploy checkpoints;
their results under ``benchmarks/accuracy/results/`` carry the figures and the sha256 that the
checkpoint must still match.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402  (same folder: the plans and the runs root are defined there)
from repan_zoo import manifest  # noqa: E402
from repan_zoo.checkpoint import sha256_file  # noqa: E402

RESULTS = sweep.RESULTS  # benchmarks/accuracy/results, or $REPAN_RESULTS as the sweep wrote them


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


def refresh_arm_metrics() -> List[str]:
    """Bring the arm figures (``arm_*`` of ``metrics.fashion_mnist``, :func:`with_arm_metrics`) of every
    manifest entry published from a sweep run up to date with the seeds finished since: an entry is matched
    to its run by the sha256 its ``final.json`` records; its other figures (the run's own, INT8) stay.

    Returns:
        ``'model.tag: old → new'`` for each entry rewritten (``repan_zoo.manifest.write_entry``).
    """
    changed = []
    for path in sorted(RESULTS.glob("*/*/*/final.json")):  # <scale>/<plan>/<run>/final.json
        final = json.loads(path.read_text())
        name = manifest.name_for_sha256((final.get("checkpoint") or {}).get("sha256"))
        if name is None or path.parent.name == "teacher":
            continue
        entry = manifest.find_entry(*name.split(".", 1))
        final["run"] = path.parent.name
        arm = with_arm_metrics(final, path.parents[2].name, run_arm(final))["metrics"]["fashion_mnist"]
        old = dict(entry.metrics.get("fashion_mnist") or {})
        new = {**{k: v for k, v in old.items() if not k.startswith("arm_")},
               **{k: v for k, v in arm.items() if k.startswith("arm_")}}
        if new != old:
            manifest.write_entry(dataclasses.replace(entry, metrics={**entry.metrics, "fashion_mnist": new}))  # reloads
            changed.append(f"{name}: {_arm_text(old)} → {_arm_text(new)}")
    return changed


def _arm_text(figures: Dict) -> str:
    if "arm_seeds" not in figures:
        return "no arm figures"
    spread = f" ± {figures['arm_test_std']:.2f}" if "arm_test_std" in figures else ""
    return f"arm test {figures['arm_test_mean']:.2f}{spread} over {figures['arm_seeds']} seed(s)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="cpu/main", help="<scale>/<plan> folder under benchmarks/accuracy/results")
    p.add_argument("--work", default=str(sweep.RUNS_ROOT),
                   help="the sweep's run folders (default: $REPAN_RUNS or ~/.cache/repan/runs/accuracy)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--publish", action="store_true", help="run repan-publish --bundle for each choice")
    p.add_argument("--any-arm", action="store_true",
                   help="choose among all arms of a comparison plan (baseline and KD too), not only RepAn's")
    p.add_argument("--replace", action="store_true",
                   help="publish as the model's default tag and supersede its other manifest entries (and those "
                        "of the model it is shipped in place of, sweep.replaced_by)")
    p.add_argument("--refresh-arm-metrics", action="store_true",
                   help="only recompute the arm mean ± std of the shipped entries over the seeds finished now")
    a = p.parse_args(argv)
    if a.refresh_arm_metrics:
        changed = refresh_arm_metrics()
        print("\n".join(changed) if changed else "the arm figures of every shipped entry are up to date")
        return 0
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

"""Tables and plots from the sweep results (``benchmarks/accuracy/results/<scale>/<plan>/<run>/final.json``).

Writes, for every ``<scale>/<plan>`` folder found:

* ``results/<scale>/<plan>/summary.json`` — per (model, method): test and validation top-1 of the
  deploy model, mean ± std over seeds, the seeds, epochs, train time; per run the same figures;
* ``results/<scale>/<plan>/summary.md`` — the markdown table the README quotes;
* ``results/<scale>/<plan>/curves.png`` — validation top-1 per epoch of the seed-0 runs (RepAn cycle starts dotted).

Usage: ``python benchmarks/accuracy/aggregate.py`` (no arguments; reads every plan that has results).
Nothing here trains or evaluates: every number is copied from a run's ``final.json``, which the
training script wrote after re-loading the deploy checkpoint.
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(values: List[float]) -> Dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _label(final: Dict) -> str:
    recipe = final.get("recipe", {})
    method = final.get("method", recipe.get("method"))
    teacher = recipe.get("teacher")
    if method == "repan":
        return "repan_kd" if teacher else "repan"
    return method


def summarize(plan_dir: Path) -> Dict:
    runs = []
    for final_path in sorted(plan_dir.glob("*/final.json")):
        final = json.loads(final_path.read_text())
        recipe = final.get("recipe", {})
        runs.append({
            "run": final_path.parent.name,
            "model": final["model"],
            "method": _label(final),
            "seed": recipe.get("seed"),
            "cycles": recipe.get("cycles"),
            "epochs": recipe.get("epochs"),
            "epochs_trained": final.get("epochs_trained"),
            "test_top1": final["test_top1"],
            "val_top1": final["val_top1"],
            "train_time_s": final.get("train_time_s"),
            "device": final.get("device"),
            "exactness": final.get("exactness", {}).get("model_rel_error"),
        })
    groups: Dict[tuple, List[Dict]] = defaultdict(list)
    for r in runs:
        if r["run"] != "teacher":
            groups[(r["model"], r["method"])].append(r)
    table = []
    for (model, method), rs in sorted(groups.items()):
        table.append({
            "model": model,
            "method": method,
            "seeds": sorted(r["seed"] for r in rs),
            "test_top1": _stats([r["test_top1"] for r in rs]),
            "val_top1": _stats([r["val_top1"] for r in rs]),
            "epochs_trained": rs[0]["epochs_trained"],
            "schedule": f"{rs[0]['cycles']}x{rs[0]['epochs']}",
            "train_time_s": sum(r["train_time_s"] or 0.0 for r in rs),
        })
    return {"plan": f"{plan_dir.parent.name}/{plan_dir.name}", "groups": table, "runs": runs,
            "total_train_time_s": sum(r["train_time_s"] or 0.0 for r in runs),
            "devices": sorted({str(r["device"]) for r in runs})}


def markdown(summary: Dict) -> str:
    lines = [f"Plan `{summary['plan']}` (devices: {', '.join(summary['devices'])}; total training time "
             f"{summary['total_train_time_s'] / 60:.1f} min). Deploy-model top-1 %, mean ± std over seeds.", "",
             "| model | method | schedule | epochs | seeds | val top-1 | test top-1 |",
             "|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        v, t = g["val_top1"], g["test_top1"]
        lines.append(f"| {g['model']} | {g['method']} | {g['schedule']} | {g['epochs_trained']} | "
                     f"{len(g['seeds'])} | {v['mean']:.2f} ± {v['std']:.2f} | {t['mean']:.2f} ± {t['std']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(plan_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted(plan_dir.glob("*/metrics.json"))
    if not metrics:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for path in metrics:
        if "__s0" not in path.parent.name and "__" in path.parent.name:
            continue  # one seed per curve keeps the plot readable
        rows = json.loads(path.read_text())
        xs = [r["global_epoch"] for r in rows]
        line, = ax.plot(xs, [r["val_top1"] for r in rows], label=path.parent.name, linewidth=1)
        for r in rows:  # a RepAn cycle that starts with Expand: dotted line before its first epoch
            if r.get("expand") and r.get("epoch") == 1:
                ax.axvline(r["global_epoch"] - 0.5, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{plan_dir.parent.name}/{plan_dir.name}: validation accuracy per epoch")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    plan_dirs = sorted({p.parent.parent for p in RESULTS.glob("*/*/*/final.json")})
    if not plan_dirs:
        print(f"no results under {RESULTS}: run benchmarks/accuracy/sweep.py first", file=sys.stderr)
        return 1
    for plan_dir in plan_dirs:
        summary = summarize(plan_dir)
        (plan_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        (plan_dir / "summary.md").write_text(markdown(summary))
        plot(plan_dir, plan_dir / "curves.png")
        print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

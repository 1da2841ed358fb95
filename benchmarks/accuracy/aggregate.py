"""Tables and plots from the sweep results (``benchmarks/accuracy/results/<scale>/<plan>/<run>/final.json``).

Writes, for every ``<scale>/<plan>`` folder found:

* ``results/<scale>/<plan>/summary.json`` — per (model, method): test and validation top-1 of the
  deploy model, mean ± std over seeds, the seeds, epochs, train time; per run the same figures;
* ``results/<scale>/<plan>/summary.md`` — the markdown table the README quotes;
* ``results/<scale>/<plan>/curves.png`` — validation top-1 per epoch of the seed-0 runs, a panel per model
  (RepAn cycle starts dotted).

The main table also gives the paired per-seed difference to the baseline; an ablation plan gets
one table per factor (k, KD α/T, λ schedule) around its reference run.

Usage: ``python benchmarks/accuracy/aggregate.py`` (reads every plan that has results; ``--results DIR``
for another results folder).
Nothing here trains or evaluates: every number is copied from a run's ``final.json``, which the
training script wrote after re-loading the deploy checkpoint.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(values: List[float]) -> Dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


#: plans whose runs are paired, seed by seed, with one arm of the same scale's main plan
PAIRED_WITH = {"bf16": "baseline", "expansion": "repan", "continue": "baseline"}


def cycle_start_drops(history: List[Dict], start_val: Optional[float] = None) -> List[float]:
    """The falls of validation top-1 from the last epoch of a cycle to the first epoch of the next
    one that starts with Expand (the collapse at a cycle start), in cycle order, preceded by the fall
    from ``start_val`` (the validation top-1 of the weights a continued run starts from) to its first
    epoch; percentage points, empty without such a start."""
    drops = [start_val - history[0]["val_top1"]] if start_val is not None and history else []
    drops += [prev["val_top1"] - row["val_top1"] for prev, row in zip(history, history[1:])
              if row.get("expand") and row.get("epoch") == 1 and row.get("cycle") != prev.get("cycle")]
    return drops


def gpu_call_epochs(plan_dir: Path) -> Dict[str, int]:
    """Per run of a plan, the epochs it trained in the GPU calls of ``train_scripts/gpu_long.py``
    (their summaries, committed under ``<scale>/gpu_calls/``; the most any call reports)."""
    out: Dict[str, int] = {}
    plan = f"{plan_dir.parent.name}/{plan_dir.name}"
    for path in sorted((plan_dir.parent / "gpu_calls").glob("*.json")):
        call = json.loads(path.read_text())
        if call.get("plan") != plan:
            continue
        for name, run in call.get("runs", {}).items():
            out[name] = max(out.get(name, 0), int(run.get("epochs_done") or 0))
    return out


def row_devices(history: List[Dict], final_device: Optional[str] = None, gpu_epochs: int = 0) -> List[str]:
    """The device type each history row (epoch) trained on: the row's ``device`` where recorded; a
    row without one is among the first ``gpu_epochs`` (:func:`gpu_call_epochs`) on ``cuda``, else on
    the type of the device ``final.json`` names (``"unrecorded"`` without one)."""
    last = str(final_device or "unrecorded").split(":")[0]
    return [row.get("device") or ("cuda" if i < gpu_epochs else last) for i, row in enumerate(history)]


def epoch_devices(history: List[Dict], final_device: Optional[str], gpu_epochs: int = 0) -> Dict[str, int]:
    """Epochs trained per device type (``{"cuda": 62, "cpu": 38}``), by :func:`row_devices`."""
    out: Dict[str, int] = defaultdict(int)
    for device in row_devices(history, final_device, gpu_epochs):
        out[device] += 1
    return dict(out)


def fp32_epochs_of_amp_run(history: List[Dict], command: str) -> int:
    """Epochs a run asked to train with ``--amp`` (its committed ``command.txt``) trained in fp32 on a
    CPU, by their recorded ``precision``: the sweep trains such runs with ``--no-amp`` on a CPU without
    bf16 kernels (``benchmarks/accuracy/sweep.py``; 0 for epochs from before precision was recorded)."""
    if "--amp" not in command.split():
        return 0
    return sum(1 for r in history if r.get("precision") == "fp32" and r.get("device", "cpu") == "cpu")


def _label(final: Dict, run: str = "") -> str:
    parts = run.split("__")
    if len(parts) == 3:  # <model>__<arm>__s<seed>
        return parts[1]
    recipe = final.get("recipe", {})
    method = final.get("method", recipe.get("method"))
    teacher = recipe.get("teacher")
    if method == "repan":
        return "repan_kd" if teacher else "repan"
    return method


def main_runs(plan_dir: Path, arm: Optional[str]) -> Dict[tuple, Dict]:
    """``{(model, seed): final.json}`` of ``arm``'s runs in the ``main`` plan beside ``plan_dir``
    (empty without an arm)."""
    finals = (json.loads(p.read_text()) for p in (plan_dir.parent / "main").glob(f"*__{arm}__s*/final.json")) \
        if arm else ()
    return {(f["model"], f["recipe"]["seed"]): f for f in finals}


def finished_runs(scale_dir: Path) -> Dict[str, Dict]:
    """``{checkpoint sha256: {"run": "<plan>/<run>", "val_top1": ...}}`` over every finished run of a
    scale (``<scale>/<plan>/<run>/final.json``): what a run that starts from deploy weights
    (``--init-checkpoint``, recorded as ``init.checkpoint_sha256``) started from."""
    out: Dict[str, Dict] = {}
    for path in sorted(scale_dir.glob("*/*/final.json")):
        final = json.loads(path.read_text())
        sha = (final.get("checkpoint") or {}).get("sha256")
        if sha:
            out[sha] = {"run": f"{path.parent.parent.name}/{path.parent.name}", "val_top1": final["val_top1"]}
    return out


def summarize(plan_dir: Path) -> Dict:
    runs = []
    on_gpu = gpu_call_epochs(plan_dir)
    starts = finished_runs(plan_dir.parent)
    for final_path in sorted(plan_dir.glob("*/final.json")):
        final = json.loads(final_path.read_text())
        recipe = final.get("recipe", {})
        metrics = final_path.parent / "metrics.json"
        history = json.loads(metrics.read_text()) if metrics.is_file() else []
        command = final_path.parent / "command.txt"
        start = starts.get((final.get("init") or {}).get("checkpoint_sha256"))
        same_as = final_path.parent / "same_as.txt"
        drops = cycle_start_drops(history, start["val_top1"] if start else None)
        runs.append({
            "run": final_path.parent.name,
            "copied": same_as.is_file(),  # another plan's run with the same arguments, not trained here
            "model": final["model"],
            "method": _label(final, final_path.parent.name),
            "starts_from": start["run"] if start else None,
            "cycle_start_drops": drops,
            "cycle_start_drop": max(drops) if drops else None,
            "seed": recipe.get("seed"),
            "cycles": recipe.get("cycles"),
            "epochs": recipe.get("epochs"),
            "epochs_trained": final.get("epochs_trained"),
            "test_top1": final["test_top1"],
            "val_top1": final["val_top1"],
            "train_time_s": final.get("train_time_s"),
            "device": final.get("device"),
            "epoch_devices": epoch_devices(history, final.get("device"), on_gpu.get(final_path.parent.name, 0)),
            "fp32_epochs_of_amp": fp32_epochs_of_amp_run(history, command.read_text() if command.is_file() else ""),
            "epochs_recorded": len(history),
            "exactness": final.get("exactness", {}).get("model_rel_error"),
            "k": recipe.get("k"),
            "lam_schedule": recipe.get("lam_schedule"),
            "kd_alpha": recipe.get("kd_alpha") if recipe.get("teacher") else 0.0,
            "kd_T": recipe.get("kd_T") if recipe.get("teacher") else None,
            "train_subset": recipe.get("train_subset"),
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
            "starts_from": sorted({r["starts_from"] for r in rs if r["starts_from"]}),
            "schedule": f"{rs[0]['cycles']}x{rs[0]['epochs']}",
            "train_time_s": sum(r["train_time_s"] or 0.0 for r in rs),
        })
    paired_arm = PAIRED_WITH.get(plan_dir.name)
    if paired_arm:  # the reference runs live in the main plan of the same scale
        base = {k: f["test_top1"] for k, f in main_runs(plan_dir, paired_arm).items()}
    else:
        base = {(r["model"], r["seed"]): r["test_top1"] for r in runs if r["method"] == "baseline"}
    for g in table:
        rs = groups[(g["model"], g["method"])]
        pairs = [r["test_top1"] - base[(g["model"], r["seed"])] for r in rs if (g["model"], r["seed"]) in base]
        g["delta_test_vs_baseline"] = _stats(pairs) if pairs and (paired_arm or g["method"] != "baseline") else None
        drops = [r["cycle_start_drop"] for r in rs if r["cycle_start_drop"] is not None]
        g["cycle_start_drop"] = _stats(drops) if drops else None
    if paired_arm:
        for r in runs:
            r["paired_with"] = f"{plan_dir.parent.name}/main {paired_arm}"
    return {"plan": f"{plan_dir.parent.name}/{plan_dir.name}", "groups": table, "runs": runs, "paired_with": paired_arm,
            "total_train_time_s": sum(r["train_time_s"] or 0.0 for r in runs if not r["copied"]),
            "copied_runs": [r["run"] for r in runs if r["copied"]],
            "devices": sorted({str(r["device"]) for r in runs} | {d for r in runs for d in r["epoch_devices"]
                                                                  if d != "unrecorded"}),
            "partly_on_gpu": {r["run"]: r["epoch_devices"] for r in runs
                              if "cuda" in r["epoch_devices"] and len(r["epoch_devices"]) > 1},
            "amp_runs_in_fp32": {r["run"]: [r["fp32_epochs_of_amp"], r["epochs_recorded"]] for r in runs
                                 if r["fp32_epochs_of_amp"]}}


def _pm(stats: Dict[str, float], signed: bool = False, of: Optional[int] = None) -> str:
    """``mean ± std`` (sample std); one value alone (no spread to show); `` (n = k)`` when fewer
    than ``of`` values went into it (a paired Δ whose other seeds have no baseline yet)."""
    text = f"{stats['mean']:{'+' if signed else ''}.2f}"
    if stats["n"] > 1:
        text += f" ± {stats['std']:.2f}"
    if of is not None and stats["n"] < of:
        text += f" (n = {stats['n']})"
    return text


def markdown(summary: Dict) -> str:
    """The main comparison (one row per model and method, mean ± std over seeds, and the paired
    per-seed difference to the baseline), or for an ablation plan one table per factor."""
    copied = summary.get("copied_runs") or []
    head = (f"Plan `{summary['plan']}` (devices: {', '.join(summary['devices'])}; total training time "
            f"{summary['total_train_time_s'] / 60:.1f} min, one CPU thread per run on CPU"
            + (f"; not counted: {', '.join(f'`{r}`' for r in copied)}, copied from the scale's main plan "
               "(same arguments)" if copied else "") + ").")
    if summary["plan"].split("/")[1].startswith("ablations"):
        return head + " Deploy-model top-1 %, one seed per row.\n\n" + _ablation_tables(summary["runs"])
    ref = summary.get("paired_with")
    scale = summary["plan"].split("/")[0]
    ref_text = f"the `{scale}/main` {ref} run of the same model and seed" if ref else "the baseline of the same model"
    ref_col = f"Δ test vs main's {ref}" if ref else "Δ test vs baseline"
    starts = sorted({s for g in summary["groups"] for s in g.get("starts_from", [])})
    continued = (" Each run starts from the deploy weights of the finished run its group names below "
                 "(`--init-checkpoint`, matched by sha256) and trains the epochs shown on top of them; Δ is what "
                 f"all epochs on top of {ref_text} add, and the drop counts the fall from the start's "
                 "validation top-1 to the first epoch.") if starts else ""
    lines = [head + f" Deploy-model top-1 %, mean ± std over seeds; Δ = paired per-seed difference to {ref_text}; "
             "drop = the largest fall of validation top-1 in the first epoch after an Expand (cycle start)."
             + continued, "",
             f"| model | method | schedule | epochs | seeds | val top-1 | test top-1 | {ref_col} | drop at cycle start |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        d, drop = g.get("delta_test_vs_baseline"), g.get("cycle_start_drop")
        lines.append(f"| {g['model']} | {g['method']} | {g['schedule']} | {g['epochs_trained']} | "
                     f"{len(g['seeds'])} | {_pm(g['val_top1'])} | {_pm(g['test_top1'])} | "
                     f"{_pm(d, signed=True, of=len(g['seeds'])) if d else '—'} | {_pm(drop) if drop else '—'} |")
    if starts:
        lines += ["", "Starts: " + "; ".join(
            f"`{s}` → " + ", ".join(f"{g['method']}" for g in summary["groups"] if s in g.get("starts_from", []))
            for s in starts) + "."]
    mixed = summary.get("partly_on_gpu") or {}
    if mixed:
        lines += ["", "Trained partly on a GPU (the first epochs in `train_scripts/gpu_long.py` calls with fp16 autocast, "
                  "the rest resumed here from their checkpoints, bf16 on CPU): " + "; ".join(
                      f"`{run}` ({devs.get('cuda', 0)} of {sum(devs.values())} epochs on the GPU)"
                      for run, devs in sorted(mixed.items())) + "."]
    fp32 = summary.get("amp_runs_in_fp32") or {}
    if fp32:
        lines += ["", "Trained in fp32 although the recipe says `--amp`, on a CPU without bf16 kernels (AVX2 only, where "
                  "bf16 autocast is emulated and about 10× slower; the sweep adds `--no-amp` there): " + "; ".join(
                      f"`{run}` ({n} of {total} epochs)" for run, (n, total) in sorted(fp32.items())) + "."]
    return "\n".join(lines) + "\n"


#: ablation tables: (title, pattern of the run names, the column that varies)
_ABLATIONS = [
    ("Expansion branches per kind and block, k (paper Table 5)", r"k\d+", lambda r: f"k = {r['k']}"),
    ("Distillation α / T (paper Table 4)", r"kd_.*",
     lambda r: f"α = {r['kd_alpha']:g}" + (f", T = {r['kd_T']:g}" if r["kd_T"] is not None else " (no KD)")),
    ("λ schedule Θ", r"lam_.*", lambda r: r["lam_schedule"]),
]


def _ablation_tables(runs: List[Dict]) -> str:
    ref = next((r for r in runs if r["run"] == "reference"), None)
    out, used = [], {"teacher", "reference"}
    for title, pattern, label in _ABLATIONS:
        rows = [r for r in runs if re.fullmatch(pattern, r["run"]) and r["run"] not in used]
        if not rows:
            continue
        used.update(r["run"] for r in rows)
        rows = ([ref] if ref else []) + rows
        out += [f"**{title}** (reference run: k = 1, linear λ, no KD)", "", "| setting | run | val top-1 | test top-1 |",
                "|---|---|---|---|"]
        out += [f"| {label(r)} | {r['run']} | {r['val_top1']:.2f} | {r['test_top1']:.2f} |" for r in rows]
        out.append("")
    rest = [r for r in runs if r["run"] not in used]
    if rest:
        out += ["| run | schedule | val top-1 | test top-1 | Δ test vs reference | drops at cycle starts |",
                "|---|---|---|---|---|---|"]
        for r in ([ref] if ref else []) + rest:
            delta = f"{r['test_top1'] - ref['test_top1']:+.2f}" if ref and r is not ref else "—"
            drop = " / ".join(f"{d:.2f}" for d in r.get("cycle_start_drops") or []) or "—"
            out.append(f"| {r['run']} | {r['cycles']}x{r['epochs']} | {r['val_top1']:.2f} | {r['test_top1']:.2f} | "
                       f"{delta} | {drop} |")
        out += ["", "Δ = test top-1 minus the reference run's (same seed); drops = the fall of validation "
                "top-1 in the first epoch after each Expand (cycles 2, 3, …).", ""]
    return "\n".join(out)


def plot(plan_dir: Path, out: Path) -> None:
    """Validation top-1 per epoch of the seed-0 runs, one panel per model (ablations: one panel,
    every run); a RepAn cycle that starts with Expand is marked by a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: Dict[str, List[Path]] = defaultdict(list)
    for path in sorted(plan_dir.glob("*/metrics.json")):
        name = path.parent.name
        if "__" in name and not name.endswith("__s0"):
            continue  # one seed per curve keeps the plot readable
        panels[name.split("__")[0] if "__" in name else "runs"].append(path)
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, paths) in zip(axes[0], sorted(panels.items())):
        for path in paths:
            rows = json.loads(path.read_text())
            label = path.parent.name.split("__")[1] if "__" in path.parent.name else path.parent.name
            line, = ax.plot([r["global_epoch"] for r in rows], [r["val_top1"] for r in rows], "-o", ms=2.5,
                            label=label, linewidth=1)
            for r in rows:
                if r.get("expand") and r.get("epoch") == 1:
                    ax.axvline(r["global_epoch"] - 0.5, color=line.get_color(), linestyle=":", linewidth=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{plan_dir.parent.name}/{plan_dir.name}: validation accuracy per epoch (seed 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="the results folder (<scale>/<plan>/<run>/final.json); default: %(default)s")
    results = p.parse_args(argv).results
    plan_dirs = sorted({p.parent.parent for p in results.glob("*/*/*/final.json")})
    if not plan_dirs:
        print(f"no results under {results}: run benchmarks/accuracy/sweep.py first", file=sys.stderr)
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

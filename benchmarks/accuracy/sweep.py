"""Accuracy sweeps: RepAn vs baseline vs KD on Fashion-MNIST, and the paper's ablations at small scale.

Every run is one call of the bundled training script (``python -m repan_zoo.train_cli``) with an
equal total epoch budget; its ``final.json`` and ``metrics.json`` are copied into
``benchmarks/accuracy/results/<plan>/<run>/`` (small files, committed), and the run folder
itself (checkpoints) stays under ``--work`` (not committed). A run whose results exist is skipped,
so a sweep can be stopped and started again. ``aggregate.py`` turns the results into tables and plots.

Usage::

    python benchmarks/accuracy/sweep.py --scale long --plan main --jobs 2        # issue #14's comparison (resumable)
    python benchmarks/accuracy/sweep.py --scale long --plan main --status        # done / remaining / time left
    python benchmarks/accuracy/sweep.py --plan main --jobs 4 --device cuda       # the cpu-scale comparison
    python benchmarks/accuracy/sweep.py --plan main --dry-run                    # list the commands
    python benchmarks/accuracy/aggregate.py                                      # tables + plots

Run folders (checkpoints, deploy weights) live under ``--work`` (default ``$REPAN_RUNS`` or
``~/.cache/repan/runs/accuracy``, outside the work tree); a stopped run resumes (ahead of runs not yet started) from its last
completed epoch, and a finished run's small files are written into ``results/`` with machine paths
replaced (``$REPAN_RUNS``, ``python``), ready to commit.

Plans (see :func:`plan_runs`): ``main`` = 3 models × {baseline, kd, repan, repan_kd} × 3 seeds (at the
``long`` scale: 3 seeds of the first model, 1 of the others), plus one teacher; ``ablations`` = on
repan_repvgg_a1_w025, seed 0: k = 1..5 (Table 5), KD α/T (Table 4), λ schedules (``long``: generic vs
own branch kinds, 5 × 20 cycles, half the later peak LR, a 1-epoch LR warm-up per cycle, around main's
RepAn arm of seed 0, whose results are copied as the reference, not trained twice); ``ablations_extra`` = restore modes, new-branch
γ, cycle length at the same budget and Expand before cycle 1 (the paper's literal Algorithm 1);
``bf16`` = main's baseline arm in bf16 autocast; ``expansion`` = main's RepAn arm expanding each block's
own kinds at γ = 0; ``layouts`` = MobileOne-S0's ImageNet layout vs a half-width small-input layout
(baseline arm, probe budget; ``long`` trains the latter, ``SCALES["long"]["variants"]``); ``ship`` = each
model's best arm of main (by validation), 2× the budget.
Model selection is by validation accuracy (a split carved from the training set); the test set is
only reported.
"""
from __future__ import annotations

import argparse
import json
import heapq
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregate import gpu_call_epochs, row_devices  # noqa: E402  (same folder)
from repan_zoo.data import FASHION_MNIST_DIR  # noqa: E402
from repan_zoo.runtime.hardware import device_name  # noqa: E402
from repan_zoo.runtime.onednn import cpu_bf16_native  # noqa: E402
from repan_zoo.runtime.report import portable, write_json  # noqa: E402

RESULTS = Path(os.environ.get("REPAN_RESULTS", Path(__file__).resolve().parent / "results"))
#: where run folders (checkpoints, deploy weights) live: outside the work tree, so runs outlive a checkout
RUNS_ROOT = Path(os.environ.get("REPAN_RUNS", Path.home() / ".cache" / "repan" / "runs" / "accuracy"))

#: the shared recipe (findings-cpu-scale.md setup, paper's CIFAR optimiser): SGD-Nesterov 0.9,
#: wd 1e-4, batch 128, peak LR 0.2, cosine per cycle, flips; 5,000 validation images.
COMMON = ["--dataset", "fashion_mnist", "--val-size", "5000", "--batch-size", "128", "--lr", "0.2",
          "--wd", "1e-4", "--momentum", "0.9"]
#: budgets: RepAn R × E epochs; baseline/KD R·E epochs in one schedule. ``cpu`` (the default) is
#: what the whole main plan + ablations fit into on a 2-core machine in about two hours (8,000
#: training images, 2 × 4 epochs, NHWC, test set scored only at the end); ``small`` is the setup of
#: findings-cpu-scale.md (20,000 images, 12 epochs, 2 × 6 cycles); ``full`` uses all 55,000 images.
#: ``long`` is issue #14's comparison: all 55,000 training images, a 100-epoch budget (baseline 1 × 100,
#: RepAn 4 × 25), crop + flip + random erasing, label smoothing 0.1, lr 0.1, wd 5e-4 (the recipe of
#: findings-cpu-scale.md's second measurements), bf16 autocast on CPU (see benchmarks/results/bf16_check),
#: RepAn expanding each block's own branch kinds with zero-initialised γ (no collapse at a cycle start),
#: KD from a teacher trained 150 epochs on the same split; 3 seeds for the first model, 1 for the others.
LONG_RECIPE = ["--channels-last", "--no-test-each-epoch", "--amp", "--augment", "crop_flip_erase",
               "--label-smoothing", "0.1", "--lr", "0.1", "--wd", "5e-4"]
SCALES = {
    "cpu": {"cycles": 2, "epochs": 4, "train_subset": 8000,
            "extra": ["--channels-last", "--no-test-each-epoch"]},
    "small": {"cycles": 2, "epochs": 6, "train_subset": 20000, "extra": []},
    "full": {"cycles": 3, "epochs": 8, "train_subset": None, "extra": []},
    "long": {"cycles": 4, "epochs": 25, "train_subset": None, "extra": LONG_RECIPE,
             "repan": "arch", "teacher": "long", "seeds_others": [0],
             # MobileOne-S0's ImageNet layout runs its last 11 blocks at 2×2 and 1×1 on 28×28 inputs; its
             # half-width small-input variant scored 2.3 validation points more on the ``layouts`` probe at
             # about the same step time, so the long comparison (and the ship plan after it) trains that
             # variant: the rows are then checkpoints of the layout the zoo ships
             "variants": {"repan_mobileone_s0": "repan_mobileone_s0_w050"}},
}
DEFAULT_SCALE = "cpu"
CYCLES, EPOCHS = SCALES[DEFAULT_SCALE]["cycles"], SCALES[DEFAULT_SCALE]["epochs"]
REPAN = ["--first-cycle", "plain", "--restore", "inherit", "--branches", "conv_kxk,conv_1x1",
         "--lam-schedule", "linear", "--lam-warmup", "0.3", "--calib-batches", "5"]
#: the paper's Sec. 3 (iii): every Expand re-adds the architecture's own branch kinds; their BN γ starts
#: at 0 (each new branch an exact no-op that grows by gradient), so λ = 1 from the start
REPAN_ARCH = ["--first-cycle", "plain", "--restore", "inherit", "--branches", "arch", "--branch-gamma", "0",
              "--lam-schedule", "constant", "--calib-batches", "5"]
MODELS = ["repan_repvgg_a1_w025", "repan_resnet18_acb_w025", "repan_mobileone_s0"]
#: per-model changes to the shared recipe, the same for all four arms of that model. MobileOne-S0 at
#: lr 0.2 without warm-up trains erratically here (cpu scale, seed 0: loss 3.55 after epoch 1, validation
#: 18 % → 9.6 % → 46 % → 44 % over epochs 1–4, 9.6 % again at epoch 6); the paper trains MobileOne at lr 0.1
#: with warm-up (ImageNet), and one epoch of it gives 27 % → 69 % over the same first two epochs.
ABLATION_MODEL = "repan_repvgg_a1_w025"
#: models the long scale trains in fp32: bf16 autocast made MobileOne-S0's training step 2.2x *slower* on
#: this CPU (depthwise convs; benchmarks/results/train_throughput.json), while the others gain 1.4-1.7x
FP32_MODELS = {"repan_mobileone_s0"}
MODEL_RECIPE = {"repan_mobileone_s0": ["--lr", "0.1", "--warmup-epochs", "1"]}
#: the KD teacher: a larger model (3.5 M params vs 0.8 M of repvgg_a1_w025) trained by the same script on
#: the same training images, for ``epoch_factor`` × the students' epoch budget (a teacher trained no
#: longer than its students is barely better than them at these budgets: 86.5 vs 86.0 test, cpu scale)
TEACHER = {"model": "repan_repvgg_b1_w025", "kwargs": {}, "epoch_factor": 3}
#: the long scale's teacher: the CIFAR-layout ResNet-18 0.25× (full 28×28 resolution in its first stage),
#: 150 epochs on the same 55,000 images
TEACHERS = {"long": {"model": "repan_resnet18_w025", "kwargs": {}, "epochs": 150}}
SEEDS = [0, 1, 2]
PLANS = ("main", "ablations", "ablations_extra", "bf16", "expansion", "layouts", "ship", "continue")
#: the ``layouts`` plan: MobileOne-S0 at timm's ImageNet layout (28→14→7→4→2→1 at 28×28: the last 11
#: blocks run at 2×2 and 1×1) against the small-input layout (first strided stage at stride 1:
#: 28→14→14→7→4→2) at half width, which costs about the same per training step; the baseline arm of
#: the scale's recipe on a probe budget (20,000 training images, 10 epochs, seed 0)
LAYOUTS = {"default": {}, "w050_small": {"width_mult": 0.5, "small_input": True}}
LAYOUT_MODEL, LAYOUT_SUBSET, LAYOUT_EPOCHS = "repan_mobileone_s0", 20000, 10
#: the ship plan trains each model's best arm of ``<scale>/main`` (by mean validation top-1) once more
#: with this many times the comparison budget (same cycle count, longer cycles), seed 0
SHIP_BUDGET_FACTOR = 2
#: the ``continue`` plan (``long`` scale): one more cycle for a model whose best run of main still
#: underfits, started from that run's deploy weights (Alg. 1 line 1, ``--init-checkpoint``): a RepAn + KD
#: cycle (Expand with the model's own branch kinds at γ = 0, Restore, Calibrate, train, Rep) against the
#: same epochs of plain KD from the same weights. The pair turned out to be one procedure twice: deploy
#: weights loaded into the train form are unfolded into the model's own branch kinds at γ = 0 and
#: calibrated (``load_into``, line 1), which is what the RepAn arm's Expand + Restore + Calibrate does; only
#: the new branches' random weights differ. A control without Expand would train the deploy form. MobileOne-S0
#: (w050 layout): the baseline of main reached 91.7 % train top-1 under augmentation and 93.3 % validation
#: after 100 epochs; 20 more epochs at half the peak LR fit in a 2-core session (about 290 s per epoch).
#: That restart cost what the epochs added (validation fell from 93.3 to 87-88 in the first epoch), so a
#: second pair (arm suffix ``_lowlr``) continues at a tenth of it for 7 epochs. Neither moved validation:
#: the baseline fits its training images (under augmentation) worse than its validation images, so the
#: third pair (``_light``) lightens the regulariser instead: crop + flip without random erasing, peak LR
#: 0.01, 18 epochs, KD against the same without KD (``then_baseline``). Both passed the baseline's
#: validation top-1 (93.5 against 93.3), still rising in their last low-LR epochs with train top-1 about
#: validation's, so the fourth pair (``_light2``) continues the better of them by validation
#: (``then_baseline_light``, a run of this plan: ``from_plan``) the same way at half that LR for 8
#: epochs (what fits in a session on a 2-core AMD EPYC host that trains it at about 650 s per epoch).
#: That KD arm (val 93.68, shipped) ended with train top-1 94.1 under crop + flip: the w050 layout
#: fits its own training images barely better than validation's, so the fifth pair continues it with
#: KD for 7 epochs two ways: the same recipe at half the LR again (``_light3``), and flips alone at the
#: same LR (``_flip``: the regulariser lightened once more). Flips alone won (val 93.80 against 93.50;
#: train loss 0.106 against 0.119), so the sixth pair continues ``then_kd_flip`` the same two ways: no
#: augmentation at the same LR (``_flip_none``) and flips at half of it (``_flip2``).
#: Each variant names its ``arms`` (default RepAn + KD and KD) and the recipe ``changes`` it makes to the
#: scale's recipe.
CONTINUE = {"repan_mobileone_s0": [
    {"from": "baseline", "epochs": 20, "lr": "0.05", "suffix": ""},
    {"from": "baseline", "epochs": 7, "lr": "0.005", "suffix": "_lowlr"},
    {"from": "baseline", "epochs": 18, "lr": "0.01", "suffix": "_light", "arms": ("kd", "baseline"),
     "changes": ["--augment", "crop_flip"]},
    {"from": "then_baseline_light", "from_plan": "continue", "epochs": 8, "lr": "0.005", "suffix": "_light2",
     "arms": ("kd", "baseline"), "changes": ["--augment", "crop_flip"]},
    {"from": "then_kd_light2", "from_plan": "continue", "epochs": 7, "lr": "0.0025", "suffix": "_light3",
     "arms": ("kd",), "changes": ["--augment", "crop_flip"]},
    {"from": "then_kd_light2", "from_plan": "continue", "epochs": 7, "lr": "0.005", "suffix": "_flip",
     "arms": ("kd",), "changes": ["--augment", "flip"]},
    {"from": "then_kd_flip", "from_plan": "continue", "epochs": 7, "lr": "0.005", "suffix": "_flip_none",
     "arms": ("kd",), "changes": ["--augment", "none"]},
    {"from": "then_kd_flip", "from_plan": "continue", "epochs": 7, "lr": "0.0025", "suffix": "_flip2",
     "arms": ("kd",), "changes": ["--augment", "flip"]},
]}
CONTINUE_ARMS = ("repan_kd", "kd")
KD = ["--kd-alpha", "0.9", "--kd-T", "10"]


def _options(args: List[str]) -> Dict[str, Optional[str]]:
    """A run's arguments as option → value (``None`` for a flag): two runs with the same options in
    another order are the same run."""
    out: Dict[str, Optional[str]] = {}
    i = 0
    while i < len(args):
        has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        out[args[i]] = args[i + 1] if has_value else None
        i += 1 + has_value
    return out


def _merge(args: List[str], changes: List[str]) -> List[str]:
    """``args`` with the options of ``changes`` set: an option already in ``args`` gets the new value
    in place (flags are kept once), new options are appended."""
    out = list(args)
    for opt, value in _options(changes).items():
        if opt in out:
            if value is not None:
                out[out.index(opt) + 1] = value
        else:
            out += [opt] + ([] if value is None else [value])
    return out


def _model_recipe(model: str, common: List[str], changes: List[str] = ()) -> List[str]:
    """``common`` with the model's own changes (``MODEL_RECIPE``) and ``changes`` set, in fp32 for
    ``FP32_MODELS`` (no ``--amp``)."""
    args = _merge(common, MODEL_RECIPE.get(model, []) + list(changes))
    return [a for a in args if a != "--amp"] if model in FP32_MODELS else args


def variant(scale: str, model: str) -> str:
    """The registered model that ``scale`` trains for ``model``'s rows: ``SCALES[scale]["variants"]``
    (a layout of the same family, e.g. MobileOne-S0 → ``repan_mobileone_s0_w050`` at ``long``), else
    ``model`` itself."""
    return SCALES[scale].get("variants", {}).get(model, model)


def replaced_by(model: str) -> List[str]:
    """The models some scale trains as ``model`` instead (the inverse of :func:`variant`): weights of
    ``model`` from that scale ship in their place."""
    return sorted({src for sc in SCALES.values() for src, v in sc.get("variants", {}).items() if v == model})


def _model_args(model: str, kwargs: Optional[Dict] = None) -> List[str]:
    args = ["--model", model]
    if kwargs:
        args += ["--model-kwargs", json.dumps(kwargs)]
    return args


def _run(name: str, args: List[str], needs: Optional[str] = None, home: Optional[str] = None,
         same_as: Optional[str] = None, init: Optional[str] = None, init_plan: str = "main") -> Dict:
    """One training run; ``home`` = the plan whose folders hold it (the teacher lives in ``main``
    and serves every plan); ``same_as`` = the name of the run of the scale's ``main`` plan that has
    the same arguments: its results are copied, it is not trained twice (:func:`_check_same_as`);
    ``init`` = the run of the scale's ``init_plan`` plan whose deploy weights this one starts from
    (``--init-checkpoint``; restored from the published weights on a fresh machine; the run waits
    until that one has finished)."""
    return {"name": name, "args": args, "needs": needs, "home": home, "same_as": same_as, "init": init,
            "init_plan": init_plan}


def _check_same_as(runs: List[Dict], scale: str) -> List[Dict]:
    """``runs`` after checking that each ``same_as`` run has exactly the arguments of the ``main``
    run it names (a plan edited on one side only would otherwise copy another run's results).

    Raises:
        ValueError: naming the run and the options that differ."""
    main = None
    for run in runs:
        if not run.get("same_as"):
            continue
        main = main if main is not None else {r["name"]: r for r in plan_runs("main", scale)}
        src = main.get(run["same_as"])
        if src is None:
            raise ValueError(f"run {run['name']!r} is declared the same as {scale}/main's {run['same_as']!r}, "
                             "which that plan does not have: fix same_as in plan_runs")
        a, b = _options(run["args"]), _options(src["args"])
        diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
        if diff or run["needs"] != src["needs"]:
            raise ValueError(f"run {run['name']!r} is declared the same as {scale}/main's {run['same_as']!r} but "
                             f"differs in {diff or ['the teacher']}: drop same_as (train it) or make the arguments equal")
    return runs


def plan_runs(plan: str, scale: str = DEFAULT_SCALE) -> List[Dict]:
    """The runs of a plan: teacher first, then seed by seed (a sweep stopped early still has whole
    seeds of every model and arm)."""
    global CYCLES, EPOCHS
    sc = SCALES[scale]
    CYCLES, EPOCHS = sc["cycles"], sc["epochs"]
    subset = sc["train_subset"]
    common = _merge(COMMON + (["--train-subset", str(subset)] if subset else []), sc["extra"])
    repan = REPAN_ARCH if sc.get("repan") == "arch" else REPAN
    tdef = TEACHERS.get(sc.get("teacher", ""), dict(TEACHER, epochs=TEACHER["epoch_factor"] * CYCLES * EPOCHS))
    teacher_name = "teacher"
    teacher = _run(teacher_name, _model_args(tdef["model"], tdef["kwargs"]) + common
                   + ["--method", "baseline", "--cycles", "1", "--epochs", str(tdef["epochs"]), "--seed", "100"],
                   home="main")
    kd_teacher = ["--teacher", tdef["model"], "--teacher-kwargs", json.dumps(tdef["kwargs"])]
    runs: List[Dict] = []
    # ablations: repan_repvgg_a1_w025, seed 0, one RepAn option changed at a time
    base = _model_args(ABLATION_MODEL) + common + ["--seed", "0", "--method", "repan"]
    cyc = ["--cycles", str(CYCLES), "--epochs", str(EPOCHS)]

    def with_(option: str, value: str) -> List[str]:
        args = list(repan)
        args[args.index(option) + 1] = value
        return args

    if plan == "main":
        runs.append(teacher)
        for seed in SEEDS:
            for model in MODELS:
                if model != MODELS[0] and seed not in sc.get("seeds_others", SEEDS):
                    continue
                trained = variant(scale, model)  # the registered layout this scale trains (recipe: model's)
                base = _model_args(trained) + _model_recipe(model, common) + ["--seed", str(seed)]
                one = ["--cycles", "1", "--epochs", str(CYCLES * EPOCHS)]
                runs.append(_run(f"{trained}__baseline__s{seed}", base + one + ["--method", "baseline"]))
                runs.append(_run(f"{trained}__kd__s{seed}", base + one + ["--method", "kd"] + KD + kd_teacher,
                                 needs=teacher_name))
                runs.append(_run(f"{trained}__repan__s{seed}", base + cyc + ["--method", "repan"] + repan))
                runs.append(_run(f"{trained}__repan_kd__s{seed}", base + cyc + ["--method", "repan"] + repan + KD
                                 + kd_teacher, needs=teacher_name))
    elif plan == "ablations" and scale == "long":
        # around the long plan's RepAn arm (seed 0): the expansion of cycles 2..R — the architecture's own
        # branch kinds (reference) vs the generic conv_kxk + conv_1x1 pair — and the paper's 5 × 20 cycles
        # reference = main's RepAn arm, seed 0 (the same arguments): copied from there, not trained twice
        runs.append(_run("reference", base + cyc + repan, same_as=f"{ABLATION_MODEL}__repan__s0"))
        runs.append(_run("generic_pair", base + cyc + with_("--branches", "conv_kxk,conv_1x1")))
        runs.append(_run("cycles5x20", base + repan + ["--cycles", "5", "--epochs", "20"]))
        # the other knob of the drop at a cycle start: the warm restart's peak LR (half in cycles 2..R)
        runs.append(_run("later_lr_half", base + cyc + repan + ["--later-lr", "0.05"]))
        # or the same peak reached by a linear warm-up over each cycle's first epoch (seeds 0 and 1 of main's
        # RepAn arm fell 8.6 and 9.4 validation points in the first epoch of a cycle at the full peak)
        runs.append(_run("cycle_warmup1", base + cyc + repan + ["--warmup-epochs", "1"]))
    elif plan == "ablations":
        runs.append(teacher)
        # the reference run (k = 1, linear λ, no KD) is the k = 1 point, the linear-λ point and the α = 0 point
        runs.append(_run("reference", base + cyc + REPAN))
        for k in range(2, 6):  # Table 5
            runs.append(_run(f"k{k}", base + cyc + REPAN + ["--k", str(k)]))
        for alpha, temp in [("0.5", "4"), ("0.9", "10"), ("1.0", "10")]:  # Table 4's settings (α = 0: reference)
            runs.append(_run(f"kd_a{alpha}_T{temp}", base + cyc + REPAN + kd_teacher
                             + ["--kd-alpha", alpha, "--kd-T", temp], needs=teacher_name))
        for sched in ["constant", "cosine", "step"]:
            runs.append(_run(f"lam_{sched}", base + cyc + with_("--lam-schedule", sched)))
    elif plan == "bf16":
        # the main plan's baseline arm again with bf16 autocast (--amp on CPU): paired to main's fp32 runs
        for seed in SEEDS:
            for model in MODELS[:2]:
                base = _model_args(model) + _merge(common, MODEL_RECIPE.get(model, [])) + ["--seed", str(seed)]
                runs.append(_run(f"{model}__baseline_bf16__s{seed}", base + ["--cycles", "1", "--epochs",
                                                                             str(CYCLES * EPOCHS), "--method",
                                                                             "baseline", "--amp"]))
    elif plan == "expansion":
        # the main plan's RepAn arm (seed 0) expanding each block's own branch kinds with zero-initialised γ,
        # against main's generic conv_kxk + conv_1x1 pair at γ = 1: the accuracy after each cycle start
        for model in MODELS:
            base = _model_args(model) + _merge(common, MODEL_RECIPE.get(model, [])) + ["--seed", "0"]
            runs.append(_run(f"{model}__repan_arch__s0", base + cyc + ["--method", "repan"] + REPAN_ARCH))
        # the same with half the peak LR in cycle 2 (the warm restart is the other cause of a drop)
        runs.append(_run(f"{MODELS[0]}__repan_arch_halflr__s0", _model_args(MODELS[0]) + common + ["--seed", "0"]
                         + cyc + ["--method", "repan"] + REPAN_ARCH + ["--later-lr", "0.1"]))
    elif plan == "layouts":
        probe = _model_recipe(LAYOUT_MODEL, common, ["--train-subset", str(LAYOUT_SUBSET)])
        for name, kwargs in LAYOUTS.items():
            runs.append(_run(f"{LAYOUT_MODEL}__{name}__s0", _model_args(LAYOUT_MODEL, kwargs) + probe + [
                "--seed", "0", "--method", "baseline", "--cycles", "1", "--epochs", str(LAYOUT_EPOCHS)]))
    elif plan == "ship":
        runs.append(teacher)
        runs += ship_runs(scale, plan_runs("main", scale))
    elif plan == "continue" and scale == "long":
        runs.append(teacher)
        arms = {"repan_kd": (["--method", "repan"] + _merge(repan, ["--first-cycle", "expand"]) + KD + kd_teacher,
                             teacher_name),
                "kd": (["--method", "kd"] + KD + kd_teacher, teacher_name),
                "baseline": (["--method", "baseline"], None)}
        for model, variants in CONTINUE.items():
            trained = variant(scale, model)
            for c in variants:
                changes = ["--lr", c["lr"]] + list(c.get("changes", []))
                base = _model_args(trained) + _model_recipe(model, common, changes) + ["--seed", "0"]
                one = ["--cycles", "1", "--epochs", str(c["epochs"])]
                start = f"{trained}__{c['from']}__s0"
                for arm in c.get("arms", CONTINUE_ARMS):
                    args, needs = arms[arm]
                    runs.append(_run(f"{trained}__then_{arm}{c['suffix']}__s0", base + one + args,
                                     needs=needs, init=start, init_plan=c.get("from_plan", "main")))
    elif plan == "ablations_extra":
        for restore in ["normalized", "identity"]:
            runs.append(_run(f"restore_{restore}", base + cyc + with_("--restore", restore)))
        runs.append(_run("branch_gamma0", base + cyc + REPAN + ["--branch-gamma", "0", "--lam-schedule", "constant"]))
        for cycles, epochs in [(4, CYCLES * EPOCHS // 4), (CYCLES * EPOCHS // 2, 2)]:
            runs.append(_run(f"cycles{cycles}x{epochs}", base + REPAN + ["--cycles", str(cycles), "--epochs", str(epochs)]))
        runs.append(_run("first_cycle_expand", base + cyc + with_("--first-cycle", "expand")))
    else:
        raise SystemExit(f"unknown plan {plan!r}: choose one of {', '.join(PLANS)}")
    return _check_same_as(runs, scale)


def best_arms(scale: str) -> Dict[str, Dict]:
    """Per model, the arm of ``<scale>/main`` with the best mean *validation* top-1 over its finished
    seeds (``{"arm", "val_mean", "seeds"}``); models without results are absent."""
    vals: Dict[tuple, List[float]] = {}
    for path in sorted((RESULTS / scale / "main").glob("*__*__s*/final.json")):
        model, arm, _seed = path.parent.name.split("__")
        vals.setdefault((model, arm), []).append(json.loads(path.read_text())["val_top1"])
    best: Dict[str, Dict] = {}
    for (model, arm), v in sorted(vals.items()):
        mean = sum(v) / len(v)
        if model not in best or mean > best[model]["val_mean"]:
            best[model] = {"arm": arm, "val_mean": mean, "seeds": len(v)}
    return best


def ship_runs(scale: str, main_runs: List[Dict]) -> List[Dict]:
    """The ship plan: for each model of main (in the layout main trains, :func:`variant`), its best arm
    (:func:`best_arms`) at seed 0 with ``SHIP_BUDGET_FACTOR`` × the epochs per cycle, named
    ``<model>__<arm>__ship``."""
    out = []
    for model, choice in best_arms(scale).items():
        src = next((r for r in main_runs if r["name"] == f"{model}__{choice['arm']}__s0"), None)
        if src is None:  # results of a model or layout the plan no longer trains
            continue
        args = list(src["args"])
        i = args.index("--epochs") + 1
        args[i] = str(int(args[i]) * SHIP_BUDGET_FACTOR)
        out.append(_run(f"{model}__{choice['arm']}__ship", args, needs=src["needs"]))
    return out


def _result_dir(plan: str, name: str) -> Path:
    return RESULTS / plan / name  # plan = "<scale>/<plan>"


def _home_plan(plan: str, run: Dict) -> str:
    """The ``<scale>/<plan>`` whose folders hold ``run`` (a teacher lives in its scale's ``main``)."""
    return f"{plan.split('/')[0]}/{run['home']}" if run["home"] else plan


def _arg(args: List[str], option: str, default: Optional[str] = None) -> Optional[str]:
    """The value given to ``option`` in a run's arguments (``default`` when absent)."""
    return args[args.index(option) + 1] if option in args else default


def _median(values: List[float]) -> float:
    return sorted(values)[len(values) // 2]


def _copy_same_as(plan: str, run: Dict) -> str:
    """A ``same_as`` run: the committed results of the ``main`` run it names are copied into this
    plan's folder (with ``same_as.txt`` saying so); nothing is trained. Before that run has finished,
    this one waits (the main plan trains it)."""
    src = _result_dir(f"{plan.split('/')[0]}/main", run["same_as"])
    dest = _result_dir(plan, run["name"])
    if not (src / "final.json").exists():
        return f"waiting {run['name']}: it is {plan.split('/')[0]}/main's {run['same_as']}, not finished yet"
    if (dest / "final.json").exists():
        return f"skip {run['name']} (done)"
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():  # the finished run's committed small files, as they are
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    (dest / "same_as.txt").write_text(f"copied from {plan.split('/')[0]}/main/{run['same_as']}: the same "
                                      "arguments (benchmarks/accuracy/sweep.py, same_as)\n")
    return f"done {run['name']} (copied from main's {run['same_as']})"


def _execute(plan: str, run: Dict, work: Path, device: str, threads: int, extra: List[str], dry: bool,
             deadline: Optional[float] = None) -> str:
    if run.get("same_as"):
        return f"{run['name']}: copied from main's {run['same_as']}" if dry else _copy_same_as(plan, run)
    plan = _home_plan(plan, run)
    out = work / plan / run["name"]
    done = _result_dir(plan, run["name"]) / "final.json"
    if done.exists() and run["home"] and not (out / "deploy.safetensors").exists() and not dry:
        restored = restore_published(done, out / "deploy.safetensors")
        if restored:
            print(f"{run['name']}: weights restored from the published {restored} (same sha256)", flush=True)
    if done.exists() and (not run["home"] or (out / "deploy.safetensors").exists()):
        return f"skip {run['name']} (done)"  # a teacher is done only while its weights are there
    args = list(run["args"])
    if device.split(":")[0] == "cpu" and "--amp" in args and not cpu_bf16_native():
        # bf16 autocast is emulated on this CPU (about 10x slower than fp32): fp32 here; every epoch
        # records its precision, and a run resumed on a CPU with bf16 kernels takes --amp back
        args.append("--no-amp")
    if run["needs"]:
        teacher_ckpt = work / f"{plan.split('/')[0]}/main" / run["needs"] / "deploy.safetensors"
        args += ["--teacher-checkpoint", str(teacher_ckpt)]
    if run.get("init"):
        start = f"{plan.split('/')[0]}/{run.get('init_plan', 'main')}"
        init_ckpt = work / start / run["init"] / "deploy.safetensors"
        final = _result_dir(start, run["init"]) / "final.json"
        if not dry and not final.exists():
            return f"waiting {run['name']}: it starts from {start}'s {run['init']}, not finished yet"
        if not init_ckpt.is_file() and not dry and not restore_published(final, init_ckpt):
            return (f"waiting {run['name']}: it starts from {start}'s {run['init']}, whose "
                    "weights are neither in the runs root nor published")
        args += ["--init-checkpoint", str(init_ckpt)]
    cmd = [sys.executable, "-m", "repan_zoo.train_cli", *args, "--out", str(out), "--device", device,
           "--threads", str(threads), *extra]
    if (out / "checkpoints").exists():  # a stopped run continues from its last completed epoch
        cmd.append("--resume")
        cmd += _data_dir_here(out / "recipe.json", extra)
    if dry:
        return " ".join(cmd)
    if deadline is not None and time.time() >= deadline:
        return f"not started {run['name']} (deadline)"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out / "log.txt", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:  # the run keeps its last completed epoch: --resume continues it
            proc.terminate()
            proc.wait()
            return f"stopped {run['name']} at the deadline (resumable)"
    if proc.returncode != 0:
        return f"FAIL {run['name']} (rc {proc.returncode}, see {out / 'log.txt'})"
    copy_results(out, _result_dir(plan, run["name"]), ["python", *cmd[1:]], _roots(work))
    return f"done {run['name']} in {time.time() - start:.0f}s"


def _data_dir_here(recipe_json: Path, extra: List[str]) -> List[str]:
    """``--data-dir`` of this machine's Fashion-MNIST for a run whose saved data folder is not here
    (a run continued from a GPU call saved that machine's, e.g. ``.fmnist`` beside its checkout;
    relative folders are the checkout's); nothing when the folder is here or ``extra`` names one."""
    if "--data-dir" in extra or not recipe_json.is_file():
        return []
    try:
        saved = json.loads(recipe_json.read_text())
    except json.JSONDecodeError:
        return []  # repan-train names the broken recipe itself
    data_dir = saved.get("data_dir") if isinstance(saved, dict) else None
    if not data_dir or (ROOT / data_dir).is_dir() or saved.get("dataset", "fashion_mnist") != "fashion_mnist":
        return []
    return ["--data-dir", str(FASHION_MNIST_DIR)]


def copy_results(out: Path, dest: Path, command: List[str], roots: Dict[str, str]) -> None:
    """A finished run's small files into its results folder, machine paths made portable:
    ``final.json`` last, since it marks the run done (a copy stopped before it is redone)."""
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "metrics.json", portable(json.loads((out / "metrics.json").read_text()), roots))
    for name in ("metrics.csv", "learning_curve.png"):
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    (dest / "command.txt").write_text(portable(" ".join(command), roots) + "\n")
    write_json(dest / "final.json", portable(json.loads((out / "final.json").read_text()), roots))


def restore_published(final_json: Path, dest: Path) -> Optional[str]:
    """Put the published weights of a finished run back into its run folder (a fresh machine's runs
    root is empty, and a teacher is needed as a file by the runs it teaches): the manifest entry whose
    sha256 is the run's ``final.json`` ``checkpoint.sha256``, fetched and verified as ``pretrained=True``
    does (bundled, Hub cache or download), then copied atomically to ``dest``.

    Returns:
        ``'model.tag'`` of the restored weights; ``None`` when no manifest entry has that sha256 (the
        run then trains again).

    Raises:
        RuntimeError: the copy's sha256 differs from the recorded one (a corrupt source).
    """
    from repan_zoo import manifest
    from repan_zoo.fileio import atomic_write, sha256_file
    from repan_zoo.hub import fetch_weights

    sha = (json.loads(final_json.read_text()).get("checkpoint") or {}).get("sha256")
    name = manifest.name_for_sha256(sha)
    if name is None:
        return None
    atomic_write(dest, lambda tmp: shutil.copyfile(fetch_weights(name), tmp))
    if sha256_file(dest) != sha:
        dest.unlink()
        raise RuntimeError(f"{dest}: restored from {name} but its sha256 is not {sha} from {final_json}; "
                           "delete the Hub cache entry of that file and run again")
    return name


def _roots(work: Path) -> Dict[str, str]:
    """This machine's absolute paths in a run's files → portable names (no machine path is committed)."""
    return {str(work): "$REPAN_RUNS", str(ROOT) + "/": "", str(ROOT): ".", sys.executable: "python"}


def _order(run: Dict) -> tuple:
    """Teachers first, then seed by seed, and within a seed the runs that need no teacher first
    (they keep the other workers busy while the teacher trains)."""
    if run["home"]:
        return (-1, 0)
    tail = run["name"].rsplit("__s", 1)[-1]
    seed = int(tail) if "__s" in run["name"] and tail.isdigit() else 0
    return (seed, bool(run["needs"]))


def queue(plan: str, runs: List[Dict], work: Path) -> List[Dict]:
    """The order a sweep starts ``runs`` in: teachers, then the runs a stopped sweep left part-trained
    (checkpoints in their run folder: they finish, and their results get committed, before any new run
    takes a worker), then :func:`_order`."""
    def started(run: Dict) -> bool:
        return (work / _home_plan(plan, run) / run["name"] / "checkpoints").is_dir()

    return sorted(runs, key=lambda r: (not r["home"], not started(r), _order(r)))


def _epochs_of(args: List[str]) -> int:
    return int(_arg(args, "--cycles")) * int(_arg(args, "--epochs"))


def _timing_key(args: List[str]) -> tuple:
    """What sets a run's epoch time: model and layout, method, a teacher, the training-set size."""
    return (_arg(args, "--model"), _arg(args, "--model-kwargs"), _arg(args, "--method", "repan"), "--teacher" in args,
            _arg(args, "--train-subset"))


def _history(metrics: Path) -> List[Dict]:
    """A run's per-epoch records (its ``metrics.json``; empty before the first epoch)."""
    return json.loads(metrics.read_text()) if metrics.is_file() else []


def _run_history(work: Path, home: str, name: str) -> List[Dict]:
    """A run's per-epoch records: its run folder's, else, once finished, its committed ones (a fresh
    machine's runs root lacks the folders of runs finished elsewhere)."""
    history = _history(work / home / name / "metrics.json")
    if not history and (_result_dir(home, name) / "final.json").exists():
        history = _history(_result_dir(home, name) / "metrics.json")
    return history


def _epoch_rows(history: List[Dict], device: Optional[str] = None, gpu_epochs: int = 0) -> List[tuple]:
    """A run's ``(epoch time, processor)`` pairs (processor None where not recorded). With ``device``
    (a device type): its epochs on that device when it has any, else its epochs on no known device
    (rows from before the device was recorded), never those known to be elsewhere: a run started on a
    GPU and resumed here is timed by its epochs here, and ``gpu_epochs`` first rows without a device
    count as GPU epochs (:func:`aggregate.row_devices`)."""
    rows = [(r["epoch_time_s"], r.get("processor"), d)
            for r, d in zip(history, row_devices(history, gpu_epochs=gpu_epochs)) if r.get("epoch_time_s")]
    if device is not None:
        rows = [r for r in rows if r[2] == device] or [r for r in rows if r[2] == "unrecorded"]
    return [(t, p) for t, p, _ in rows]


def _epoch_times(history: List[Dict], device: Optional[str] = None, gpu_epochs: int = 0) -> List[float]:
    """A run's epoch times (:func:`_epoch_rows`)."""
    return [t for t, _ in _epoch_rows(history, device, gpu_epochs)]


def speed_factor(pairs: List[tuple]) -> Optional[float]:
    """How much slower this machine trains than the ones the committed results were timed on: the
    median over ``(seconds per epoch here, seconds per epoch elsewhere)`` pairs, each for one kind of
    run (:func:`_timing_key`), of their ratio; None without a pair. Two CPUs of one model name can
    differ by 2× (a 2-core AMD EPYC host: 650 s per MobileOne epoch, an Intel Xeon 290 s), so times
    measured elsewhere are only a guess until one kind of run has epochs both here and there."""
    ratios = sorted(here / there for here, there in pairs if there)
    return ratios[len(ratios) // 2] if ratios else None


def status(plan: str, runs: List[Dict], work: Path, jobs: int = 1, device: str = "cpu",
           processor: Optional[str] = None) -> Dict:
    """What is done, what remains and the estimated time left: epochs left of each run times the
    median epoch time of that run on ``device`` where its epochs record one (:func:`_epoch_times`;
    or, before its first epoch, of the finished or running runs with the same model, layout,
    method, teacher and training-set size in this plan's folders, then in ``<scale>/main``'s;
    failing those, of any method with the same model, layout, teacher and size: an estimate,
    marked ``approx``), run on ``jobs`` workers as the sweep runs them (:func:`_makespan`). Epochs record the ``processor`` they
    ran on (default here: :func:`repan_zoo.runtime.device_name` of ``device``): times of this
    processor come first (a row's ``timed``: ``"here"``), and times measured on others
    (``"elsewhere"``) are scaled by :func:`speed_factor` once a kind of run has epochs both here and
    elsewhere (``speed_factor``; None: unscaled)."""
    rows, lengths, unknown = [], [], 0
    kind = device.split(":")[0]  # the device type epochs record ("cuda:1" → "cuda")
    here = processor or device_name(device)
    on_gpu: Dict[str, Dict[str, int]] = {}  # per plan folder: each run's epochs in the GPU calls

    def times_of(home: str, name: str, history: List[Dict]) -> tuple:  # (times here, times elsewhere)
        if home not in on_gpu:
            on_gpu[home] = gpu_call_epochs(RESULTS / home)
        pairs = _epoch_rows(history, kind, on_gpu[home].get(name, 0))
        return [t for t, p in pairs if p == here], [t for t, p in pairs if p != here]

    local: Dict[tuple, List[float]] = {}  # per kind of run, the median epoch time of each run here
    other: Dict[tuple, List[float]] = {}  # ... and elsewhere

    def record(key: tuple, times: tuple, into: tuple) -> None:  # (times here, elsewhere) → (local, other)
        for values, table in zip(times, into):
            if values:
                table.setdefault(key, []).append(_median(values))

    state = []
    for run in runs:
        total = _epochs_of(run["args"])
        home = _home_plan(plan, run)
        done = (_result_dir(home, run["name"]) / "final.json").exists()
        history = _run_history(work, home, run["name"])
        mine, theirs = times_of(home, run["name"], history)
        key = _timing_key(run["args"])
        record(key, (mine, theirs), (local, other))
        state.append((run, total, done, len(history), mine, theirs, key))
    scale, name = plan.split("/")
    main_local: Dict[tuple, List[float]] = {}
    main_other: Dict[tuple, List[float]] = {}
    if name != "main":
        for run in plan_runs("main", scale):
            home = _home_plan(f"{scale}/main", run)
            record(_timing_key(run["args"]), times_of(home, run["name"], _run_history(work, home, run["name"])),
                   (main_local, main_other))

    def merged(*sources: Dict[tuple, List[float]], by=lambda key: key) -> Dict[tuple, List[float]]:
        out: Dict[tuple, List[float]] = {}
        for source in sources:
            for key, values in source.items():
                out.setdefault(by(key), []).extend(values)
        return out

    all_local, all_other = merged(main_local, local), merged(main_other, other)
    factor = speed_factor([(_median(all_local[k]), _median(all_other[k])) for k in all_local if k in all_other])

    def coarse(key: tuple) -> tuple:  # the method left out: model, layout and teacher set most of the cost
        return key[:2] + key[3:]

    def estimate(times_here: Optional[List[float]], times_there: Optional[List[float]]) -> tuple:
        """(seconds per epoch, where they were measured: "here", "elsewhere" (scaled by the speed
        factor where there is one) or None)."""
        if times_here:
            return _median(times_here), "here"
        if times_there:
            return _median(times_there) * (factor or 1.0), "elsewhere"
        return None, None

    local_coarse, other_coarse = merged(all_local, by=coarse), merged(all_other, by=coarse)
    for run, total, done, trained, mine, theirs, key in state:
        if run.get("same_as"):  # trained (and timed) by the main plan, copied from there when it finishes
            done = done or (_result_dir(f"{scale}/main", run["same_as"]) / "final.json").exists()
            rows.append({"run": run["name"], "state": "done" if done else "in main", "epochs": f"{total}/{total}"
                         if done else f"0/{total}", "epoch_s": None, "approx": False, "same_as": run["same_as"],
                         "timed": None})
            continue
        left = 0 if done else total - trained
        per, timed = estimate(mine, theirs)
        approx = False
        if per is None:  # before its first epoch: runs of the same kind, then of any method
            per, timed = estimate(local.get(key) or main_local.get(key), other.get(key) or main_other.get(key))
        if per is None:
            per, timed = estimate(local_coarse.get(coarse(key)), other_coarse.get(coarse(key)))
            approx = per is not None
        if left and per is None:
            unknown += 1
        lengths.append((run["name"], left * (per or 0.0), run.get("needs")))
        rows.append({"run": run["name"], "state": "done" if done else ("partial" if trained else "pending"),
                     "epochs": f"{total - left}/{total}", "epoch_s": per, "approx": approx, "timed": timed})
    return {"rows": rows, "done": sum(r["state"] == "done" for r in rows), "total": len(rows),
            "hours_left": _makespan(lengths, jobs) / 3600, "unknown_eta": unknown, "processor": here,
            "speed_factor": factor}


def _makespan(runs: List[Tuple[str, float, Optional[str]]], jobs: int) -> float:
    """Seconds until ``runs`` (``(name, seconds left, the run it needs or None)``, in the sweep's
    order) are done on ``jobs`` workers as the sweep runs them: each takes the first worker free,
    and a run that needs a teacher holds its worker until the teacher is done (one long run is not
    shortened by more jobs)."""
    free = [0.0] * max(1, jobs)
    done: Dict[str, float] = {}
    for name, length, needs in runs:
        start = max(free[0], done.get(needs, 0.0)) if length > 0 else 0.0
        done[name] = start + length
        if length > 0:
            heapq.heapreplace(free, done[name])
    return max(free)


def _print_status(plan: str, st: Dict, jobs: int) -> None:
    for r in st["rows"]:
        if r.get("same_as"):
            print(f"  {r['state']:8s} {r['epochs']:>8s}  {r['run']}  (= main's {r['same_as']}: copied, not trained "
                  "twice)", flush=True)
            continue
        per = (f"{'~' if r.get('approx') else ''}{r['epoch_s']:.0f} s/epoch"
               + (", from other methods of the same model" if r.get("approx") else "")
               + (", measured on another machine" if r.get("timed") == "elsewhere" and r["state"] != "done" else "")) \
            if r["epoch_s"] else "no timing yet"
        print(f"  {r['state']:8s} {r['epochs']:>8s}  {r['run']}  ({per})", flush=True)
    extra = f" + {st['unknown_eta']} run(s) not yet timed" if st["unknown_eta"] else ""
    speed = ""
    if any(r.get("timed") == "elsewhere" for r in st["rows"] if r["state"] != "done"):
        speed = (f"; epochs here ({st['processor']}) take {st['speed_factor']:.2f}x the time of those measured "
                 "on other machines, and their times are scaled by that" if st["speed_factor"] else
                 f"; times measured on other machines are used as they are until a run of the same model, layout, "
                 f"method, teacher and training-set size has epochs both here ({st['processor']}) and there")
    print(f"plan {plan}: {st['done']}/{st['total']} runs done; about {st['hours_left']:.1f} h left with "
          f"{jobs} job(s){extra}{speed}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="main", choices=PLANS)
    p.add_argument("--scale", default=DEFAULT_SCALE, choices=sorted(SCALES))
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time (share one GPU, or CPU cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--work", default=str(RUNS_ROOT), help="run folders (checkpoints; outside the work tree, not committed)")
    p.add_argument("--only", default=None,
                   help="run-name filter: comma-separated substrings, a run matching any of them is kept")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds from now: start no run after it and stop running ones there (they resume later)")
    p.add_argument("--kd-runs", choices=("all", "skip", "only"), default="all",
                   help="skip: the runs that need no teacher (and the teacher); only: the distillation runs")
    p.add_argument("--status", action="store_true", help="print what is done, what remains and the time left, then exit")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more train_cli arguments for every run")
    a = p.parse_args(argv)
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    wanted = [w for w in (a.only or "").split(",") if w]
    if a.only is not None and not wanted:  # a launcher's empty list must not mean the whole plan
        p.error(f"--only names no run ({a.only!r}); give run names or substrings, or drop --only for every run")
    names = [r["name"] for r in plan_runs(a.plan, a.scale)]
    unmatched = [w for w in wanted if not any(w in name for name in names)]
    if unmatched:  # a typo in a long job's filter must not 'succeed' by running nothing
        p.error(f"--only {','.join(unmatched)} matches no run of {a.scale}/{a.plan}; its runs: {', '.join(names)}")
    runs = [r for r in plan_runs(a.plan, a.scale) if not wanted or any(w in r["name"] for w in wanted)]
    if a.kd_runs != "all":
        runs = [r for r in runs if bool(r["needs"]) == (a.kd_runs == "only")]
    needed = {r["needs"] for r in runs if r["needs"]}
    runs = [r for r in plan_runs(a.plan, a.scale) if r["name"] in needed] + [r for r in runs if r["name"] not in needed]
    if a.kd_runs == "skip" and a.plan == "main":
        runs = [r for r in plan_runs(a.plan, a.scale) if r["name"] == "teacher"] + [r for r in runs
                                                                                    if r["name"] != "teacher"]
    plan = f"{a.scale}/{a.plan}"
    work = Path(a.work)
    runs = queue(plan, runs, work)
    _print_status(plan, status(plan, runs, work, a.jobs, a.device), a.jobs)
    if a.status:
        return 0
    start = time.time()
    deadline = None if a.deadline is None else start + a.deadline
    futures: Dict[str, Future] = {}

    def go(r: Dict) -> str:  # a KD run waits for its teacher (submitted before it)
        if r["needs"] and r["needs"] in futures:
            futures[r["needs"]].result()
        return _execute(plan, r, work, a.device, a.threads, extra, a.dry_run, deadline)

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for r in runs:
            futures[r["name"]] = pool.submit(go, r)
        for name, fut in futures.items():
            print(fut.result(), flush=True)
            if not a.dry_run:
                st = status(plan, runs, work, a.jobs, a.device)
                print(f"  {st['done']}/{st['total']} done, about {st['hours_left']:.1f} h left", flush=True)
    if not a.dry_run:
        print(f"plan {plan}: {len(runs)} runs, wall {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

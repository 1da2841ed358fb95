"""benchmarks/accuracy: the aggregation (paired deltas, ablation tables), the choice of shipped runs
and the sweep plans, on synthetic results (no training)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import pytest

ACC = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"


def load(name):
    spec = importlib.util.spec_from_file_location(f"acc_{name}", ACC / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(plan_dir: Path, name: str, model: str, method: str, seed: int, val: float, test: float,
              sha: str = "0" * 64, init: Optional[str] = None, **recipe):
    d = plan_dir / name
    d.mkdir(parents=True)
    rec = {"seed": seed, "cycles": 2 if method.startswith("repan") else 1, "epochs": 4, "k": 1,
           "lam_schedule": "linear", "teacher": "t" if method.endswith("kd") else None, "kd_alpha": 0.9, "kd_T": 10.0}
    rec.update(recipe)
    final = {"model": model, "method": "repan" if method.startswith("repan") else method, "recipe": rec,
             "val_top1": val, "test_top1": test, "epochs_trained": 8, "train_time_s": 60.0, "device": "cpu",
             "checkpoint": {"sha256": sha}}
    if init:
        final["init"] = {"checkpoint_sha256": init}
    (d / "final.json").write_text(json.dumps(final))
    (d / "metrics.json").write_text(json.dumps([{"global_epoch": 1, "epoch": 1, "val_top1": val, "expand": False}]))


def test_main_table_pairs_seeds_with_their_baseline(tmp_path):
    agg = load("aggregate")
    plan = tmp_path / "cpu" / "main"
    for seed, (b, r) in enumerate([(80.0, 81.0), (82.0, 82.5)]):
        write_run(plan, f"m__baseline__s{seed}", "m", "baseline", seed, b, b)
        write_run(plan, f"m__repan__s{seed}", "m", "repan", seed, r, r)
    s = agg.summarize(plan)
    repan = next(g for g in s["groups"] if g["method"] == "repan")
    assert repan["delta_test_vs_baseline"]["mean"] == pytest.approx(0.75)
    assert repan["delta_test_vs_baseline"]["std"] == pytest.approx(0.3535534, rel=1e-6)
    md = agg.markdown(s)
    assert "| m | repan | 2x4 | 8 | 2 | 81.75 ± 1.06 | 81.75 ± 1.06 | +0.75 ± 0.35 |" in md
    assert s["total_train_time_s"] == 240.0
    # one seed: no spread to show (was "± 0.00", read as none); a Δ over fewer seeds than the row names its n
    write_run(plan, "m__kd__s0", "m", "kd", 0, 80.5, 80.5)
    write_run(plan, "m__kd__s2", "m", "kd", 2, 81.0, 81.0)
    write_run(plan, "n__baseline__s0", "n", "baseline", 0, 70.0, 70.0)
    write_run(plan, "n__repan__s0", "n", "repan", 0, 71.0, 71.0)
    md = agg.markdown(agg.summarize(plan))
    assert "| m | kd | 1x4 | 8 | 2 | 80.75 ± 0.35 | 80.75 ± 0.35 | +0.50 (n = 1) |" in md
    assert "| n | repan | 2x4 | 8 | 1 | 71.00 | 71.00 | +1.00 |" in md and "± 0.00" not in md


def test_ablation_tables_put_the_reference_in_each_factor(tmp_path):
    agg = load("aggregate")
    plan = tmp_path / "cpu" / "ablations"
    write_run(plan, "reference", "m", "repan", 0, 85.0, 84.0)
    write_run(plan, "k3", "m", "repan", 0, 86.0, 85.0, k=3)
    write_run(plan, "kd_a0.5_T4", "m", "repan_kd", 0, 87.0, 86.0, kd_alpha=0.5, kd_T=4.0)
    write_run(plan, "lam_cosine", "m", "repan", 0, 84.5, 83.5, lam_schedule="cosine")
    md = agg.markdown(agg.summarize(plan))
    assert md.count("| reference |") == 3  # k = 1, α = 0 and linear-λ rows
    assert "| k = 3 | k3 | 86.00 | 85.00 |" in md and "| α = 0.5, T = 4 | kd_a0.5_T4 |" in md
    assert "| α = 0 (no KD) | reference |" in md and "| cosine | lam_cosine |" in md


def test_long_ablation_table_pairs_each_run_with_the_reference_and_shows_its_drop(tmp_path):
    """long/ablations: each run's test top-1 against the reference (main's RepAn seed 0, copied) and the
    collapse at its cycle starts, which is what those ablations change; the copied reference is not
    counted as training time of the plan (was: no Δ or drop column, the copy counted twice)."""
    agg = load("aggregate")
    plan = tmp_path / "long" / "ablations"
    write_run(plan, "reference", "m", "repan", 0, 92.98, 92.86)
    (plan / "reference" / "same_as.txt").write_text("copied from long/main/m__repan__s0: the same arguments\n")
    write_run(plan, "generic_pair", "m", "repan", 0, 93.10, 92.50)
    for run, falls in [("reference", (8.6, 7.9)), ("generic_pair", (3.0, 1.5))]:
        rows, val = [], 90.0
        for cycle, fall in enumerate((0.0,) + falls, start=1):
            rows.append({"global_epoch": len(rows) + 1, "cycle": cycle, "epoch": 1, "expand": cycle > 1,
                         "val_top1": val - fall})
            rows.append({"global_epoch": len(rows) + 1, "cycle": cycle, "epoch": 2, "expand": False, "val_top1": val})
        (plan / run / "metrics.json").write_text(json.dumps(rows))
    s = agg.summarize(plan)
    assert s["total_train_time_s"] == 60.0 and s["copied_runs"] == ["reference"]
    md = agg.markdown(s)
    assert "| reference | 2x4 | 92.98 | 92.86 | — | 8.60 / 7.90 |" in md
    assert "| generic_pair | 2x4 | 93.10 | 92.50 | -0.36 | 3.00 / 1.50 |" in md
    assert "1.0 min" in md and "copied" in md


def test_ship_picks_the_best_validation_repan_run(tmp_path, monkeypatch):
    ship = load("ship")
    plan = tmp_path / "cpu" / "main"
    write_run(plan, "m__baseline__s0", "m", "baseline", 0, 99.0, 99.0)  # not RepAn: never shipped
    write_run(plan, "m__repan__s0", "m", "repan", 0, 85.0, 90.0)        # best test, not best validation
    write_run(plan, "m__repan_kd__s1", "m", "repan_kd", 1, 86.0, 84.0)
    write_run(plan, "m__repan__s2", "m", "repan", 2, 86.0, 85.0)        # ties on validation: lower seed wins
    monkeypatch.setattr(ship, "RESULTS", tmp_path)
    best = ship.best_runs("cpu/main")
    assert best["m"]["run"] == "m__repan_kd__s1"
    with pytest.raises(SystemExit, match="missing"):
        ship.publish_command(best["m"], tmp_path / "work", "cpu/main")
    assert ship.best_runs("cpu/main", any_arm=True)["m"]["run"] == "m__baseline__s0"
    for name, loss in [("m__repan__s3", 0.30), ("m__repan__s4", 0.25)]:  # a tie on top-1: the lower loss
        write_run(plan, name, "m", "repan", int(name[-1]), 86.0, 80.0)
        final_path = plan / name / "final.json"
        final_path.write_text(json.dumps(dict(json.loads(final_path.read_text()), val_loss=loss)))
    assert ship.best_runs("cpu/main")["m"]["run"] == "m__repan__s4"


def test_ship_replace_supersedes_the_models_other_tags(tmp_path, monkeypatch):
    """``--replace``: the chosen run is published as the default tag (``fmnist_<scale>_<arm>``) and
    every other tag of the model is superseded; the command carries the arm's seed statistics."""
    ship = load("ship")
    plan = tmp_path / "long" / "main"
    write_run(plan, "m__kd__s0", "m", "kd", 0, 94.0, 93.8)
    write_run(plan, "m__kd__s1", "m", "kd", 1, 94.2, 93.6)
    monkeypatch.setattr(ship, "RESULTS", tmp_path)
    run_dir = tmp_path / "work" / "long" / "main" / "m__kd__s1"
    run_dir.mkdir(parents=True)
    (run_dir / "deploy.safetensors").write_bytes(b"weights")
    final = ship.best_runs("long/main", any_arm=True)["m"]
    final["checkpoint"]["sha256"] = ship.sha256_file(run_dir / "deploy.safetensors")

    class Entry:
        def __init__(self, tag):
            self.tag = tag
    monkeypatch.setattr(ship.manifest, "entries_for", lambda model: [Entry("fmnist_repan"), Entry("fmnist_long_kd")])
    cmd = ship.publish_command(final, tmp_path / "work", "long/main", replace=True)
    assert cmd[cmd.index("--tag") + 1] == "fmnist_long_kd"
    assert cmd[cmd.index("--default"):] == ["--default", "--supersede", "fmnist_repan"]
    figures = json.loads((run_dir / "publish_metrics.json").read_text())["metrics"]["fashion_mnist"]
    assert (figures["val_top1"], figures["arm_seeds"]) == (94.2, 2) and figures["arm_test_mean"] == pytest.approx(93.7)
    assert "--default" not in ship.publish_command(final, tmp_path / "work", "long/main")


def test_ship_replace_supersedes_the_layout_a_model_is_shipped_in_place_of(tmp_path, monkeypatch):
    """The long scale trains MobileOne-S0 as ``repan_mobileone_s0_w050`` (sweep.SCALES variants): ``--replace``
    takes the ImageNet-layout entries out too, as ``MODEL.TAG``, whether the weights come from the ship plan
    or straight from main; the arm statistics are those of main's runs of the shipped layout."""
    ship = load("ship")
    shipped = "repan_mobileone_s0_w050"
    write_run(tmp_path / "long" / "ship", f"{shipped}__kd__ship", shipped, "kd", 0, 93.9, 93.7)
    write_run(tmp_path / "long" / "main", f"{shipped}__kd__s0", shipped, "kd", 0, 92.0, 91.8)
    write_run(tmp_path / "long" / "main", "repan_mobileone_s0__kd__s0", "repan_mobileone_s0", "kd", 0, 99.0, 99.0)
    monkeypatch.setattr(ship, "RESULTS", tmp_path)

    class Entry:
        def __init__(self, tag):
            self.tag = tag
    listed = {"repan_mobileone_s0": [Entry("fmnist_repan_kd")], shipped: []}
    monkeypatch.setattr(ship.manifest, "entries_for", lambda model: listed.get(model, []))
    assert ship.replaced_layouts(shipped) == ["repan_mobileone_s0"] and ship.replaced_layouts("x") == []
    for plan, run, val in [("long/ship", f"{shipped}__kd__ship", 93.9), ("long/main", f"{shipped}__kd__s0", 92.0)]:
        run_dir = tmp_path / "work" / plan / run
        run_dir.mkdir(parents=True)
        (run_dir / "deploy.safetensors").write_bytes(b"weights")
        final = ship.best_runs(plan, any_arm=True)[shipped]
        assert final["run"] == run
        final["checkpoint"]["sha256"] = ship.sha256_file(run_dir / "deploy.safetensors")
        cmd = ship.publish_command(final, tmp_path / "work", plan, replace=True)
        assert cmd[cmd.index("--tag") + 1] == "fmnist_long_kd"
        assert cmd[cmd.index("--default"):] == ["--default", "--supersede", "repan_mobileone_s0.fmnist_repan_kd"]
        figures = json.loads((run_dir / "publish_metrics.json").read_text())["metrics"]["fashion_mnist"]
        assert (figures["val_top1"], figures["arm_seeds"], figures["arm_val_mean"]) == (val, 1, 92.0)


def test_ship_reads_the_run_folders_and_results_where_the_sweep_wrote_them(tmp_path, monkeypatch, capsys):
    """A sweep run with ``$REPAN_RUNS`` / ``$REPAN_RESULTS`` set is shipped with the same environment and no
    ``--work``: ship.py takes both places from sweep.py (its own default ignored ``$REPAN_RUNS``)."""
    import sys

    work, results = tmp_path / "work", tmp_path / "results"
    monkeypatch.setenv("REPAN_RUNS", str(work))
    monkeypatch.setenv("REPAN_RESULTS", str(results))
    monkeypatch.delitem(sys.modules, "sweep", raising=False)  # ship imports it: read the environment again
    try:
        ship = load("ship")
    finally:
        sys.modules.pop("sweep", None)  # later tests get the sweep of their own environment
    write_run(results / "long" / "main", "m__kd__s0", "m", "kd", 0, 94.0, 93.9)
    run_dir = work / "long" / "main" / "m__kd__s0"
    run_dir.mkdir(parents=True)
    (run_dir / "deploy.safetensors").write_bytes(b"weights")
    final = json.loads((results / "long" / "main" / "m__kd__s0" / "final.json").read_text())
    final["checkpoint"]["sha256"] = ship.sha256_file(run_dir / "deploy.safetensors")
    (results / "long" / "main" / "m__kd__s0" / "final.json").write_text(json.dumps(final))
    assert ship.main(["--plan", "long/main", "--any-arm"]) == 0
    out = capsys.readouterr().out
    assert "m: m__kd__s0 (val 94.00, test 93.90)" in out and str(run_dir / "deploy.safetensors") in out
    assert (run_dir / "publish_metrics.json").is_file()


def test_refresh_arm_metrics_follows_the_seeds_finished_after_shipping(tmp_path, monkeypatch):
    """An entry shipped while its arm had two finished seeds said ``arm_seeds: 2`` after the third
    finished; ``--refresh-arm-metrics`` recomputes the arm figures of every shipped entry (matched to its
    run by sha256) and keeps the entry's other figures."""
    import dataclasses
    import shutil

    from repan_zoo import manifest

    folder = tmp_path / "manifest"
    folder.mkdir()
    shutil.copy(manifest.manifest_dir() / "repvgg.json", folder / "repvgg.json")
    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(folder))
    manifest.reload_manifest()
    try:
        entry = manifest.entries_for("repan_repvgg_a1_w025")[0]
        ship = load("ship")
        monkeypatch.setattr(ship, "RESULTS", tmp_path / "results")
        plan = tmp_path / "results" / "long" / "main"
        model = entry.model
        for seed, test in [(0, 93.0), (1, 94.0), (2, 95.0)]:
            write_run(plan, f"{model}__kd__s{seed}", model, "kd", seed, test + 0.1, test)
        final_path = plan / f"{model}__kd__s1" / "final.json"
        final = json.loads(final_path.read_text())
        final["checkpoint"]["sha256"] = entry.sha256
        final_path.write_text(json.dumps(final))
        stale = {**entry.metrics["fashion_mnist"], "arm_seeds": 2, "arm_test_mean": 93.5}
        manifest.write_entry(dataclasses.replace(entry, metrics={**entry.metrics, "fashion_mnist": stale}))

        changed = ship.refresh_arm_metrics()
        assert len(changed) == 1 and changed[0].startswith(f"{model}.{entry.tag}: arm test 93.50")
        assert "arm test 94.00 ± 1.00 over 3 seed(s)" in changed[0]
        after = manifest.find_entry(model, entry.tag)
        figures = after.metrics["fashion_mnist"]
        assert (figures["arm_seeds"], figures["arm_test_mean"], figures["arm_test_std"]) == (3, 94.0, 1.0)
        assert figures["test_top1"] == entry.metrics["fashion_mnist"]["test_top1"]  # the run's own figures stay
        assert {k: v for k, v in after.metrics.items() if k != "fashion_mnist"} == \
            {k: v for k, v in entry.metrics.items() if k != "fashion_mnist"}  # INT8 figures stay
        assert ship.refresh_arm_metrics() == []  # up to date: nothing rewritten
    finally:
        manifest.reload_manifest()


def test_sweep_plans_keep_equal_budgets_and_order(monkeypatch):
    sweep = load("sweep")
    runs = sweep.plan_runs("main", "cpu")
    assert len(runs) == 1 + 3 * 4 * 3
    for r in runs:
        args = r["args"]
        cycles, epochs = int(args[args.index("--cycles") + 1]), int(args[args.index("--epochs") + 1])
        if r["name"] != "teacher":
            assert cycles * epochs == 8, r["name"]
    ordered = sorted(runs, key=sweep._order)
    assert ordered[0]["name"] == "teacher"
    seeds = [int(r["name"].rsplit("__s", 1)[1]) for r in ordered[1:]]
    assert seeds == sorted(seeds)  # seed by seed
    mobile = [r for r in runs if r["name"].startswith("repan_mobileone_s0__")]
    assert all(r["args"].count("--lr") == 1 and r["args"][r["args"].index("--lr") + 1] == "0.1" for r in mobile)
    names = [r["name"] for r in sweep.plan_runs("ablations", "cpu")]
    assert {"reference", "k2", "k5", "kd_a0.9_T10", "lam_cosine"} <= set(names)


def test_long_plan_is_the_issue_14_comparison():
    sweep = load("sweep")
    runs = {r["name"]: r for r in sweep.plan_runs("main", "long")}
    teacher = runs.pop("teacher")["args"]
    assert teacher[teacher.index("--epochs") + 1] == "150" and "--train-subset" not in teacher
    a1 = [n for n in runs if n.startswith("repan_repvgg_a1_w025__")]
    assert len(a1) == 4 * 3 and len(runs) == 4 * 3 + 2 * 4  # 3 seeds for RepVGG-A1, 1 for the others
    for name, r in runs.items():
        args = r["args"]
        opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
        assert int(opt["--cycles"]) * int(opt["--epochs"]) == 100, name
        assert opt["--augment"] == "crop_flip_erase" and "--train-subset" not in args
        assert ("--amp" in args) == ("mobileone" not in name), name  # bf16 is slower for MobileOne on CPU
        assert len([a for a in args if a.startswith("--")]) == len(set(a for a in args if a.startswith("--")))
        if "__repan" in name:
            assert (opt["--cycles"], opt["--branches"], opt["--branch-gamma"]) == ("4", "arch", "0"), name
        if "kd" in name:
            assert (opt["--kd-alpha"], opt["--kd-T"], r["needs"]) == ("0.9", "10", "teacher")
    names = {r["name"]: r["args"] for r in sweep.plan_runs("ablations", "long")}
    assert names["cycles5x20"][names["cycles5x20"].index("--cycles") + 1] == "5"
    assert names["generic_pair"][names["generic_pair"].index("--branches") + 1] == "conv_kxk,conv_1x1"
    assert names["cycle_warmup1"][names["cycle_warmup1"].index("--warmup-epochs") + 1] == "1"
    assert names["cycle_warmup1"][:names["cycle_warmup1"].index("--warmup-epochs")] == names["reference"]


def test_ship_plan_trains_each_models_best_arm_by_validation_longer(tmp_path, monkeypatch):
    sweep, ship = load("sweep"), load("ship")
    main = tmp_path / "long" / "main"
    for seed, (b, k) in enumerate([(90.0, 91.0), (90.4, 90.8), (90.2, 91.2)]):
        write_run(main, f"repan_repvgg_a1_w025__baseline__s{seed}", "repan_repvgg_a1_w025", "baseline", seed, b, b)
        write_run(main, f"repan_repvgg_a1_w025__repan_kd__s{seed}", "repan_repvgg_a1_w025", "repan_kd", seed, k, k - 1)
    monkeypatch.setattr(sweep, "RESULTS", tmp_path)
    monkeypatch.setattr(ship, "RESULTS", tmp_path)
    assert sweep.best_arms("long")["repan_repvgg_a1_w025"]["arm"] == "repan_kd"  # validation, not test
    runs = {r["name"]: r for r in sweep.plan_runs("ship", "long")}
    run = runs["repan_repvgg_a1_w025__repan_kd__ship"]
    args = run["args"]
    assert args[args.index("--epochs") + 1] == "50" and args[args.index("--cycles") + 1] == "4"
    assert run["needs"] == "teacher" and "teacher" in runs
    final = json.loads((main / "repan_repvgg_a1_w025__repan_kd__s1" / "final.json").read_text())
    m = ship.with_arm_metrics(final, "long", "repan_kd")["metrics"]["fashion_mnist"]
    assert m["val_top1"] == 90.8 and m["arm_seeds"] == 3
    assert m["arm_test_mean"] == pytest.approx(90.0) and m["arm_test_std"] == pytest.approx(0.2)


def test_long_scale_trains_mobileone_in_its_small_input_layout(tmp_path, monkeypatch):
    """At the long scale MobileOne-S0's rows are the registered half-width small-input variant with
    MobileOne's recipe (fp32, lr 0.1 with warm-up); the ship plan trains its best arm in that layout;
    the cpu scale keeps the ImageNet layout."""
    sweep = load("sweep")
    main = {r["name"]: r["args"] for r in sweep.plan_runs("main", "long")}
    assert not [n for n in main if n.startswith("repan_mobileone_s0__")]
    for arm in ("baseline", "kd", "repan", "repan_kd"):
        args = main[f"repan_mobileone_s0_w050__{arm}__s0"]
        assert args[args.index("--model") + 1] == "repan_mobileone_s0_w050" and args.count("--model") == 1
        assert "--amp" not in args and args[args.index("--lr") + 1] == "0.1" and "--warmup-epochs" in args
    cpu = {r["name"]: r["args"] for r in sweep.plan_runs("main", "cpu")}
    assert "repan_mobileone_s0__kd__s0" in cpu and not [n for n in cpu if "_w050" in n]
    assert sweep.variant("long", "repan_mobileone_s0") == "repan_mobileone_s0_w050"
    assert sweep.variant("cpu", "repan_mobileone_s0") == "repan_mobileone_s0"
    assert sweep.replaced_by("repan_mobileone_s0_w050") == ["repan_mobileone_s0"]

    results = tmp_path / "long" / "main"
    write_run(results, "repan_mobileone_s0_w050__kd__s0", "repan_mobileone_s0_w050", "kd", 0, 91.0, 90.5)
    write_run(results, "repan_mobileone_s0_w050__baseline__s0", "repan_mobileone_s0_w050", "baseline", 0, 90.0, 90.0)
    # results of a layout main no longer trains do not enter the ship plan
    write_run(results, "repan_mobileone_s0__baseline__s0", "repan_mobileone_s0", "baseline", 0, 95.0, 95.0)
    monkeypatch.setattr(sweep, "RESULTS", tmp_path)
    runs = {r["name"]: r for r in sweep.plan_runs("ship", "long")}
    assert set(runs) == {"teacher", "repan_mobileone_s0_w050__kd__ship"}
    args = runs["repan_mobileone_s0_w050__kd__ship"]["args"]
    src = main["repan_mobileone_s0_w050__kd__s0"]
    assert args[args.index("--epochs") + 1] == "200" and runs["repan_mobileone_s0_w050__kd__ship"]["needs"] == "teacher"
    assert [a for a in args if a != "200"] == [a for a in src if a != "100"]


def test_layouts_plan_compares_mobileone_layouts_on_the_same_probe():
    sweep = load("sweep")
    runs = {r["name"]: r["args"] for r in sweep.plan_runs("layouts", "long")}
    assert set(runs) == {"repan_mobileone_s0__default__s0", "repan_mobileone_s0__w050_small__s0"}
    a, b = runs["repan_mobileone_s0__default__s0"], runs["repan_mobileone_s0__w050_small__s0"]
    assert json.loads(b[b.index("--model-kwargs") + 1]) == {"width_mult": 0.5, "small_input": True}
    assert "--model-kwargs" not in a and b[:2] + b[4:] == a  # the same recipe apart from the layout
    assert a[a.index("--train-subset") + 1] == "20000" and a[a.index("--epochs") + 1] == "10"
    # the registered variant the long scale trains is exactly the probe's layout
    import timm
    import repan_zoo  # noqa: F401
    x = timm.create_model("repan_mobileone_s0_w050").state_dict()
    y = timm.create_model("repan_mobileone_s0", width_mult=0.5, small_input=True, in_chans=1, num_classes=10).state_dict()
    assert {k: v.shape for k, v in x.items()} == {k: v.shape for k, v in y.items()}


def test_status_counts_done_and_estimates_time_left(tmp_path, monkeypatch):
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    runs = [r for r in sweep.plan_runs("main", "cpu") if r["name"].startswith("repan_repvgg_a1_w025__baseline")]
    work = tmp_path / "work"
    done, partial = runs[0], runs[1]
    write_run(tmp_path / "results" / "cpu" / "main", done["name"], "repan_repvgg_a1_w025", "baseline", 0, 80.0, 80.0)
    d = work / "cpu" / "main" / partial["name"]
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps([{"epoch_time_s": t} for t in (30.0, 40.0, 35.0)]))
    st = sweep.status("cpu/main", runs, work, jobs=1)
    states = {r["run"]: r["state"] for r in st["rows"]}
    assert states == {done["name"]: "done", partial["name"]: "partial", runs[2]["name"]: "pending"}
    # 5 epochs left of the partial run at its median 35 s, 8 of the pending one at the same model's 35 s
    assert st["hours_left"] == pytest.approx((5 + 8) * 35.0 / 3600)
    # two jobs: the runs side by side, so the longer one decides (was: the sum halved, 227 s < its 280 s)
    assert sweep.status("cpu/main", runs, work, jobs=2)["hours_left"] == pytest.approx(8 * 35.0 / 3600)
    # a KD run holds its worker until its teacher is done (the sweep waits on the teacher there)
    plan = [("teacher", 10.0, None), ("a", 1.0, None), ("a_kd", 1.0, "teacher"), ("b", 1.0, None), ("b_kd", 1.0, "teacher")]
    assert sweep._makespan(plan, 2) == 12.0 and sweep._makespan(plan, 1) == 14.0
    assert sweep._makespan([("teacher", 0.0, None), ("a_kd", 3.0, "teacher")], 4) == 3.0  # a finished teacher
    # a finished run whose run folder is gone (a fresh machine) is timed by its committed history
    committed = tmp_path / "results" / "cpu" / "main" / done["name"] / "metrics.json"
    committed.write_text(json.dumps([{"epoch_time_s": t} for t in (50.0, 60.0, 70.0)]))
    rows = {r["run"]: r["epoch_s"] for r in sweep.status("cpu/main", runs, work)["rows"]}
    assert rows[done["name"]] == 60.0


def test_status_borrows_epoch_times_of_main_runs_of_the_same_kind(tmp_path, monkeypatch):
    """Before its first epoch, an ablation run is timed by main's runs of the same model, method and
    training-set size; a run of another size (the layouts probe) is not."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    work = tmp_path / "work"
    for name, times in [("repan_repvgg_a1_w025__repan__s0", (80.0, 90.0, 85.0)),
                        ("repan_mobileone_s0__baseline__s0", (200.0,))]:
        (work / "long" / "main" / name).mkdir(parents=True)
        (work / "long" / "main" / name / "metrics.json").write_text(json.dumps([{"epoch_time_s": t} for t in times]))
    ablations = sweep.plan_runs("ablations", "long")
    st = sweep.status("long/ablations", ablations, work)
    trained = [r for r in st["rows"] if not r.get("same_as")]  # the reference is main's run (copied)
    assert {r["epoch_s"] for r in trained} == {85.0} and st["unknown_eta"] == 0
    assert st["hours_left"] == pytest.approx(len(trained) * 100 * 85.0 / 3600)
    st = sweep.status("long/layouts", sweep.plan_runs("layouts", "long"), work)
    assert st["unknown_eta"] == 2 and st["hours_left"] == 0
    # no run of the same method yet: another method of the same model and teacher gives an estimate, marked
    rows = {r["run"]: r for r in sweep.status("long/main", sweep.plan_runs("main", "long"), work)["rows"]}
    assert rows["repan_repvgg_a1_w025__repan__s1"]["epoch_s"] == 85.0 and not rows["repan_repvgg_a1_w025__repan__s1"]["approx"]
    assert rows["repan_repvgg_a1_w025__baseline__s0"]["epoch_s"] == 85.0 and rows["repan_repvgg_a1_w025__baseline__s0"]["approx"]
    assert rows["repan_repvgg_a1_w025__kd__s0"]["epoch_s"] is None  # a teacher's forward pass: not the same cost


def test_status_scales_times_measured_on_another_processor_by_this_ones_speed(tmp_path, monkeypatch, capsys):
    """Epochs record their processor. Before an epoch has run here, other machines' times are used as
    they are and the status says so; once one kind of run has epochs both here and elsewhere, the
    ratio scales every time measured elsewhere (the committed results come from many hosts: one
    2-core AMD EPYC took 2.2x an Intel Xeon's time per MobileOne epoch)."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    work = tmp_path / "work"
    runs = [r for r in sweep.plan_runs("main", "cpu") if r["name"].startswith("repan_repvgg_a1_w025__")]
    base, repan = (sorted(r["name"] for r in runs if f"__{arm}__" in r["name"]) for arm in ("baseline", "repan"))

    def history(name, times, processor, root=work):
        d = root / "cpu" / "main" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps([{"epoch_time_s": t, "processor": processor} for t in times]))

    history(base[0], (40.0, 40.0), "Intel Xeon (AVX512)")
    history(repan[0], (50.0,), "Intel Xeon (AVX512)")
    st = sweep.status("cpu/main", runs, work, processor="AMD EPYC (AVX2)")
    rows = {r["run"]: r for r in st["rows"]}
    assert st["speed_factor"] is None and rows[base[1]]["epoch_s"] == 40.0 and rows[base[1]]["timed"] == "elsewhere"
    sweep._print_status("cpu/main", st, 1)
    assert ("used as they are until a run of the same model, layout, method, teacher and training-set size has epochs "
            "both here (AMD EPYC (AVX2)) and there") in capsys.readouterr().out
    history(base[1], (100.0,), "AMD EPYC (AVX2)")  # one epoch here: this machine takes 2.5x the time
    st = sweep.status("cpu/main", runs, work, processor="AMD EPYC (AVX2)")
    rows = {r["run"]: r for r in st["rows"]}
    assert st["speed_factor"] == pytest.approx(2.5)
    assert (rows[base[1]]["epoch_s"], rows[base[1]]["timed"]) == (100.0, "here")  # its own epochs here
    assert rows[base[2]]["epoch_s"] == 100.0  # a run of the same kind timed here
    assert (rows[repan[1]]["epoch_s"], rows[repan[1]]["timed"]) == (pytest.approx(125.0), "elsewhere")
    assert (rows[repan[0]]["epoch_s"], rows[repan[0]]["timed"]) == (pytest.approx(125.0), "elsewhere")
    sweep._print_status("cpu/main", st, 1)
    assert "take 2.50x the time of those measured on other machines" in capsys.readouterr().out
    # on the machine the others were measured on, nothing is scaled the other way round for them
    st = sweep.status("cpu/main", runs, work, processor="Intel Xeon (AVX512)")
    assert st["speed_factor"] == pytest.approx(0.4)
    assert {r["run"]: r["epoch_s"] for r in st["rows"]}[repan[1]] == 50.0


def test_runs_trained_partly_on_a_gpu_say_how_many_epochs_were_there(tmp_path):
    """A run started in a GPU call and resumed here: its epochs per device come from the rows'
    ``device`` where recorded, else from the calls' summaries (committed under <scale>/gpu_calls)."""
    agg = load("aggregate")
    plan = tmp_path / "long" / "main"
    calls = tmp_path / "long" / "gpu_calls"
    calls.mkdir(parents=True)
    (calls / "a.json").write_text(json.dumps({"plan": "long/main", "runs": {"m__baseline__s0": {"epochs_done": 3}}}))
    (calls / "b.json").write_text(json.dumps({"plan": "long/main", "runs": {"m__baseline__s0": {"epochs_done": 6}}}))
    (calls / "other.json").write_text(json.dumps({"plan": "long/ablations", "runs": {"m__baseline__s0": {"epochs_done": 9}}}))
    assert agg.gpu_call_epochs(plan) == {"m__baseline__s0": 6}
    legacy = [{"val_top1": 50.0}] * 10  # rows written before the device was recorded
    assert agg.epoch_devices(legacy, "cpu", gpu_epochs=6) == {"cuda": 6, "cpu": 4}
    recorded = [{"device": "cuda"}] * 2 + [{"device": "cpu"}] * 3
    assert agg.epoch_devices(recorded, "cpu", gpu_epochs=0) == {"cuda": 2, "cpu": 3}
    assert agg.epoch_devices(legacy[:2], "cuda:0") == {"cuda": 2}
    for name, epochs in (("m__baseline__s0", 10), ("m__kd__s0", 10)):
        d = plan / name
        d.mkdir(parents=True)
        (d / "final.json").write_text(json.dumps({"model": "m", "device": "cpu", "test_top1": 90.0, "val_top1": 90.0,
                                                  "recipe": {"seed": 0, "cycles": 1, "epochs": epochs}}))
        (d / "metrics.json").write_text(json.dumps(legacy))
    summary = agg.summarize(plan)
    assert summary["devices"] == ["cpu", "cuda"]
    assert summary["partly_on_gpu"] == {"m__baseline__s0": {"cuda": 6, "cpu": 4}}
    assert "`m__baseline__s0` (6 of 10 epochs on the GPU)" in agg.markdown(summary)


def test_amp_runs_trained_in_fp32_on_a_cpu_without_bf16_kernels_are_named_with_their_epochs(tmp_path):
    """A run whose command asks for --amp, resumed on an AVX2-only CPU (where the sweep adds --no-amp):
    its fp32 epochs there are counted from the rows' recorded ``precision``; runs the recipe trains in
    fp32 anyway (MobileOne: no --amp) and rows from before precision was recorded are not."""
    agg = load("aggregate")
    plan = tmp_path / "long" / "main"
    rows = ([{"device": "cuda"}] * 2 + [{"device": "cpu"}] * 3 + [{"device": "cpu", "precision": "bf16"}] * 2
            + [{"device": "cpu", "precision": "fp32"}] * 4)
    for name, command in (("a__repan_kd__s0", "python -m repan_zoo.train_cli --amp --lr 0.1 --no-amp"),
                          ("mobileone__kd__s0", "python -m repan_zoo.train_cli --lr 0.1")):
        d = plan / name
        d.mkdir(parents=True)
        (d / "final.json").write_text(json.dumps({"model": name.split("__")[0], "device": "cpu", "test_top1": 90.0,
                                                  "val_top1": 90.0, "recipe": {"seed": 0, "cycles": 1, "epochs": 11}}))
        (d / "metrics.json").write_text(json.dumps(rows))
        (d / "command.txt").write_text(command + "\n")
    summary = agg.summarize(plan)
    assert summary["amp_runs_in_fp32"] == {"a__repan_kd__s0": [4, 11]}
    assert "`a__repan_kd__s0` (4 of 11 epochs)" in agg.markdown(summary)
    assert agg.fp32_epochs_of_amp_run(rows, "python x --amp-like") == 0


def test_a_run_resumed_on_another_device_is_timed_by_its_epochs_on_this_one():
    sweep = load("sweep")
    history = [{"epoch_time_s": 10.0}] * 60 + [{"epoch_time_s": 120.0, "device": "cpu"}] * 3  # 60 GPU rows, legacy
    assert sweep._epoch_times(history, "cpu") == [120.0] * 3
    assert sweep._epoch_times(history[:60], "cpu") == [10.0] * 60  # nothing recorded here yet: all epochs
    assert sweep._epoch_times(history, None) == [10.0] * 60 + [120.0] * 3
    # rows written before the device was recorded: the GPU calls' summaries say which ran there
    assert sweep._epoch_times(history[:60], "cpu", gpu_epochs=60) == []
    assert sweep._epoch_times(history[:60], "cuda", gpu_epochs=60) == [10.0] * 60
    assert sweep._epoch_times(history[:60], "cpu", gpu_epochs=50) == [10.0] * 10


def test_status_does_not_time_a_run_here_by_its_epochs_in_a_gpu_call(tmp_path, monkeypatch):
    """A run that trained its first epochs in a GPU call (rows without a device, counted in the
    call's summary) and has not resumed here yet is timed by the same kind of run on this device."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    calls = tmp_path / "results" / "long" / "gpu_calls"
    calls.mkdir(parents=True)
    runs = [r for r in sweep.plan_runs("main", "long") if r["name"].startswith("repan_resnet18_acb_w025__repan")]
    gpu_run, cpu_run = runs  # repan__s0 and repan_kd__s0 share no timing key (a teacher)
    (calls / "c.json").write_text(json.dumps({"plan": "long/main", "runs": {gpu_run["name"]: {"epochs_done": 60}}}))
    work = tmp_path / "work"
    for run, rows in ((gpu_run, [{"epoch_time_s": 11.0}] * 60), (cpu_run, [{"epoch_time_s": 160.0}] * 10)):
        (work / "long" / "main" / run["name"]).mkdir(parents=True)
        (work / "long" / "main" / run["name"] / "metrics.json").write_text(json.dumps(rows))
    st = sweep.status("long/main", runs, work)
    assert [r["epoch_s"] for r in st["rows"]] == [None, 160.0] and st["unknown_eta"] == 1
    assert st["hours_left"] == pytest.approx(90 * 160.0 / 3600)
    assert sweep.status("long/main", runs, work, device="cuda")["rows"][0]["epoch_s"] == 11.0


def test_a_fresh_runs_root_gets_the_published_teacher_back_instead_of_training_it(tmp_path, monkeypatch):
    """A machine whose runs root is empty (a new checkout) must not spend 150 epochs retraining the
    long scale's teacher: its committed final.json names the sha256 of weights the zoo ships."""
    sweep = load("sweep")
    teacher = next(r for r in sweep.plan_runs("main", "long") if r["name"] == "teacher")
    monkeypatch.setattr(sweep.subprocess, "Popen", None)  # anything that would train fails the test
    msg = sweep._execute("long/main", teacher, tmp_path, "cpu", 1, [], dry=False)
    assert msg == "skip teacher (done)"
    restored = tmp_path / "long/main/teacher/deploy.safetensors"
    recorded = json.loads((sweep.RESULTS / "long/main/teacher/final.json").read_text())["checkpoint"]["sha256"]
    from repan_zoo.fileio import sha256_file

    assert sha256_file(restored) == recorded
    # results without published weights: nothing to restore, the run would train again
    final = tmp_path / "final.json"
    final.write_text(json.dumps({"checkpoint": {"sha256": "0" * 64}}))
    assert sweep.restore_published(final, tmp_path / "x.safetensors") is None
    assert not (tmp_path / "x.safetensors").exists()


def test_an_ablation_run_equal_to_a_main_run_is_copied_not_trained_twice(tmp_path, monkeypatch):
    """long/ablations' reference is main's RepAn arm, seed 0, with the same arguments (100 epochs):
    the sweep copies that run's results once it has finished and trains nothing for it."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sweep.subprocess, "Popen", None)  # anything that would train fails the test
    ref = next(r for r in sweep.plan_runs("ablations", "long") if r["name"] == "reference")
    assert ref["same_as"] == "repan_repvgg_a1_w025__repan__s0"
    main_run = next(r for r in sweep.plan_runs("main", "long") if r["name"] == ref["same_as"])
    assert sweep._options(ref["args"]) == sweep._options(main_run["args"])
    msg = sweep._execute("long/ablations", ref, tmp_path / "work", "cpu", 1, [], dry=False)
    assert msg.startswith("waiting reference") and not (tmp_path / "results/long/ablations").exists()
    st = sweep.status("long/ablations", [ref], tmp_path / "work")
    assert (st["rows"][0]["state"], st["hours_left"], st["unknown_eta"]) == ("in main", 0, 0)
    write_run(tmp_path / "results/long/main", ref["same_as"], "repan_repvgg_a1_w025", "repan", 0, 92.9, 92.8)
    assert sweep._execute("long/ablations", ref, tmp_path / "work", "cpu", 1, [], dry=False).startswith("done")
    copied = tmp_path / "results/long/ablations/reference"
    assert json.loads((copied / "final.json").read_text())["val_top1"] == 92.9
    assert ref["same_as"] in (copied / "same_as.txt").read_text()
    assert sweep.status("long/ablations", [ref], tmp_path / "work")["done"] == 1


def test_a_same_as_run_whose_arguments_differ_from_its_main_run_is_refused():
    sweep = load("sweep")
    main_run = next(r for r in sweep.plan_runs("main", "long") if r["name"] == "repan_repvgg_a1_w025__repan__s0")
    other = sweep._run("reference", main_run["args"] + ["--later-lr", "0.05"], same_as=main_run["name"])
    with pytest.raises(ValueError, match="--later-lr"):
        sweep._check_same_as([other], "long")
    with pytest.raises(ValueError, match="does not have"):
        sweep._check_same_as([sweep._run("x", main_run["args"], same_as="nope")], "long")
    # the same options in another order are the same run
    shuffled = main_run["args"][2:] + main_run["args"][:2]
    assert sweep._check_same_as([sweep._run("r", shuffled, same_as=main_run["name"])], "long")


def test_status_times_later_plans_by_main_runs_finished_on_another_machine(tmp_path, monkeypatch):
    """A fresh runs root has no folders of main's finished runs: their committed histories still time
    the ablation and ship runs of the same kind (was: 'no timing yet' for every one of them)."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    name = "repan_repvgg_a1_w025__repan__s0"
    write_run(tmp_path / "results/long/main", name, "repan_repvgg_a1_w025", "repan", 0, 92.9, 92.8)
    (tmp_path / "results/long/main" / name / "metrics.json").write_text(
        json.dumps([{"epoch_time_s": t} for t in (50.0, 60.0, 70.0)]))
    st = sweep.status("long/ablations", sweep.plan_runs("ablations", "long"), tmp_path / "empty_runs_root")
    trained = [r for r in st["rows"] if not r.get("same_as")]
    assert trained and all(r["epoch_s"] == 60.0 for r in trained) and st["unknown_eta"] == 0


def test_a_restarted_sweep_finishes_its_part_trained_runs_before_starting_new_ones(tmp_path):
    """Processes end with the session: the next `--jobs 2` sweep must give its workers the runs that
    hold checkpoints first (teachers still before everything), not new runs that come earlier in
    the plan's seed-by-seed order."""
    sweep = load("sweep")
    runs = sweep.plan_runs("main", "long")
    work = tmp_path / "work"
    partial = ["repan_mobileone_s0_w050__kd__s0", "repan_mobileone_s0_w050__baseline__s0"]
    for name in partial:
        (work / "long" / "main" / name / "checkpoints").mkdir(parents=True)
    order = [r["name"] for r in sweep.queue("long/main", runs, work)]
    assert order[0] == "teacher"
    assert set(order[1:3]) == set(partial)
    assert order[3:] == [r["name"] for r in sorted(runs, key=sweep._order) if r["name"] not in partial + ["teacher"]]
    assert [r["name"] for r in sweep.queue("long/main", runs, tmp_path / "empty")] == [
        r["name"] for r in sorted(runs, key=sweep._order)]


@pytest.mark.parametrize("native", [True, False])
def test_the_sweep_trains_amp_runs_in_fp32_on_a_cpu_without_bf16_kernels(native, monkeypatch, tmp_path):
    """On a CPU without native bf16 (AVX2 only) bf16 autocast is emulated, about 10x slower than fp32:
    the sweep adds --no-amp there to the runs whose recipe says --amp (per-epoch ``precision`` records
    it); on a GPU and on a CPU with bf16 kernels the recipe runs as written."""
    sweep = load("sweep")
    monkeypatch.setattr(sweep, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")  # no run done, whichever have finished by now
    run = next(r for r in sweep.plan_runs("main", "long") if r["name"] == "repan_resnet18_acb_w025__repan_kd__s0")
    assert "--amp" in run["args"]
    cmd = sweep._execute("long/main", run, tmp_path, "cpu", 1, [], dry=True).split()
    assert ("--no-amp" in cmd) is (not native)
    if not native:
        assert cmd.index("--no-amp") > cmd.index("--amp")  # the later flag wins
    assert "--no-amp" not in sweep._execute("long/main", run, tmp_path, "cuda", 1, [], dry=True).split()
    mobileone = next(r for r in sweep.plan_runs("main", "long") if r["name"] == "repan_mobileone_s0_w050__kd__s0")
    assert "--no-amp" not in sweep._execute("long/main", mobileone, tmp_path, "cpu", 1, [], dry=True).split()


def test_continue_plan_starts_from_mains_weights_restored_from_the_published_ones(tmp_path, monkeypatch):
    """long/continue trains one RepAn + KD cycle and the same epochs of plain KD, both from the deploy
    weights of a finished main run (--init-checkpoint): a fresh runs root gets those weights back from
    the shipped file with the sha256 the run's final.json records; a run whose start is neither there nor
    published waits instead of training from scratch."""
    sweep = load("sweep")
    runs = {r["name"]: r for r in sweep.plan_runs("continue", "long")}
    assert [n for n in runs if n != "teacher"] == [
        "repan_mobileone_s0_w050__then_repan_kd__s0", "repan_mobileone_s0_w050__then_kd__s0",
        "repan_mobileone_s0_w050__then_repan_kd_lowlr__s0", "repan_mobileone_s0_w050__then_kd_lowlr__s0",
        "repan_mobileone_s0_w050__then_kd_light__s0", "repan_mobileone_s0_w050__then_baseline_light__s0",
        "repan_mobileone_s0_w050__then_kd_light2__s0", "repan_mobileone_s0_w050__then_baseline_light2__s0",
        "repan_mobileone_s0_w050__then_kd_light3__s0", "repan_mobileone_s0_w050__then_kd_flip__s0",
        "repan_mobileone_s0_w050__then_kd_flip_none__s0", "repan_mobileone_s0_w050__then_kd_flip2__s0"]
    low = {n: sweep._options(runs[n]["args"]) for n in runs if n.endswith("_lowlr__s0")}
    assert all(o["--lr"] == "0.005" and o["--epochs"] == "7" for o in low.values())
    # the light pair: the recipe's augmentation changed in place (one --augment), KD against no KD
    light = {n.split("__")[1]: runs[n] for n in runs if n.endswith("_light__s0")}
    opts = {arm: sweep._options(r["args"]) for arm, r in light.items()}
    assert all(o["--augment"] == "crop_flip" and o["--lr"] == "0.01" and o["--epochs"] == "18" for o in opts.values())
    assert all(r["args"].count("--augment") == 1 and r["init"] == "repan_mobileone_s0_w050__baseline__s0"
               and r["init_plan"] == "main" for r in light.values())
    # the second light pair continues the first pair's no-KD run (a run of this plan) at half its LR
    light2 = {n.split("__")[1]: runs[n] for n in runs if n.endswith("_light2__s0")}
    assert {arm: (sweep._options(r["args"])["--lr"], sweep._options(r["args"])["--augment"], r["init_plan"], r["init"])
            for arm, r in light2.items()} == {
        arm: ("0.005", "crop_flip", "continue", "repan_mobileone_s0_w050__then_baseline_light__s0")
        for arm in ("then_kd_light2", "then_baseline_light2")}
    # the fifth pair, KD from the shipped KD arm of the fourth: half its LR again, or flips alone; the
    # sixth, from the fifth's winner (flips alone): without augmentation, or flips at half its LR
    later = {"then_kd_light3": ("0.0025", "crop_flip", "then_kd_light2"),
             "then_kd_flip": ("0.005", "flip", "then_kd_light2"),
             "then_kd_flip_none": ("0.005", "none", "then_kd_flip"),
             "then_kd_flip2": ("0.0025", "flip", "then_kd_flip")}
    for arm, (lr, augment, start_arm) in later.items():
        run = runs[f"repan_mobileone_s0_w050__{arm}__s0"]
        o = sweep._options(run["args"])
        assert (o["--lr"], o["--augment"], o["--epochs"], o["--method"], run["init"], run["init_plan"]) == (
            lr, augment, "7", "kd", f"repan_mobileone_s0_w050__{start_arm}__s0", "continue"), arm
    assert opts["then_kd_light"]["--method"] == "kd" and light["then_kd_light"]["needs"] == "teacher"
    assert opts["then_baseline_light"]["--method"] == "baseline" and light["then_baseline_light"]["needs"] is None
    assert "--teacher" not in opts["then_baseline_light"] and "--kd-alpha" not in opts["then_baseline_light"]
    pair = ["repan_mobileone_s0_w050__then_repan_kd__s0", "repan_mobileone_s0_w050__then_kd__s0"]
    a, b = (sweep._options(runs[n]["args"]) for n in pair)
    assert a["--method"] == "repan" and a["--first-cycle"] == "expand" and a["--branches"] == "arch"
    assert b["--method"] == "kd" and "--branches" not in b
    shared = (a.keys() & b.keys()) - {"--method"}
    assert {k: a[k] for k in shared} == {k: b[k] for k in shared}  # one recipe but for RepAn's own options
    assert a["--epochs"] == "20" and a["--cycles"] == "1" and a["--lr"] == "0.05"
    start = runs[pair[0]]["init"]
    assert start == "repan_mobileone_s0_w050__baseline__s0" and (sweep.RESULTS / "long/main" / start / "final.json").exists()

    results = tmp_path / "results"  # the committed results, but for the continue plan's own (not yet run here)
    (results / "long/main" / start).mkdir(parents=True)
    final = json.loads((sweep.RESULTS / "long/main" / start / "final.json").read_text())
    # whichever weights of the model are published now stand in for the start's (the start itself may
    # have been superseded since): the restore goes by the sha256 its final.json records
    from repan_zoo import manifest

    published = manifest.entries_for("repan_mobileone_s0_w050")[0]
    final["checkpoint"].update(sha256=published.sha256, size=published.size)
    (results / "long/main" / start / "final.json").write_text(json.dumps(final))
    monkeypatch.setattr(sweep, "RESULTS", results)
    monkeypatch.setattr(sweep.subprocess, "Popen", None)  # nothing trains here
    monkeypatch.setattr(sweep.time, "time", lambda: 2e9)   # ... and the deadline has passed
    msg = sweep._execute("long/continue", runs[pair[0]], tmp_path, "cpu", 1, [], dry=False, deadline=1.0)
    assert msg.startswith("not started")
    restored = tmp_path / "long/main" / start / "deploy.safetensors"
    recorded = json.loads((results / "long/main" / start / "final.json").read_text())["checkpoint"]["sha256"]
    from repan_zoo.fileio import sha256_file

    assert sha256_file(restored) == recorded
    cmd = sweep._execute("long/continue", runs[pair[0]], tmp_path, "cpu", 1, [], dry=True).split()
    assert cmd[cmd.index("--init-checkpoint") + 1] == str(restored)

    unpublished = dict(runs[pair[1]], init="no_such_run__baseline__s0")
    msg = sweep._execute("long/continue", unpublished, tmp_path / "fresh", "cpu", 1, [], dry=False)
    assert msg.startswith("waiting") and "not finished yet" in msg
    (results / "long/main/no_such_run__baseline__s0").mkdir(parents=True)
    (results / "long/main/no_such_run__baseline__s0/final.json").write_text(json.dumps(
        dict(final, checkpoint={"sha256": "0" * 64})))
    msg = sweep._execute("long/continue", unpublished, tmp_path / "fresh", "cpu", 1, [], dry=False)
    assert msg.startswith("waiting") and "neither in the runs root nor published" in msg
    # a start from this plan's own run: found under long/continue, and waited for until it has finished
    second = runs["repan_mobileone_s0_w050__then_kd_light2__s0"]
    msg = sweep._execute("long/continue", second, tmp_path / "fresh", "cpu", 1, [], dry=False)
    assert msg == f"waiting {second['name']}: it starts from long/continue's {second['init']}, not finished yet"
    cmd = sweep._execute("long/continue", second, tmp_path, "cpu", 1, [], dry=True).split()
    assert cmd[cmd.index("--init-checkpoint") + 1] == str(tmp_path / "long/continue" / second["init"] / "deploy.safetensors")


def test_continued_runs_are_paired_with_the_main_run_they_start_from(tmp_path):
    """long/continue: Δ is measured against the main baseline whose weights the runs start from,
    and the fall from its validation top-1 to their first epoch is the drop at their start."""
    agg = load("aggregate")
    write_run(tmp_path / "long" / "main", "m__baseline__s0", "m", "baseline", 0, 93.0, 92.5, sha="a" * 64)
    plan = tmp_path / "long" / "continue"
    write_run(plan, "m__then_repan_kd__s0", "m", "repan_kd", 0, 94.0, 93.5, cycles=1, epochs=20, init="a" * 64)
    write_run(plan, "m__then_kd__s0", "m", "kd", 0, 93.5, 93.0, cycles=1, epochs=20, init="a" * 64, sha="b" * 64)
    # a run continuing another run of the plan: its drop counts from that run's validation top-1, its Δ
    # still from main's baseline (all epochs on top of it)
    write_run(plan, "m__then_kd2__s0", "m", "kd", 0, 93.7, 93.2, cycles=1, epochs=5, init="b" * 64)
    (plan / "m__then_repan_kd__s0" / "metrics.json").write_text(json.dumps(
        [{"cycle": 1, "epoch": 1, "val_top1": 87.0, "expand": True}, {"cycle": 1, "epoch": 2, "val_top1": 94.0}]))
    summary = agg.summarize(plan)
    groups = {g["method"]: g for g in summary["groups"]}
    assert groups["then_repan_kd"]["delta_test_vs_baseline"]["mean"] == pytest.approx(1.0)
    assert groups["then_kd"]["delta_test_vs_baseline"]["mean"] == pytest.approx(0.5)
    assert groups["then_repan_kd"]["cycle_start_drop"]["mean"] == pytest.approx(6.0)
    assert groups["then_kd"]["cycle_start_drop"]["mean"] == pytest.approx(-0.5)  # it rose
    assert groups["then_kd2"]["cycle_start_drop"]["mean"] == pytest.approx(-0.2)
    assert groups["then_kd2"]["delta_test_vs_baseline"]["mean"] == pytest.approx(0.7)
    assert groups["then_kd2"]["starts_from"] == ["continue/m__then_kd__s0"]
    md = agg.markdown(summary)
    assert "starts from the deploy weights of the finished run its group names below" in md
    assert ("Starts: `continue/m__then_kd__s0` → then_kd2; `main/m__baseline__s0` → then_kd, then_repan_kd."
            in md)
    assert "| m | then_repan_kd | 1x20 |" in md and "| +1.00 | 6.00 |" in md


def test_sweep_only_with_a_filter_that_matches_nothing_is_refused(tmp_path, capsys):
    """``--only`` with a typo (was: 'plan cpu/main: 0 runs', exit 0: an overnight job that did nothing
    'succeeded') or with no name (was: the whole plan); a matching filter still selects."""
    sweep = load("sweep")
    with pytest.raises(SystemExit) as info:
        sweep.main(["--plan", "main", "--only", "bogus_name", "--work", str(tmp_path), "--dry-run"])
    assert info.value.code == 2 and "--only bogus_name matches no run of cpu/main" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # an empty filter (a launcher's empty list) is not "every run"
        sweep.main(["--plan", "main", "--only", ",", "--work", str(tmp_path), "--dry-run"])
    assert info.value.code == 2 and "--only names no run" in capsys.readouterr().err
    assert sweep.main(["--plan", "main", "--only", "teacher", "--work", str(tmp_path), "--status"]) == 0


def test_aggregate_help_writes_nothing_and_results_picks_the_folder(tmp_path, capsys):
    agg = load("aggregate")
    plan = tmp_path / "cpu" / "main"
    write_run(plan, "m__baseline__s0", "m", "baseline", 0, 90.0, 89.0)
    with pytest.raises(SystemExit) as stop:
        agg.main(["--help", "--results", str(tmp_path)])
    assert stop.value.code == 0 and "summary.md" in capsys.readouterr().out
    assert not (plan / "summary.json").exists()
    with pytest.raises(SystemExit) as stop:
        agg.main(["--unknown"])
    assert stop.value.code == 2
    assert agg.main(["--results", str(tmp_path)]) == 0
    assert json.loads((plan / "summary.json").read_text())["runs"][0]["run"] == "m__baseline__s0"


def test_a_results_copy_marks_the_run_done_only_when_every_file_is_there(tmp_path, monkeypatch):
    """``final.json`` marks a run done (status, aggregate): it is copied last, so a copy stopped
    mid-way leaves the run to be copied again (was: final.json second, then metrics.csv, the curve
    and command.txt; a sweep killed in between counted the run done with them missing)."""
    sweep = load("sweep")
    out, dest = tmp_path / "run", tmp_path / "results" / "r"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps([{"epoch_time_s": 1.0}]))
    (out / "final.json").write_text(json.dumps({"model": "m", "recipe": {"data_dir": str(tmp_path / "data")}}))
    (out / "metrics.csv").write_text("epoch\n1\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep.shutil, "copy2", fail)
    with pytest.raises(OSError):
        sweep.copy_results(out, dest, ["python", "-m", "x"], {str(tmp_path): "$REPAN_RUNS"})
    assert not (dest / "final.json").exists()
    monkeypatch.undo()
    sweep.copy_results(out, dest, ["python", "-m", "x"], {str(tmp_path): "$REPAN_RUNS"})
    assert sorted(p.name for p in dest.iterdir()) == ["command.txt", "final.json", "metrics.csv", "metrics.json"]
    assert json.loads((dest / "final.json").read_text())["recipe"]["data_dir"] == "$REPAN_RUNS/data"


def test_a_run_carried_from_another_machine_resumes_with_this_ones_data(tmp_path, monkeypatch):
    """A run continued from a GPU call saved that machine's --data-dir (``.fmnist`` beside its
    checkout); resumed here, where no such folder is, the sweep passes this machine's dataset folder
    (was: DatasetNotFoundError on every resume). A data folder that exists here is left as saved."""
    from repan_zoo.data import FASHION_MNIST_DIR

    sweep = load("sweep")
    monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
    run = next(r for r in sweep.plan_runs("main", "long") if r["name"] == "repan_repvgg_a1_w025__baseline__s0")
    out = tmp_path / "work" / "long" / "main" / run["name"]
    (out / "checkpoints").mkdir(parents=True)
    (out / "recipe.json").write_text(json.dumps({"dataset": "fashion_mnist", "data_dir": ".fmnist_of_a_gpu_call"}))
    cmd = sweep._execute("long/main", run, tmp_path / "work", "cpu", 1, [], dry=True)
    assert "--resume" in cmd and f"--data-dir {FASHION_MNIST_DIR}" in cmd
    (out / "recipe.json").write_text(json.dumps({"dataset": "fashion_mnist", "data_dir": str(tmp_path)}))
    assert "--data-dir" not in sweep._execute("long/main", run, tmp_path / "work", "cpu", 1, [], dry=True)

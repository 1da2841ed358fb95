"""``repan-train``: train a zoo model with RepAn (Algorithm 1), plain training or KD.

Examples::

    # RepAn on Fashion-MNIST (Debian's dataset-fashion-mnist), 4 cycles × 3 epochs
    repan-train --method repan --model repan_repvgg_a1_w025 --cycles 4 --epochs 3 --out runs/a1

    # the same budget as ordinary training, then fused (baseline of Sec. 5.1)
    repan-train --method baseline --model repan_repvgg_a1_w025 --cycles 4 --epochs 3 --out runs/a1-base

    # two processes (gloo on CPU, nccl on GPUs); --batch-size is the global batch
    torchrun --standalone --nproc_per_node 2 -m repan_zoo.train_cli --out runs/ddp ...

    # continue a killed run from its last completed epoch
    repan-train --out runs/a1 --resume

Outputs in ``--out``: ``recipe.json``, ``checkpoints/`` (every epoch, atomic),
``metrics.csv`` / ``metrics.json`` (per epoch: train loss, val/test top-1, λ, lr, cycle, time),
``learning_curve.png`` (cycle boundaries dotted, like Fig. 3), and at the end
``deploy.safetensors`` (load with ``timm.create_model(name, deploy=True)`` +
``repan_zoo.checkpoint.load_into``), ``exactness.json`` (fused vs unfused on a held-out batch)
and ``final.json`` (full recipe, final val/test top-1 of the deploy model).

With ``--resume`` the recipe saved in ``recipe.json`` is used; options given explicitly on the
command line override it (recorded in ``resume.json``; the run is then no longer the one an
uninterrupted run would give).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .cli_types import OneLineParser, csv_list, device, json_dict, number, writable_dir_problem

__all__ = ["build_parser", "run", "main"]

_UNSET = object()
#: seeds are 63-bit (torch.manual_seed takes a signed 64-bit integer)
SEED_MAX = 2**63 - 1


def build_parser() -> argparse.ArgumentParser:
    from .annealing.config import FIRST_CYCLE_MODES, METHODS, TrainConfig
    from .data import DATASETS

    dflt = TrainConfig().as_dict()
    p = OneLineParser(
        prog="repan-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("method and model")
    g.add_argument("--method", choices=METHODS, default=dflt["method"],
                   help="baseline: plain training of cycles×epochs; kd: the same with a teacher; repan: Algorithm 1")
    g.add_argument("--model", default=dflt["model"], help="timm model name (see timm.list_models('repan_*'))")
    g.add_argument("--model-kwargs", dest="model_kwargs", type=json_dict, default={},
                   help="JSON kwargs for timm.create_model, e.g. '{\"width_mult\": 0.25}'")
    g.add_argument("--init-checkpoint", default=None, help="Alg. 1 line 1: start from these weights (train or deploy safetensors)")

    g = p.add_argument_group("RepAn (Algorithm 1)")
    g.add_argument("--cycles", type=number(int, 1), default=dflt["cycles"], help="R: number of cycles")
    g.add_argument("--epochs", type=number(int, 1), default=dflt["epochs"], help="E: epochs per cycle")
    g.add_argument("--first-cycle", choices=FIRST_CYCLE_MODES, default=dflt["first_cycle"],
                   help="expand: the paper (Alg. 1 line 2 fuses before cycle 1, every cycle expands); "
                        "plain: cycle 1 trains the Rep network as built, cycles 2..R anneal (findings setup)")
    g.add_argument("--branches", type=csv_list, default=list(dflt["branches"]),
                   help="branch kinds attached at each Expand (comma-separated), or 'arch' for each block's own kinds")
    g.add_argument("--k", type=number(int, 0, 5), default=dflt["k"], help="new parallel branches per kind and block (1..5, Table 5)")
    g.add_argument("--restore", default=dflt["restore"], help="inverse of Eq. 2: inherit | normalized | identity | a registered rule (repan_zoo.algebra.RESTORE_RULES)")
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=dflt["residual"],
                   help="also attach the residual BN branch BN_res(X) of Eq. 3 where shapes allow")
    g.add_argument("--branch-gamma", type=number(float, 0.0), default=dflt["branch_gamma"],
                   help="γ of each new branch's output BN (0: the branch starts as an exact no-op)")
    g.add_argument("--expand-blocks", default=None, help="regex on block names: only these get new branches")
    g.add_argument("--calib-batches", type=number(int, 0), default=dflt["calib_batches"],
                   help="BN calibration batches after each Expand (0 = keep the inherited statistics)")
    g.add_argument("--precise-bn", type=number(int, 0), default=dflt["precise_bn"],
                   help="re-estimate BN statistics on this many training batches before each cycle-ending Rep "
                        "(0 = off, as in the paper)")
    g.add_argument("--calib-batch-size", type=number(int, 2), default=None, help="images per calibration batch (default --batch-size)")
    g.add_argument("--lam-schedule", default=dflt["lam_schedule"], help="Θ: constant | linear | cosine | step | registered name")
    g.add_argument("--lam-warmup", type=number(float, 0.0, 1.0), default=dflt["lam_warmup"], help="fraction of a cycle over which λ rises")
    g.add_argument("--lam-start", type=number(float, 0.0, 1.0), default=dflt["lam_start"], help="λ at the start of a cycle")
    g.add_argument("--lam-end", type=number(float, 0.0, 1.0), default=dflt["lam_end"], help="λ after the warmup (constant: always)")
    g.add_argument("--lam-per-iter", action=argparse.BooleanOptionalAction, default=dflt["lam_per_iter"],
                   help="update λ every iteration (else once per epoch, before it trains)")

    g = p.add_argument_group("knowledge distillation")
    g.add_argument("--teacher", default=None, help="timm model name of the teacher")
    g.add_argument("--teacher-checkpoint", default=None, help="local safetensors weights of the teacher")
    g.add_argument("--teacher-kwargs", type=json_dict, default={}, help="JSON kwargs for the teacher's create_model")
    g.add_argument("--teacher-pretrained", action="store_true", help="use timm's pretrained weights for the teacher")
    g.add_argument("--kd-alpha", type=number(float, 0.0, 1.0), default=dflt["kd_alpha"], help="α: share of the KD term")
    g.add_argument("--kd-T", dest="kd_T", type=number(float, 0.0, lo_open=True), default=dflt["kd_T"], help="T: softmax temperature")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=dflt["dataset"])
    g.add_argument("--data-dir", default=None, help="dataset folder (default for fashion_mnist: Debian's location)")
    g.add_argument("--val-size", type=number(int, 1), default=dflt["val_size"], help="validation images carved from the training set")
    g.add_argument("--train-subset", type=number(int, 2, none=True), default=None, help="use only this many training images")
    g.add_argument("--test-each-epoch", action=argparse.BooleanOptionalAction, default=dflt["test_each_epoch"],
                   help="evaluate the test set after every epoch (off: only the final network; validation always)")
    g.add_argument("--test-subset", type=number(int, 1, none=True), default=None, help="evaluate on only this many test images")
    g.add_argument("--split-seed", type=number(int, 0, SEED_MAX), default=dflt["split_seed"], help="seed of the train/val permutation")
    g.add_argument("--img-size", type=number(int, 1), default=dflt["img_size"], help="imagefolder: image side after resize+crop")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=dflt["flip"], help="random horizontal flip")
    g.add_argument("--augment", default=None,
                   help="training augmentation policy: none | flip | crop_flip | crop_flip_erase | a registered name "
                        "(repan_zoo.augment; default: flip, or none with --no-flip)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=number(int, 2), default=dflt["batch_size"], help="global batch (split over processes)")
    g.add_argument("--eval-batch-size", type=number(int, 1), default=dflt["eval_batch_size"])
    g.add_argument("--lr", type=number(float, 0.0, lo_open=True), default=dflt["lr"], help="peak learning rate (cosine to --min-lr each cycle)")
    g.add_argument("--later-lr", type=number(float, 0.0, lo_open=True), default=None, help="peak learning rate of cycles 2..R (default --lr)")
    g.add_argument("--min-lr", type=number(float, 0.0), default=dflt["min_lr"])
    g.add_argument("--warmup-epochs", type=number(float, 0.0), default=dflt["warmup_epochs"], help="linear LR warmup per cycle")
    g.add_argument("--wd", type=number(float, 0.0), default=dflt["wd"], help="weight decay (all parameters)")
    g.add_argument("--momentum", type=number(float, 0.0, 1.0, hi_open=True), default=dflt["momentum"])
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=dflt["nesterov"])
    g.add_argument("--label-smoothing", type=number(float, 0.0, 1.0, hi_open=True), default=dflt["label_smoothing"])
    g.add_argument("--clip-grad", type=number(float, 0.0, lo_open=True), default=None, help="clip the gradient norm to this value")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=dflt["amp"],
                   help="mixed precision (float16 + grad scaler on CUDA, bfloat16 on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=dflt["channels_last"],
                   help="NHWC memory format for the model and its inputs (1.3-2x faster training on CPU)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=dflt["sync_bn"],
                   help="BatchNorm statistics over the global batch of all processes")
    g.add_argument("--seed", type=number(int, 0, SEED_MAX), default=dflt["seed"])
    g.add_argument("--max-steps-per-epoch", type=number(int, 1, none=True), default=None, help="cap steps per epoch (tests, smoke runs)")

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory (checkpoints, metrics, deploy checkpoint)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    g.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument("--workers", type=number(int, 0), default=0, help="DataLoader worker processes")
    g.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads per process")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-reproducible resume)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bars on rank 0 (default: when stderr is a terminal)")
    g.add_argument("--keep-checkpoints", type=number(int, 1), default=2, help="epoch checkpoints kept")
    g.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="write learning_curve.png")
    g.add_argument("--import", dest="imports", action="append", default=[],
                   help="import this module or .py file first (registers models / λ schedules); repeatable")
    return p


def _recipe_fields() -> List[str]:
    from .annealing.config import TrainConfig

    return TrainConfig.recipe_keys()


def _import_plugins(names: Sequence[str]) -> None:
    """Import each ``--import`` module or ``.py`` file; one that cannot be found raises
    :class:`~repan_zoo.errors.RecipeError` (errors raised by the plugin's own code propagate)."""
    from .errors import RecipeError

    for name in names:
        if name.endswith(".py"):
            path = Path(name)
            spec = importlib.util.spec_from_file_location(path.stem, path) if path.is_file() else None
            if spec is None or spec.loader is None:
                raise RecipeError(f"--import {name}: no such Python file; give an existing .py file or a module name")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not name.startswith(exc.name):
                    raise  # the plugin exists but itself imports something missing: its own traceback helps
                raise RecipeError(f"--import {name}: no module named {exc.name!r}; check the name, or put its folder "
                                  "on PYTHONPATH") from None


def _parse(argv: Optional[Sequence[str]]):
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse fills in a default only where the namespace lacks the attribute: pre-set markers
    # show which options were given explicitly (append actions start from None)
    appends = {a.dest for a in parser._actions if isinstance(a, argparse._AppendAction)}
    probe = argparse.Namespace(**{a.dest: (None if a.dest in appends else _UNSET)
                                  for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=probe)
    explicit = {k for k, v in vars(probe).items() if v is not _UNSET and v is not None}
    problem = writable_dir_problem(args.out)
    if problem:
        parser.error(f"argument --out: {problem}")
    return args, explicit


def check_recipe(cfg) -> None:
    """Checks across options that argparse's per-option types cannot make (raises
    :class:`~repan_zoo.errors.RecipeError`); run on the resolved recipe, before anything is written."""
    from .cli_types import check_model_name
    from .errors import RecipeError

    for option, name in (("--model", cfg.model), ("--teacher", cfg.teacher)):
        if name:
            try:
                check_model_name(name, option)
            except ValueError as exc:
                raise RecipeError(str(exc)) from None
    for name, peak in (("--lr", cfg.lr), ("--later-lr", cfg.later_lr)):
        if peak is not None and cfg.min_lr > peak:
            raise RecipeError(f"--min-lr {cfg.min_lr:g} is above {name} {peak:g}: the cosine schedule would rise; "
                              f"use --min-lr ≤ {peak:g}")
    for option, path in (("--init-checkpoint", cfg.init_checkpoint), ("--teacher-checkpoint", cfg.teacher_checkpoint)):
        if path and not Path(path).is_file():
            raise RecipeError(f"{option} {path}: no such file; give the path of a safetensors checkpoint")
    shortest = min(cp.epochs for cp in cfg.plan())  # the LR schedule restarts with each planned cycle
    if cfg.warmup_epochs > shortest:
        raise RecipeError(f"--warmup-epochs {cfg.warmup_epochs:g} is longer than a cycle ({shortest} epochs); "
                          f"use --warmup-epochs ≤ {shortest}")


def _check_resumable(cfg, data, out: Path) -> None:
    """Load the run's last checkpoint into the model the (resolved) recipe builds, so that a
    recipe that does not fit the run (another --model, other model kwargs) is refused before
    ``recipe.json`` is touched. Raises :class:`~repan_zoo.errors.RecipeError` /
    :class:`~repan_zoo.errors.CheckpointError`."""
    from .runtime.checkpointing import Checkpointer
    from .annealing.trainer import build_model
    from .checkpoint import load_into
    from .errors import CheckpointError, RecipeError

    ck = Checkpointer(out).load()
    if ck is None:
        return
    trained = ck.model_meta.get("architecture")
    if trained and trained != cfg.model:
        raise RecipeError(f"{out} holds a run of {trained}, not {cfg.model}: drop --model to resume it, "
                          "or choose a new --out to train another model")
    model = build_model(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans, model_kwargs=cfg.model_kwargs)
    try:
        load_into(model, ck.model_state, ck.model_meta, what=f"checkpoint {ck.directory}")
    except CheckpointError as exc:
        raise RecipeError(f"the recipe does not fit the run in {out}: {exc}. Resume without changing the "
                          "model options, or choose a new --out") from None


def _resolve_recipe(args, explicit, out: Path, log) -> Dict[str, Any]:
    from .runtime.checkpointing import Checkpointer
    from .errors import RecipeError

    fields = _recipe_fields()
    recipe = {name: getattr(args, name) for name in fields}
    recipe["branches"] = list(recipe["branches"])
    saved_path = out / "recipe.json"
    has_run = Checkpointer(out).exists()
    if not args.resume:
        if has_run:
            raise RecipeError(f"{out} already holds a run (checkpoints/latest.json); pass --resume to continue it "
                              "or choose a new --out")
        return recipe
    if not saved_path.is_file():
        if has_run:
            raise RecipeError(f"{out} has checkpoints but no recipe.json; cannot resume it safely")
        log(f"--resume: {out} holds no run yet; starting one")
        return recipe
    try:
        saved = json.loads(saved_path.read_text())
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{saved_path} is not JSON ({exc}); restore it, or start a new run (new --out)") from None
    overrides = {k: recipe[k] for k in fields if k in explicit and saved.get(k) != recipe[k]}
    if overrides:
        log(f"--resume: overriding the saved recipe with {overrides}")
        args.recipe_overrides = overrides  # recorded in resume.json once every check passed
    return {**{k: v for k, v in saved.items() if k in fields}, **overrides}


def _record_overrides(out: Path, overrides: Dict[str, Any]) -> None:
    from .runtime.report import write_json
    from .errors import RecipeError

    history = []
    if (out / "resume.json").is_file():
        try:
            history = json.loads((out / "resume.json").read_text())
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{out / 'resume.json'} is not JSON ({exc}); restore or delete it") from None
    write_json(out / "resume.json", history + [{"overrides": overrides}])


def run(argv: Optional[Sequence[str]] = None):
    """Parse ``argv`` and train; returns the :class:`~repan_zoo.annealing.TrainResult`.
    Errors propagate (typed :class:`~repan_zoo.errors.RepanError` subclasses)."""
    args, explicit = _parse(argv)
    import torch

    _import_plugins(args.imports)
    from .annealing.config import TrainConfig
    from .runtime.distributed import init_distributed
    from .runtime.report import write_json
    from .annealing.trainer import RepAnTrainer
    from .data import load_splits
    from .fileio import remove_stale_temps
    from .runlock import RunLock

    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    ctx = init_distributed(args.device)
    lock = RunLock(args.out, command="repan-train")
    started = False
    try:
        def log(msg: str) -> None:
            if ctx.is_main:
                print(msg, flush=True)

        out = Path(args.out)
        if ctx.is_main:
            lock.acquire()  # one writer per run directory (the other ranks write nothing)
        recipe = _resolve_recipe(args, explicit, out, log)
        cfg = TrainConfig.from_dict(recipe)
        check_recipe(cfg)
        data = load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, train_subset=cfg.train_subset,
                           test_subset=cfg.test_subset, split_seed=cfg.split_seed, seed=cfg.seed,
                           augment=cfg.augment_policy(),
                           img_size=cfg.img_size)
        if args.resume:
            _check_resumable(cfg, data, out)
        started = True
        if ctx.is_main:
            if args.resume:
                remove_stale_temps(out)  # left by a killed write; this process is the only writer
            if getattr(args, "recipe_overrides", None):
                _record_overrides(out, args.recipe_overrides)
            write_json(out / "recipe.json", cfg.as_dict())
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        log(f"{cfg.method} · {cfg.model} · {data.name}: train {len(data.train)}, val {len(data.val)}, "
            f"test {len(data.test)} · {ctx.world_size} process(es) on {ctx.device}")
        trainer = RepAnTrainer(cfg, data, ctx=ctx, out=out, progress=progress, log=log, workers=args.workers,
                               keep_checkpoints=args.keep_checkpoints, plot=args.plot)
        try:
            result = trainer.run(resume=args.resume)
        except OSError as exc:  # a full disk / I/O error while writing reports or the deploy file
            from .errors import CheckpointError

            raise CheckpointError(
                f"writing the run's files failed ({exc}); every completed epoch in {out / 'checkpoints'} is intact. "
                f"Fix the cause (disk space, permissions), then continue with `repan-train --out {out} --resume`"
            ) from exc
        if ctx.is_main:
            write_json(out / "recipe.json", cfg.as_dict())
        return result
    finally:
        lock.release(discard_dir=not started)
        ctx.close()
        torch.set_num_threads(threads_before)
        if args.deterministic:
            torch.use_deterministic_algorithms(deterministic_before)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: 0 on success, 2 for a bad recipe / missing data / checkpoint problem,
    3 when training diverged (the message names cycle, epoch, step and the fix)."""
    from .errors import RepanError, TrainingDivergedError

    try:
        run(argv)
    except TrainingDivergedError as exc:
        print(f"repan-train: error: {exc}", file=sys.stderr)
        return 3
    except RepanError as exc:
        print(f"repan-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

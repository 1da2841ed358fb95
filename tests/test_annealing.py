"""repan_zoo.annealing: λ schedules Θ, KD loss, Algorithm 1's step order and exactness,
divergence stop, run checkpoints. Tiny synthetic data and the ``tinyrep_test`` model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tinyrep_models  # noqa: F401  (registers tinyrep_test with timm)
from helpers import randomize_bn
from repan_zoo.annealing import (
    LAMBDA_SCHEDULES,
    KDLoss,
    LambdaSchedule,
    RepAnTrainer,
    TrainConfig,
    build_teacher,
    cosine_lr,
    register_lambda_schedule,
)
from repan_zoo.annealing import cycles as cycles_mod
from repan_zoo.runtime.checkpointing import Checkpointer
from repan_zoo.runtime.distributed import CPUSyncBatchNorm, convert_sync_bn
from repan_zoo.checkpoint import model_form, save_checkpoint
from repan_zoo.convert import uncalibrated_blocks
from repan_zoo.errors import LambdaRangeError, RecipeError, TrainingDivergedError
from repan_zoo.verify import eval_mode, relative_error, rep_blocks
from tinyrep_models import synthetic_splits

torch.set_num_threads(1)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(method="repan", model="tinyrep_test", cycles=2, epochs=2, batch_size=32, eval_batch_size=64,
                lr=0.05, calib_batches=2, calib_batch_size=32, max_steps_per_epoch=2, lam_per_iter=False,
                lam_warmup=1.0)
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits()


# ----------------------------------------------------------------------------- Θ(r, e)
def test_lambda_schedule_values():
    lin = LambdaSchedule("linear", warmup=1.0)
    assert [lin.value(1, e, 4) for e in (1, 2, 3, 4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # the findings' ramp over the first 30 % of a 3-epoch cycle, per epoch: full from epoch 1
    assert LambdaSchedule("linear", warmup=0.3).value(1, 1, 3) == 1.0
    ramp = LambdaSchedule("linear", warmup=0.5, per_iter=True)
    assert ramp.value(2, 1, 2, step=1, steps_per_epoch=4) == pytest.approx((1 / 8) / 0.5)
    assert ramp.value(2, 1, 2, step=4, steps_per_epoch=4) == 1.0
    cos = LambdaSchedule("cosine", warmup=1.0)
    assert cos.value(1, 1, 2) == pytest.approx(0.5)
    assert cos.value(1, 1, 4) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.25)))
    step = LambdaSchedule("step", start=0.1, end=0.9, warmup=0.5)
    assert [step.value(1, e, 4) for e in (1, 2, 3, 4)] == pytest.approx([0.1, 0.9, 0.9, 0.9])
    assert LambdaSchedule("constant", end=0.4).value(3, 1, 5) == pytest.approx(0.4)
    assert LambdaSchedule("linear", start=0.2, end=0.6, warmup=1.0).value(1, 1, 2) == pytest.approx(0.4)


def test_lambda_schedule_registry_and_range():
    name = "test_half_then_over"
    if name not in LAMBDA_SCHEDULES:
        @register_lambda_schedule(name)
        def _bad(progress, cycle, *, start, end, warmup):
            return 0.5 if cycle == 1 else 1.5  # out of range from cycle 2 on

    sched = LambdaSchedule(name)
    assert sched.value(1, 1, 2) == 0.5
    with pytest.raises(LambdaRangeError, match="outside"):
        sched.value(2, 1, 2)
    with pytest.raises(ValueError, match="already registered"):
        register_lambda_schedule("linear")(lambda *a, **k: 0.0)
    with pytest.raises(RecipeError, match="unknown λ schedule"):
        LambdaSchedule("nope")
    with pytest.raises(LambdaRangeError):
        LambdaSchedule("linear", end=1.2)


def test_cosine_lr_restarts_and_warmup():
    assert cosine_lr(0, 10, 0.2) == pytest.approx(0.2)
    assert cosine_lr(5, 10, 0.2) == pytest.approx(0.1)
    assert cosine_lr(10, 10, 0.2) == pytest.approx(0.0, abs=1e-12)
    assert [cosine_lr(s, 10, 0.2, warmup=4) for s in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert cosine_lr(4, 10, 0.2, warmup=4) == pytest.approx(0.2)


# ----------------------------------------------------------------------------- KD
def test_kd_loss_formula_and_teacher_gradient():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(6, 10, generator=gen, requires_grad=True)
    t = torch.randn(6, 10, generator=gen, requires_grad=True)
    y = torch.randint(0, 10, (6,), generator=gen)
    ce = F.cross_entropy(s, y)
    assert torch.allclose(KDLoss(alpha=0.0, temperature=4.0)(s, y, t), ce)
    assert torch.allclose(KDLoss(alpha=0.9)(s, y, None), ce)
    alpha, T = 0.7, 4.0
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = (1 - alpha) * ce + alpha * T * T * kl
    loss = KDLoss(alpha=alpha, temperature=T)(s, y, t)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert t.grad is None and s.grad is not None
    same = KDLoss(alpha=0.5, temperature=3.0)(s.detach(), y, s.detach())
    assert torch.allclose(same, 0.5 * ce.detach(), atol=1e-6)  # KL(p‖p) = 0
    with pytest.raises(RecipeError):
        KDLoss(alpha=1.5)


def test_teacher_from_local_checkpoint(tmp_path):
    import timm

    src = timm.create_model("tinyrep_test", num_classes=10, in_chans=1)
    randomize_bn(src, torch.Generator().manual_seed(3))
    path = save_checkpoint(src, tmp_path / "teacher.safetensors", architecture="tinyrep_test")
    teacher = build_teacher("tinyrep_test", num_classes=10, in_chans=1, checkpoint=str(path))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), eval_mode(src):
        assert relative_error(src(x), teacher(x)) < 1e-6
    with pytest.raises(RecipeError, match="no weights"):
        build_teacher("tinyrep_test", num_classes=10, in_chans=1)
    with pytest.raises(RecipeError, match="--teacher 'no_such_teacher' is not a timm model"):
        build_teacher("no_such_teacher", num_classes=10, in_chans=1, checkpoint=str(path))


def test_a_teacher_that_fails_for_another_reason_is_not_called_an_unknown_name(monkeypatch):
    """Only timm's "Unknown model" becomes the unknown-name error; a failed download keeps its own."""
    import timm

    def offline(*args, **kwargs):
        raise RuntimeError("could not fetch the pretrained weights: network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="network unreachable") as info:
        build_teacher("tinyrep_test", num_classes=10, in_chans=1, pretrained=True)
    assert not isinstance(info.value, RecipeError)


# ----------------------------------------------------------------------------- Algorithm 1
def _spy(monkeypatch):
    """Record the order of Algorithm 1's steps as the driver (cycles.py) calls the core functions."""
    events = []

    def wrap(name, label):
        original = getattr(cycles_mod, name)

        def spy(*args, **kwargs):
            if label == "lambda":
                events.append(("lambda", round(float(args[1]), 6)))
            elif label == "expand+restore":
                events.append((label, args[1].k))  # unfold(model, expansion, ...)
                assert kwargs["generator"] is spies["generator"], "expansion must draw from the run's generator"
                assert kwargs["lam"] == 0.0
            elif label == "calibrate":
                events.append((label, len(args[1])))
            else:
                events.append((label,))
            return original(*args, **kwargs)

        monkeypatch.setattr(cycles_mod, name, spy)

    spies = {}
    wrap("reparameterize", "rep")
    wrap("unfold", "expand+restore")
    wrap("calibrate_bn", "calibrate")
    wrap("set_lambda", "lambda")
    wrap("train_steps", "train")
    seeds = []
    real_seed = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: (seeds.append(s), real_seed(s))[1])
    return events, spies, seeds


def test_algorithm1_step_order_paper(monkeypatch, splits):
    events, spies, seeds = _spy(monkeypatch)
    trainer = RepAnTrainer(tiny_cfg(cycles=2, epochs=2, k=2), splits)
    spies["generator"] = trainer.generator
    result = trainer.run()
    cycle = [("expand+restore", 2), ("calibrate", 2), ("lambda", 0.5), ("train",), ("lambda", 1.0), ("train",), ("rep",)]
    assert events == [("rep",)] + cycle + cycle  # line 2, then lines 4-11 twice
    assert seeds == [0], "the global RNG is seeded once (initialise), never per cycle"
    assert model_form(result.model) == "deploy"
    assert result.exactness["model_rel_error"] <= 1e-5
    assert [r["lam"] for r in result.history] == [0.5, 1.0, 0.5, 1.0]


def test_algorithm1_first_cycle_plain_and_baseline(monkeypatch, splits):
    events, spies, _ = _spy(monkeypatch)
    trainer = RepAnTrainer(tiny_cfg(first_cycle="plain", cycles=2, epochs=1), splits)
    spies["generator"] = trainer.generator
    trainer.run()
    assert events == [("train",), ("rep",), ("expand+restore", 1), ("calibrate", 2), ("lambda", 1.0), ("train",), ("rep",)]
    events.clear()
    result = RepAnTrainer(tiny_cfg(method="baseline", cycles=2, epochs=1), splits).run()
    assert events == [("train",), ("train",), ("rep",)]  # R·E epochs of one schedule, then fuse
    assert [r["cycle"] for r in result.history] == [1, 1]


def test_expand_restore_calibrate_keeps_the_fused_function(splits):
    trainer = RepAnTrainer(tiny_cfg(k=2, branches=("conv_kxk", "conv_1x1"), residual=True, calib_batches=3,
                                    branch_gamma=1.0), splits)
    model = trainer.initialise()
    randomize_bn(model, torch.Generator().manual_seed(5))
    trainer.rep(cycle=0, when="test")
    fused = trainer.eval_outputs()
    fresh_before = None
    trainer.expand_restore(1)
    block = rep_blocks(model)[1][1]
    assert block.branch_kinds == ["conv_kxk", "conv_kxk", "conv_1x1", "conv_1x1", "identity"]
    fresh_before = block.extras[0].bn.running_var.clone()
    record = trainer.calibrate(1, fused)
    after = trainer.eval_outputs()
    assert trainer.output_error(fused, after) <= 1e-5 and record["rel_error_vs_fused"] <= 1e-5
    assert not torch.equal(block.extras[0].bn.running_var, fresh_before), "calibration must actually run"
    assert record["images"] == 3 * 32
    trainer.set_lambda(0.37)  # λ>0 changes the function (Eq. 3), and Rep keeps λ in the fusion
    gated = trainer.eval_outputs()
    assert trainer.output_error(fused, gated) > 1e-3
    trainer.rep(cycle=1, when="test")
    assert trainer.output_error(gated, trainer.eval_outputs()) <= 1e-5


def test_expand_only_selected_blocks_and_arch_branches(splits):
    trainer = RepAnTrainer(tiny_cfg(expand_blocks=r"^stage\.0$", k=1, branches=("conv_kxk", "conv_1x1")), splits)
    model = trainer.initialise()
    trainer.rep(0, "test")
    trainer.expand_restore(1)
    kinds = {n: b.branch_kinds for n, b in rep_blocks(model)}
    assert kinds == {"stem": [], "stage.0": ["conv_kxk", "conv_1x1"], "stage.1": []}
    assert model_form(model) == "train"
    trainer = RepAnTrainer(tiny_cfg(branches=("arch",), k=1), splits)
    model = trainer.initialise()
    trainer.rep(0, "test")
    trainer.expand_restore(1)
    assert {n: b.branch_kinds for n, b in rep_blocks(model)} == {
        "stem": ["conv_1x1"], "stage.0": ["conv_1x1", "identity"], "stage.1": ["conv_1x1"]}


@pytest.mark.parametrize("bad_value", ["nan", "inf"])
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, splits, bad_value):
    cfg = tiny_cfg(method="baseline", cycles=1, epochs=3, model_kwargs={"nan_after": 3, "bad_value": bad_value})
    trainer = RepAnTrainer(cfg, splits, out=tmp_path, plot=False)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run()
    err = info.value
    assert (err.cycle, err.epoch, err.step) == (1, 2, 2)
    msg = str(err)
    assert "cycle 1, epoch 2/3, step 2" in msg and "lower --lr" in msg and "untouched" in msg
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_dir() == err.checkpoint == tmp_path / "checkpoints" / "ep0001"
    loaded = ckpt.load()
    assert loaded.state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in loaded.model_state.values() if v.is_floating_point())
    assert not (tmp_path / "deploy.safetensors").exists()


def test_a_finite_loss_that_leaves_non_finite_bn_statistics_stops_the_run_by_name(tmp_path, splits, monkeypatch):
    """Overflowing activations can leave BN running statistics at inf while the batch-normalised loss
    stays finite; the run then evaluated at chance and failed later in Rep with an error that blamed
    the fusion. It stops at the end of that epoch instead, naming the tensors, without saving it."""
    import repan_zoo.annealing.cycles as cycles

    real, calls = cycles.train_steps, []

    def overflowing(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return out

    monkeypatch.setattr(cycles, "train_steps", overflowing)
    cfg = tiny_cfg(method="baseline", cycles=1, epochs=3)
    trainer = RepAnTrainer(cfg, splits, out=tmp_path, plot=False)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run()
    msg = str(info.value)
    assert "running_var" in msg and "loss stayed finite" in msg and "cycle 1, epoch 2/3" in msg, msg
    assert "This epoch was not saved" in msg and "lower --lr" in msg
    assert Checkpointer(tmp_path).latest_dir() == info.value.checkpoint == tmp_path / "checkpoints" / "ep0001"


def test_a_blown_up_network_at_a_cycle_start_is_named_as_divergence_not_a_bug(splits):
    """A run whose loss stayed finite but whose outputs blew up (a too high --lr: logits ~1e28 were
    seen) cannot keep its function through Expand + Restore + Calibrate in fp32. That is reported
    as divergence with the fixes (was: 'calibration must keep the function. Report this'); a
    failure at sane output magnitudes is still the conversion's own error."""
    from repan_zoo.errors import ReparameterizationError

    trainer = RepAnTrainer(tiny_cfg(), splits)
    trainer.initialise()
    trainer.rep(cycle=0, when="test")
    outputs = trainer.eval_outputs()
    trainer.expand_restore(1)
    with pytest.raises(TrainingDivergedError, match=r"(?s)cycle 1.*outputs reach \d\.\d+e\+2\d.*lower --lr") as info:
        trainer.calibrate(1, [o * 1e25 + 1e25 for o in outputs])
    assert info.value.cycle == 1 and not isinstance(info.value, ReparameterizationError)
    with pytest.raises(ReparameterizationError, match="calibration must keep the function"):
        trainer.calibrate(1, [o + 1.0 for o in outputs])


def test_non_finite_evaluation_outputs_stop_the_run_as_divergence(tmp_path, splits, monkeypatch):
    """Activations that overflow in evaluation only (finite weights, finite training loss: a too high
    lr on a small image set was seen) gave a NaN validation loss that was logged and saved, and the
    run then failed at Rep with 'load the last good checkpoint' on every --resume. The epoch now
    stops as divergence, unsaved, naming the validation loss."""
    import repan_zoo.annealing.trainer as trainer_mod

    real, calls = trainer_mod.evaluate, []

    def overflowing(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return {**out, "loss": float("nan")} if len(calls) >= 3 else out  # epoch 2's validation

    monkeypatch.setattr(trainer_mod, "evaluate", overflowing)
    trainer = RepAnTrainer(tiny_cfg(method="baseline", cycles=1, epochs=3), splits, out=tmp_path, plot=False)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run()
    msg = str(info.value)
    assert "validation loss is nan" in msg and "cycle 1, epoch 2/3" in msg and "lower --lr" in msg, msg
    assert Checkpointer(tmp_path).latest_dir() == info.value.checkpoint == tmp_path / "checkpoints" / "ep0001"


def test_a_loss_that_failed_on_another_process_is_not_quoted_as_this_one(tmp_path, splits, monkeypatch):
    """Under DDP every process stops when any loss is non-finite; a process whose own loss was finite
    says the loss failed on another process instead of quoting its finite value as the divergence."""
    cfg = tiny_cfg(method="baseline", cycles=1, epochs=2)
    trainer = RepAnTrainer(cfg, splits, out=tmp_path, plot=False)
    monkeypatch.setattr(trainer.ctx, "any_true", lambda flag: True)  # another rank's loss is non-finite
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run()
    msg = str(info.value)
    assert "non-finite on another process" in msg and "step " in msg, msg
    assert not any(c.isdigit() for c in msg.split("the loss became ")[1].split(" at ")[0]), msg


def test_run_checkpoints_are_atomic_pairs_and_pruned(tmp_path, splits):
    cfg = tiny_cfg(cycles=1, epochs=3)
    RepAnTrainer(cfg, splits, out=tmp_path, plot=False, keep_checkpoints=2).run()
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert folders == ["ep0002", "ep0003"]
    state = Checkpointer(tmp_path).load().state  # torch.load(weights_only=True) inside
    assert set(state) >= {"progress", "optimizer", "rng", "history", "recipe"}
    assert isinstance(state["rng"]["generator"], torch.Tensor)
    assert not list((tmp_path / "checkpoints").glob("**/*.tmp"))


def test_a_resumed_kd_run_continues_the_saved_global_random_stream(tmp_path, splits, monkeypatch):
    """Building the KD teacher (timm's init draws from the global RNG) leaves the global RNG alone, so a
    resumed run's first training step sees the state saved with the checkpoint, as the uninterrupted
    run did (dropout / drop-path masks) — was: the teacher was built after the RNG was restored."""
    import timm

    teacher = timm.create_model("tinyrep_test", num_classes=10, in_chans=1)
    path = save_checkpoint(randomize_bn(teacher, torch.Generator().manual_seed(3)), tmp_path / "t.safetensors",
                           architecture="tinyrep_test")
    kd = dict(method="kd", cycles=1, teacher="tinyrep_test", teacher_checkpoint=str(path))
    out, cfg = tmp_path / "run", tiny_cfg(**kd, epochs=2)
    save = cycles_mod.CycleRun.save

    class Killed(Exception):
        pass

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise Killed  # the process ends right after epoch 1's checkpoint

    with monkeypatch.context() as m:
        m.setattr(cycles_mod.CycleRun, "save", save_then_die)
        with pytest.raises(Killed):
            RepAnTrainer(cfg, splits, out=out, plot=False).run()
    saved = Checkpointer(out).load().state["rng"]["torch"]
    seen = []
    original = cycles_mod.CycleRun.train_cycle

    def spy(self, *args, **kwargs):
        seen.append(torch.get_rng_state())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cycles_mod.CycleRun, "train_cycle", spy)
    RepAnTrainer(cfg, splits, out=out, plot=False).run(resume=True)
    assert len(seen) == 1 and torch.equal(seen[0], saved)


def test_a_deploy_file_that_fails_its_reload_check_is_never_the_runs_output(tmp_path, splits, monkeypatch):
    """deploy.safetensors appears only once reloading it reproduced the trained model; a file that did
    not is kept under a name that says so (the error names it), and no final.json claims it (was: the
    unchecked file stayed as deploy.safetensors)."""
    from repan_zoo.annealing import trainer as trainer_mod
    from repan_zoo.errors import CheckpointError

    monkeypatch.setattr(trainer_mod, "default_tolerance", lambda model: -1.0)
    with pytest.raises(CheckpointError, match=r"deploy\.unverified\.safetensors") as info:
        RepAnTrainer(tiny_cfg(method="baseline", cycles=1, epochs=1), splits, out=tmp_path, plot=False).run()
    assert "does not reproduce" in str(info.value)
    assert not (tmp_path / "deploy.safetensors").exists() and not (tmp_path / "final.json").exists()
    assert (tmp_path / "deploy.unverified.safetensors").is_file()


def _two_ranks(rank: int, failed_elsewhere: bool):
    """Rank ``rank`` of two processes whose reductions see a failure on the other process when
    ``failed_elsewhere``; a barrier is a hang (the test fails instead of waiting)."""
    from repan_zoo.runtime.distributed import DistContext

    class Ctx(DistContext):
        def all_sum(self, values):
            return [float(v) + (1.0 if failed_elsewhere else 0.0) for v in values]

        def barrier(self):
            raise AssertionError("waited at a barrier for a process that had stopped")

    return Ctx(rank=rank, world_size=2)


def test_a_failed_write_on_the_main_process_stops_every_process(tmp_path, splits):
    """Rank 0's checkpoint write fails (disk full): every process learns it from the next reduction and
    stops with an error naming it, instead of waiting at the barrier until the process group times out."""
    from repan_zoo.errors import CheckpointError

    calls = []
    ctx = _two_ranks(1, failed_elsewhere=True)
    with pytest.raises(CheckpointError, match=r"main process \(rank 0\) failed writing the checkpoint ep0001.*rank 1"):
        ctx.on_main(lambda: calls.append(1), "writing the checkpoint ep0001")
    assert calls == []  # only the main process writes
    main = _two_ranks(0, failed_elsewhere=False)
    with pytest.raises(OSError, match="No space left"):
        main.on_main(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")), "writing")
    assert main.on_main(lambda: 5, "writing") == 5

    trainer = RepAnTrainer(tiny_cfg(cycles=1, epochs=1), splits, out=tmp_path, plot=False, ctx=ctx)
    trainer.initialise()
    with pytest.raises(CheckpointError, match="rank 0"):
        trainer.save({"progress": {}}, tag="ep0001")


def test_train_steps_draws_no_batch_it_does_not_train_on():
    """With max_steps below the loader's length, exactly max_steps batches are drawn (each one costs
    loading and augmentation; was: one more, drawn and thrown away, every epoch)."""
    from repan_zoo.annealing.engine import train_steps
    from repan_zoo.runtime.distributed import DistContext

    drawn = []

    def batches():
        for i in range(10):
            drawn.append(i)
            yield torch.ones(2, 3)

    weight = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([weight], lr=0.1)
    steps, _ = train_steps(batches(), step_loss=lambda b: ((b * weight).sum() ** 2, {}), optimizer=opt,
                           ctx=DistContext(), lr_at=lambda s: 0.1, max_steps=3)
    assert steps == 3 and drawn == [0, 1, 2]


def test_sync_bn_conversion_keeps_function_and_fuses(splits):
    import copy

    trainer = RepAnTrainer(tiny_cfg(), splits)
    model = trainer.initialise()
    randomize_bn(model, torch.Generator().manual_seed(9))
    plain = copy.deepcopy(model)
    ref = trainer.eval_outputs()
    convert_sync_bn(model, torch.device("cpu"))
    assert sum(isinstance(m, CPUSyncBatchNorm) for m in model.modules()) == 7
    assert trainer.output_error(ref, trainer.eval_outputs()) == 0.0
    x = trainer.probe()[:16]
    # one process: the synchronised BN is BatchNorm2d (batch statistics, same running-stat update)
    assert torch.equal(model.train()(x), plain.train()(x))
    assert torch.equal(model.stem.trunk.bn.running_var, plain.stem.trunk.bn.running_var)
    trainer.rep(0, "test")  # fusion reads the synchronised BNs like any _BatchNorm
    assert model_form(model) == "deploy"


def test_bad_recipes_are_typed_errors():
    with pytest.raises(RecipeError, match="--method kd needs --teacher"):
        tiny_cfg(method="kd")
    with pytest.raises(RecipeError, match="baseline trains without a teacher"):
        tiny_cfg(method="baseline", teacher="tinyrep_test")
    with pytest.raises(RecipeError, match="restore"):
        tiny_cfg(restore="magic")
    with pytest.raises(RecipeError, match="unknown branch"):
        tiny_cfg(branches=("conv_9x9",))
    with pytest.raises(RecipeError, match="divisible"):
        from repan_zoo.runtime.distributed import DistContext

        RepAnTrainer(tiny_cfg(batch_size=33), synthetic_splits(), ctx=DistContext(world_size=2))


@pytest.mark.parametrize("kwargs, words", [
    (dict(epochs=3, warmup_epochs=3), r"--warmup-epochs 3 leaves no epoch of a 3-epoch cycle to anneal"),
    (dict(epochs=3, warmup_epochs=4), r"--warmup-epochs 4 leaves no epoch of a 3-epoch cycle"),
    (dict(method="repan", first_cycle="plain", epochs=2, warmup_epochs=2), r"2-epoch cycle"),
    (dict(min_lr=0.5, lr=0.1), r"--min-lr 0.5 is above --lr 0.1"),
    (dict(min_lr=0.05, lr=0.1, later_lr=0.01), r"--min-lr 0.05 is above --later-lr 0.01"),
])
def test_a_cycle_that_cannot_anneal_is_refused_by_the_python_api_too(kwargs, words):
    """A warmup as long as a cycle keeps every step at the peak LR (Rep then fuses an un-annealed
    network), a floor above a peak makes the cosine rise: TrainConfig refuses both, so RepAnTrainer's
    Python users get what repan-train's users get (was: only the command line checked, and only >)."""
    with pytest.raises(RecipeError, match=words):
        tiny_cfg(**kwargs)
    tiny_cfg(epochs=3, warmup_epochs=2)  # the longest warmup allowed: one epoch of cosine


def test_teacher_options_without_a_teacher_are_refused(tmp_path):
    """A teacher's weights or KD settings that no teacher would use (no --teacher, or a method that
    distils nothing) are a RecipeError naming them and the fix, not a run that silently trains
    without distillation; the teacher file's metadata supplies the --teacher to name."""
    import timm

    teacher = save_checkpoint(timm.create_model("tinyrep_test"), tmp_path / "teacher.safetensors")
    with pytest.raises(RecipeError, match=r"(?s)--teacher-checkpoint.*without --teacher.*--teacher tinyrep_test"):
        tiny_cfg(method="repan", teacher_checkpoint=str(teacher))
    with pytest.raises(RecipeError, match="--teacher-pretrained.*without --teacher"):
        tiny_cfg(method="repan", teacher_pretrained=True)
    with pytest.raises(RecipeError, match="(?s)baseline.*--teacher-checkpoint.*--method kd"):
        tiny_cfg(method="baseline", teacher_checkpoint=str(teacher))
    for field, value, flag in [("kd_alpha", 0.5, "--kd-alpha"), ("kd_T", 4.0, "--kd-T"),
                               ("teacher_kwargs", {"width": 2}, "--teacher-kwargs")]:
        with pytest.raises(RecipeError, match=f"{flag}.*without --teacher"):
            tiny_cfg(method="repan", **{field: value})
    tiny_cfg(method="repan", teacher="tinyrep_test", teacher_checkpoint=str(teacher), kd_alpha=0.5)  # all used
    with pytest.raises(RecipeError, match=r"unknown model 'nonsense_model' \(--teacher\)"):  # was: 'has no weights'
        tiny_cfg(method="kd", teacher="nonsense_model")


@pytest.mark.parametrize("field,value,flag", [
    ("wd", -1e-4, "--wd"), ("label_smoothing", 1.0, "--label-smoothing"), ("calib_batch_size", 1, "--calib-batch-size"),
    ("eval_batch_size", 0, "--eval-batch-size"), ("seed", -1, "--seed"), ("warmup_epochs", float("nan"), "--warmup-epochs"),
    ("min_lr", -0.1, "--min-lr"), ("clip_grad", 0.0, "--clip-grad"), ("later_lr", 0.0, "--later-lr"),
    ("train_subset", 1, "--train-subset"), ("cycles", 2.5, "--cycles"), ("momentum", 1.0, "--momentum"),
    ("batch_size", None, "--batch-size"), ("precise_bn", "2", "--precise-bn"), ("branch_gamma", -1.0, "--branch-gamma"),
    ("seed", 10 ** 400, "--seed"), ("lr", 10 ** 400, "--lr"),
])
def test_the_python_api_and_a_saved_recipe_check_each_option_like_the_command_line(field, value, flag):
    """Every range an option's command-line type enforces holds for TrainConfig too (the Python API,
    and ``recipe.json`` on --resume): a RecipeError naming the option and its range."""
    with pytest.raises(RecipeError, match=f"^{flag} "):
        tiny_cfg(**{field: value})
    tiny_cfg(train_subset=None, later_lr=None, clip_grad=None, seed=2 ** 32, label_smoothing=0.1)  # still accepted


def test_lambda_per_iteration_inside_the_epoch(monkeypatch, splits):
    events, spies, _ = _spy(monkeypatch)
    trainer = RepAnTrainer(tiny_cfg(cycles=1, epochs=2, lam_per_iter=True, lam_warmup=0.5, max_steps_per_epoch=2), splits)
    spies["generator"] = trainer.generator
    trainer.run()
    lams = [v for e, *v in events if e == "lambda"]
    # 4 steps, ramp over the first half: steps 1..4 → 0.5, 1, 1, 1; set before each change
    assert lams == [[0.5], [0.5], [1.0], [1.0], [1.0]]
    assert events.index(("lambda", 0.5)) < events.index(("train",))


def test_new_network_gets_data_bn_statistics_before_line2_and_precise_bn(splits):
    trainer = RepAnTrainer(tiny_cfg(calib_batches=2), splits)
    model = trainer.initialise()
    bn = model.stem.trunk.bn
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert [r["step"] for r in trainer.cycle_log] == ["initial_bn_statistics"]
    # eval ≈ train-mode function now (the network Rep fuses is the one that trains)
    x = trainer.probe()[:64]
    with torch.no_grad():
        ev, tr = model.eval()(x), model.train()(x)
    assert relative_error(tr, ev) < 0.2
    plain = RepAnTrainer(tiny_cfg(first_cycle="plain"), splits)
    m2 = plain.initialise()
    assert torch.equal(m2.stem.trunk.bn.running_var, torch.ones_like(m2.stem.trunk.bn.running_var))

    fused = {}
    for n in (0, 2):
        trainer = RepAnTrainer(tiny_cfg(precise_bn=n), splits)
        trainer.initialise()
        trainer.rep(0, "line 2: never precise BN")
        trainer.expand_restore(1)
        trainer.calibrate(1, None)
        trainer.rep(1, "end of cycle 1")
        fused[n] = trainer.model.stem.reparam_conv.weight.detach().clone()
        steps = [r["step"] for r in trainer.cycle_log]
        assert steps.count("precise_bn") == (1 if n else 0) and steps[-1] == "rep"
    assert not torch.allclose(fused[0], fused[2]), "precise BN re-estimates the statistics Rep fuses"


@pytest.mark.parametrize("name", ["checkpointing", "distributed", "report"])
def test_moved_run_modules_still_import_with_a_deprecation_warning(name):
    import importlib
    import sys

    sys.modules.pop(f"repan_zoo.annealing.{name}", None)
    with pytest.warns(DeprecationWarning, match=f"repan_zoo.runtime.{name}"):
        old = importlib.import_module(f"repan_zoo.annealing.{name}")
    new = importlib.import_module(f"repan_zoo.runtime.{name}")
    assert old.__all__ == new.__all__ and all(getattr(old, n) is getattr(new, n) for n in new.__all__)


@pytest.mark.parametrize("method", ["baseline", "repan"])
def test_a_run_from_deploy_weights_calibrates_the_restored_bns_before_it_trains(method, splits, tmp_path):
    """--init-checkpoint of deploy weights into a train-form model restores every fused conv into
    conv + BN with μ = 0, σ = 1 (no data seen): training mode would normalise with the batch
    statistics instead and start from another function (the shipped MobileOne-S0 weights: 42.7 %
    test top-1 in training mode as loaded, 92.7 % calibrated). Line 1 therefore ends with
    Calibrate (line 6) whenever no Expand follows at once (which calibrates itself): the eval
    function stays the deploy one and the train-mode function starts equal to it."""
    from repan_zoo import reparameterize

    source = RepAnTrainer(tiny_cfg(method="baseline"), splits).initialise()
    randomize_bn(source, torch.Generator().manual_seed(3))
    deploy = reparameterize(source.eval())
    ckpt = tmp_path / "deploy.safetensors"
    save_checkpoint(deploy, ckpt)
    x = RepAnTrainer(tiny_cfg(method="baseline"), splits).probe()[:64]
    with torch.no_grad():
        want = deploy(x)

    first = "plain" if method == "repan" else "expand"  # baseline never expands
    trainer = RepAnTrainer(tiny_cfg(method=method, first_cycle=first, init_checkpoint=str(ckpt), calib_batches=3),
                           splits)
    model = trainer.initialise()
    assert model_form(model) == "train"
    assert [(r["step"], r["images"]) for r in trainer.cycle_log] == [("calibrate_restored", 3 * 32)]
    assert trainer.cycle_log[0]["rel_error_vs_fused"] <= 1e-5  # checked like line 6's Calibrate
    assert uncalibrated_blocks(model) == []
    with torch.no_grad():
        ev, tr = model.eval()(x), model.train()(x)
    assert relative_error(ev, want) <= 1e-5
    assert relative_error(tr, ev) < 0.05, "train mode starts from the same function (0.33 uncalibrated)"

    expanding = RepAnTrainer(tiny_cfg(method="repan", first_cycle="expand", init_checkpoint=str(ckpt)), splits)
    expanding.initialise()
    assert expanding.cycle_log == []  # its first cycle's own Rep → Expand + Restore → Calibrate follows

    train_ckpt = tmp_path / "train.safetensors"  # a train-form checkpoint brings its statistics along
    save_checkpoint(source, train_ckpt)
    resumed = RepAnTrainer(tiny_cfg(method=method, first_cycle=first, init_checkpoint=str(train_ckpt)), splits)
    assert uncalibrated_blocks(resumed.initialise()) == [] and resumed.cycle_log == []


def test_evaluate_counts_no_image_with_non_finite_logits_as_correct():
    """torch.argmax takes NaN for the maximum: an image whose logits are NaN at its label's index
    would count as correct. Non-finite logits are wrong, and the loss says NaN."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from repan_zoo.annealing.engine import evaluate
    from repan_zoo.runtime.distributed import DistContext

    class Logits(nn.Module):
        def forward(self, x):  # image i's logits are row i of x (N×1×1×4 → N×4)
            return x.flatten(1)

    nan = float("nan")
    images = torch.tensor([[0.0, 1.0, 0.0, 0.0], [nan, 0.0, 0.0, 0.0], [0.0, 0.0, float("inf"), 0.0],
                           [0.0, 0.0, 0.0, 1.0]]).view(4, 1, 1, 4)
    labels = torch.tensor([1, 0, 2, 0])
    out = evaluate(Logits(), DataLoader(TensorDataset(images, labels), batch_size=2), normalize=nn.Identity(),
                   ctx=DistContext())
    assert out["top1"] == 25.0 and out["n"] == 4  # only image 0: 1 NaN, 1 inf, 1 wrong
    assert out["loss"] != out["loss"]  # NaN

"""The oneDNN strided-1×1 backward bug (uxlfoundation/oneDNN#6035) and the guard the trainer applies.

The bug corrupts the heap, so each reproduction runs in its own interpreter: a crash is a failed
exit status there, not a dead test process."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from torch import nn

from repan_zoo.runtime.onednn import at_risk, guard_strided_1x1

PLUGIN = textwrap.dedent("""
    import torch
    from repan_zoo.datasets import DatasetArrays, register_dataset

    @register_dataset('toy_rgb')
    def read(data_dir, *, img_size):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (160,), generator=g)
        x = (torch.randint(0, 60, (160, 3, 16, 16), generator=g) + 60 * y.view(-1, 1, 1, 1)).to(torch.uint8)
        return DatasetArrays(train_labels=y[:128], test_labels=y[128:], train_images=x[:128], test_images=x[128:])
""")


def _python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("model,method", [("repan_repvgg_a0", "repan"), ("repan_mobileone_s0_w050", "baseline")])
def test_channels_last_training_of_an_rgb_rep_stem_on_cpu_does_not_corrupt_the_heap(tmp_path, model, method):
    """``repan train --channels-last`` on a CPU with 3-channel images: the stride-2 stem's 1×1 branch
    is the convolution oneDNN computes out of bounds (before the guard: SIGSEGV or a glibc abort).
    RepAn cycles rebuild the convolutions (Rep, Expand): the guard follows them."""
    plugin = tmp_path / "toy_rgb_set.py"
    plugin.write_text(PLUGIN)
    args = ["--import", str(plugin), "--dataset", "toy_rgb", "--model", model, "--method", method,
            "--cycles", "2", "--epochs", "1", "--max-steps-per-epoch", "4", "--val-size", "32", "--batch-size", "32", "--lr", "0.01",
            "--channels-last", "--threads", "1", "--device", "cpu", "--no-plot", "--no-progress",
            "--out", str(tmp_path / "run")]
    done = _python(f"import sys; from repan_zoo.train_cli import main; sys.exit(main({args!r}))")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "run" / "deploy.safetensors").is_file()


@pytest.mark.parametrize("cin", [3, 1])
def test_guarded_conv_computes_the_nchw_gradients_from_channels_last(cin):
    """A guarded at-risk convolution in a channels-last model gives the NCHW gradients (its own
    process: without the guard this very computation crashes). One channel too: a 1-channel batch
    made channels-last by ``x.to(memory_format=torch.channels_last)`` has strides (HW, 1, W, 1), which
    oneDNN takes as nhwc (SIGABRT ``corrupted size vs. prev_size`` unguarded); only one made by
    ``.contiguous(memory_format=...)`` keeps the NCHW strides and passes."""
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from repan_zoo.runtime.onednn import guard_strided_1x1
        torch.manual_seed(0)
        cin = CIN
        ref = nn.Sequential(nn.Conv2d(cin, 16, 1, 2, bias=False), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 3, 1, 1))
        cl = nn.Sequential(nn.Conv2d(cin, 16, 1, 2, bias=False), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 3, 1, 1))
        cl.load_state_dict(ref.state_dict())
        assert guard_strided_1x1(cl) == ['0'] and guard_strided_1x1(cl) == ['0']  # idempotent
        cl = cl.to(memory_format=torch.channels_last)
        x = torch.randn(32, cin, 28, 28)
        for _ in range(3):
            for net, inp in ((ref, x), (cl, x.to(memory_format=torch.channels_last))):
                net.zero_grad()
                net(inp).square().mean().backward()
            err = (cl[0].weight.grad - ref[0].weight.grad).norm() / ref[0].weight.grad.norm()
            assert err < 1e-5, err
        assert cl[2].weight.is_contiguous(memory_format=torch.channels_last)  # the rest stays NHWC
        print('ok')
    """).replace("CIN", str(cin))
    done = _python(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout[-2000:] + done.stderr[-2000:]


def test_at_risk_is_the_dense_strided_1x1_of_few_channels():
    assert at_risk(nn.Conv2d(3, 16, 1, 2))
    assert at_risk(nn.Conv2d(1, 16, 1, 2))  # one channel: nhwc to oneDNN when its strides are (HW, 1, W, 1)
    assert not at_risk(nn.Conv2d(16, 32, 1, 2))  # a whole channel block
    assert not at_risk(nn.Conv2d(3, 16, 1, 1))  # unit stride: no reduce-to-unit-stride workspace
    assert not at_risk(nn.Conv2d(3, 16, 3, 2, 1))
    assert not at_risk(nn.Conv2d(8, 8, 1, 2, groups=8))  # depthwise: another kernel


def test_the_guard_keeps_an_exported_model_free_of_hooks():
    """The guard is a training-time hook of the trainer's module: the deploy checkpoint it writes
    carries weights only, and a model built from it has no hook."""
    import timm
    import repan_zoo  # noqa: F401  (registers the models)

    model = timm.create_model("repan_repvgg_a0", in_chans=3, num_classes=4)
    names = guard_strided_1x1(model)
    assert names and all(n.startswith("stem") for n in names)
    fresh = timm.create_model("repan_repvgg_a0", in_chans=3, num_classes=4)
    fresh.load_state_dict(model.state_dict())
    assert not any(m._forward_pre_hooks for m in fresh.modules())

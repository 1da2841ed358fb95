"""repan_zoo.export: fused exports that prove themselves, and refuse half-fused graphs (issue 10, point 5).

Failure designed out: "exported ONNX files still held the unfused branches".
"""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn as nn

import repan_zoo
import repan_zoo.models  # noqa: F401  (registers the repan_* models with timm)
import repan_zoo.export as export_mod
from repan_zoo.blocks import RepBlock
from repan_zoo.checkpoint import model_form
from repan_zoo.errors import ExportError
from repan_zoo.export import export_onnx, export_torchscript, unfused_modules
from repan_zoo.verify import relative_error

from helpers import make_input, randomize, same_state, single_thread, snapshot, TinyNet, training_flags  # noqa: F401 (single_thread: fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


def _onnx_ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _no_leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


@pytest.fixture
def net() -> TinyNet:
    """Train-form TinyNet with random BN statistics, some submodules left in train mode."""
    m = randomize(TinyNet(), seed=3)
    m.body[2].train()  # a mixed train/eval tree: the export must not change any flag
    return m


def test_onnx_export_matches_onnxruntime_and_leaves_caller_untouched(net, tmp_path):
    before, flags = snapshot(net), training_flags(net)
    path = tmp_path / "tiny.onnx"
    report = export_onnx(net, path, input_size=(3, 9, 9))

    # the caller's model: bit-identical, still train form, same train/eval flags
    assert same_state(before, snapshot(net)) and training_flags(net) == flags
    assert model_form(net) == "train" and all(not b.deploy for b in net.modules() if isinstance(b, RepBlock))

    assert report["path"] == str(path) and path.is_file() and _no_leftovers(tmp_path)
    assert report["exporter"].startswith("torch.export") and report["opset"] >= 17
    assert report["input_shape"] == [2, 3, 9, 9] and report["dynamic_batch"]
    assert report["max_rel_error"] <= TOL and report["max_rel_error_vs_source"] <= TOL
    # the fused graph: one conv per Rep block + the plain stem/head convs, no BatchNorm left
    ops = _onnx_ops(path)
    assert ops.count("Conv") == report["conv_nodes"] == 2 + 4
    assert "BatchNormalization" not in ops and report["batchnorm_nodes"] == 0

    # independent check on a batch size the export never saw (dynamic batch axis)
    x = make_input(channels=3, size=9, batch=5, seed=21)
    with torch.no_grad():
        ref = repan_zoo.reparameterize(net).eval()(x)
    assert relative_error(ref, _ort(path, x)) <= TOL


def test_legacy_onnx_exporter_also_checked(net, tmp_path):
    report = export_onnx(net, tmp_path / "legacy.onnx", input_size=(3, 9, 9), dynamo=False, opset=17)
    assert report["exporter"].startswith("torchscript-based") and report["opset"] == 17
    assert report["max_rel_error"] <= TOL and report["conv_nodes"] == 6


@pytest.mark.parametrize("name", ["repan_repvgg_a0", "repan_mobileone_s0"])
def test_registered_models_pass_onnxruntime_comparison(name, tmp_path):
    if name not in timm.list_models("repan_*"):
        pytest.skip(f"{name} is not registered yet")
    model = randomize(timm.create_model(name, num_classes=10), seed=5)
    x = make_input(channels=3, size=64, batch=1, seed=2)
    report = export_onnx(model, tmp_path / f"{name}.onnx", example_input=x)
    print(name, {k: report[k] for k in ("max_rel_error", "max_rel_error_vs_source", "opset", "conv_nodes")})
    assert report["max_rel_error"] <= TOL and report["max_rel_error_vs_source"] <= TOL
    assert report["input_shape"] == [1, 3, 64, 64]
    blocks = [m for m in model.modules() if isinstance(m, RepBlock)]
    assert report["conv_nodes"] >= len(blocks)
    assert "BatchNormalization" not in _onnx_ops(tmp_path / f"{name}.onnx")


def test_export_refuses_block_whose_fusion_did_nothing(net, tmp_path, monkeypatch):
    """A Rep block that stays multi-branch after reparameterize (here: a fusion that does nothing)."""
    monkeypatch.setattr(RepBlock, "reparameterize", lambda self: None)
    path = tmp_path / "half.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(net, path, input_size=(3, 9, 9))
    message = str(info.value)
    print("refusal:", message)
    assert message.startswith("refusing to export a half-fused graph: 4 module(s)")
    assert "body.0: RepBlock in train form with 3 branches ['conv_kxk', 'conv_1x1', 'identity']" in message
    assert info.value.modules == ["body.0", "body.2", "body.4", "extra.rep"]
    assert not path.exists() and _no_leftovers(tmp_path)


class ForeignRepBlock(nn.Module):
    """A third-party multi-branch block with its own (broken) fusion hook: 3×3+BN ∥ 1×1+BN."""

    def __init__(self, ch):
        super().__init__()
        self.conv3, self.bn3 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 1, bias=False), nn.BatchNorm2d(ch)

    def reparameterize(self):  # forgets to fuse
        pass

    def forward(self, x):
        return self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))


def test_export_refuses_foreign_unfused_block(tmp_path):
    model = randomize(nn.Sequential(RepBlock(3, 4, 3, branches=("conv_1x1",)), nn.ReLU(), ForeignRepBlock(4)), seed=1)
    for fn, name in ((export_onnx, "m.onnx"), (export_torchscript, "m.pt")):
        with pytest.raises(ExportError, match=r"2: ForeignRepBlock offers reparameterize\(\) but still holds BatchNorm"):
            fn(model, tmp_path / name, input_size=(3, 8, 8))
        assert not (tmp_path / name).exists()
    # a plain conv + BN (no fusion hook) is not a branch: TinyNet's stem and head pass (see above)
    assert unfused_modules(repan_zoo.reparameterize(randomize(TinyNet(), seed=1))) == []


def test_graph_check_catches_an_export_that_kept_the_branches(net, tmp_path, monkeypatch):
    """If the exporter ever captured the multi-branch model (same outputs!), the file is refused."""
    real_export = torch.onnx.export

    def export_train_form(_model, args, f, **kwargs):
        return real_export(net.eval(), args, f, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_train_form)
    path = tmp_path / "branches.onnx"
    with pytest.raises(ExportError, match=r"holds \d+ convolution\(s\).*fused model runs 6 convolution"):
        export_onnx(net, path, input_size=(3, 9, 9), dynamo=False)
    assert not path.exists() and _no_leftovers(tmp_path)


def test_export_fails_when_the_file_differs_from_torch(net, tmp_path, monkeypatch):
    real_run = export_mod._run_onnx

    def off_by_a_little(path, inputs):
        return [[o + 1e-3 * o.abs().max() for o in outs] for outs in real_run(path, inputs)]

    monkeypatch.setattr(export_mod, "_run_onnx", off_by_a_little)
    old = tmp_path / "model.onnx"
    old.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="onnxruntime differs from torch beyond fp32 rounding") as info:
        export_onnx(net, old, input_size=(3, 9, 9), dynamo=False)
    assert info.value.rel_error > TOL
    assert old.read_bytes() == b"previous export" and _no_leftovers(tmp_path)  # atomic: nothing replaced


def test_torchscript_round_trip(net, tmp_path):
    before = snapshot(net)
    path = tmp_path / "tiny.pt"
    report = export_torchscript(net, path, input_size=(3, 9, 9))
    assert same_state(before, snapshot(net)) and model_form(net) == "train"
    assert report["format"] == "torchscript" and report["max_rel_error_vs_source"] <= TOL
    assert report["conv_nodes"] == 6 and report["batchnorm_nodes"] == 2  # stem + head BN stay (not Rep blocks)
    with pytest.warns(FutureWarning):  # torch marks TorchScript deprecated; the file still loads
        loaded = torch.jit.load(str(path))
    x = make_input(channels=3, size=9, batch=3, seed=8)
    with torch.no_grad():
        ref = repan_zoo.reparameterize(net).eval()(x)
        assert relative_error(ref, loaded(x)) <= TOL


def test_already_deployed_model_exports(net, tmp_path):
    deployed = repan_zoo.reparameterize(net)
    report = export_torchscript(deployed, tmp_path / "d.pt", example_input=make_input(3, 9, 2, seed=4))
    assert report["max_rel_error"] == 0.0 or report["max_rel_error"] <= TOL


@pytest.mark.parametrize("wrap", ["DataParallel", "ModelEmaV3", "compile"])
def test_a_wrapped_model_exports_as_the_model_it_wraps(net, tmp_path, wrap):
    """DataParallel / timm's ModelEmaV3 / torch.compile wrappers, which reparameterize and unfold
    take, are exported as the model inside (as save_checkpoint saves them; was: torch's own
    export errors, 'DataParallel is not supported')."""
    from timm.utils import ModelEmaV3

    wrapped = {"DataParallel": lambda m: nn.DataParallel(m), "ModelEmaV3": lambda m: ModelEmaV3(m, decay=0.9),
               "compile": lambda m: torch.compile(m)}[wrap](net)
    x = make_input(3, 9, 2, seed=4)
    report = export_onnx(wrapped, tmp_path / "w.onnx", example_input=x)
    assert report["max_rel_error"] <= TOL
    inner = wrapped.module if wrap == "ModelEmaV3" else net
    with torch.no_grad():
        assert relative_error(inner.eval()(x), _ort(tmp_path / "w.onnx", x)) <= TOL


def test_a_bfloat16_model_is_refused_by_onnx_export_before_any_work(net, tmp_path, monkeypatch):
    """ONNX Runtime has no bfloat16 convolution: the export says so and names the fix before fusing
    (was: onnxruntime's 'Type tensor(bfloat16) ... of operator (Conv) is invalid' after the export)."""
    monkeypatch.setattr(export_mod, "_Prepared", lambda *a, **k: pytest.fail("fused before the check"))
    with pytest.raises(ExportError, match=r"torch\.bfloat16.*ONNX Runtime.*model\.float\(\)"):
        export_onnx(net.to(torch.bfloat16), tmp_path / "bf.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_named(net, tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(net, tmp_path / "x.onnx", input_size=(9, 9))
    with pytest.raises(repan_zoo.NoRepBlocksError):
        export_onnx(nn.Sequential(nn.Conv2d(3, 3, 3)), tmp_path / "x.onnx", input_size=(3, 8, 8))
    assert not (tmp_path / "x.onnx").exists()


def test_a_fusion_certified_in_float64_exports(tmp_path):
    """A model whose fp32 fusion differs from its train form above 1e-5 only by fp32 rounding
    (reparameterize accepts it by the float64 rule) exports: the file is checked against the fused
    copy at the tolerance, and against the original within what the fusion certified (was: refused,
    blaming the opset / exporter, for a file identical to the fused model)."""
    torch.manual_seed(4)
    model = timm.create_model("repan_mobileone_s4", in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    certified = repan_zoo.reparameterize(model, example_input=x).repan_exactness
    assert certified["model_rel_error"] > TOL and certified["float64"]["model"]["exact"] <= TOL  # the case
    report = export_torchscript(model, tmp_path / "s4.pt", x)
    assert report["max_rel_error"] <= TOL
    assert report["max_rel_error_vs_source"] <= certified["model_rel_error"] + TOL

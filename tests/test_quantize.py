"""repan_zoo.quantize: INT8 through torchao's PT2E flow, self-checked against fp32 (issue 18).

Failures designed out: "MobileOne-S0's INT8 outputs were wrong" (a constant channel read by a 1×1
conv with huge weights: :func:`fold_constant_channels`), an INT8 model shipped without a check
(a broken calibration is refused), a missing torchao without a hint, an unchecked artefact.
"""
from __future__ import annotations

import io
import sys
import zipfile
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from repan_zoo.blocks import RepBlock
from repan_zoo.errors import MissingExtraError, QuantizationError
from repan_zoo.verify import relative_error

from helpers import randomize, single_thread  # noqa: F401 (single_thread: fixture)

import torchao  # noqa: F401,E402  (the quant extra is part of the test extra: a missing torchao fails here)
from repan_zoo import quantize as q  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


class TinyClassifier(nn.Module):
    """Train-form Rep classifier: two 3×3 Rep blocks (+1×1 branches), global pool, linear head."""

    def __init__(self, in_ch: int = 3, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = RepBlock(in_ch, width, 3, 2, branches=("conv_1x1",))
        self.body = RepBlock(width, 2 * width, 3, 2, branches=("conv_1x1",))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


class DeadChannelNet(nn.Module):
    """Deploy-form miniature of the MobileOne-S0 case: stem channel 0 is dead (always < 0 before
    its ReLU), so the depthwise conv outputs its bias there, a constant that the 1×1 conv reads
    with weights of 500 balanced by its bias."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)
        with torch.no_grad():
            for m in (self.stem, self.dw, self.pw, self.head):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            self.stem.weight[0] = 0
            self.stem.bias[0] = -1.0  # dead: relu(-1) = 0 for every input
            self.dw.weight[0] = 4000.0  # the fused kernel of a BN with ~zero variance; it only sees zeros
            self.dw.bias[0] = 0.9144
            self.pw.weight[:, 0] = 500.0
            self.pw.bias.sub_(500.0 * 0.9144)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def _batches(n=4, batch=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return randomize(TinyClassifier(), seed=3).eval()


def test_tiny_model_passes_its_own_check(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    int8 = q.quantize(tiny, _batches(), probe=_batches(1, 32, seed=9)[0], compile=False)
    c = int8.check
    assert c["passed"] and c["top1_agreement"] >= q.DEFAULT_MIN_AGREEMENT and c["rel_error"] <= q.DEFAULT_MAX_REL_ERROR
    assert c["rel_error"] > 0  # it really is quantized
    assert c["calibration_images"] == 32 and c["probe_images"] == 32 and c["compiled"] is False
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # the caller's model untouched
    out = int8(_batches(1, 3, seed=5)[0])  # dynamic batch
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    ops = {str(n.target) for n in int8.graph.graph.nodes}
    assert any("quantize_per_tensor" in o for o in ops) and any("dequantize_per_channel" in o for o in ops)


def test_broken_calibration_is_refused(tiny):
    """Observers that saw only a sliver of the real range (inputs ×0.01): the probe saturates."""
    broken = [b * 0.01 for b in _batches()]
    with pytest.raises(QuantizationError, match="disagrees with the fp32 model") as err:
        q.quantize(tiny, broken, probe=_batches(1, 32, seed=9)[0], compile=False)
    assert err.value.check["passed"] is False and err.value.check["rel_error"] > q.DEFAULT_MAX_REL_ERROR


def test_bad_calibration_batches_are_refused(tiny):
    with pytest.raises(QuantizationError, match="calibration batch 0 holds torch.uint8 values"):
        q.quantize(tiny, [torch.zeros(4, 3, 16, 16, dtype=torch.uint8)], compile=False)
    with pytest.raises(QuantizationError, match="at least 2"):
        q.quantize(tiny, [torch.zeros(1, 3, 16, 16)], compile=False)
    with pytest.raises(ValueError, match="backend"):
        q.quantize(tiny, _batches(), backend="arm", compile=False)


def test_calibration_takes_the_batch_forms_calibrate_bn_takes(tiny):
    """Tensors, (images, labels) pairs and Hugging Face ``pixel_values`` dicts, as calibrate_bn;
    other forms are named with the forms that work."""
    batches = _batches()
    forms = dict(probe=batches[0], compile=False, min_agreement=0.0)  # the forms are the subject: one of 8
    program = q.quantize(tiny, [{"pixel_values": b} for b in batches], **forms)  # probe images may flip
    again = q.quantize(tiny, [(b, torch.zeros(len(b))) for b in batches], **forms)
    assert torch.equal(program(batches[0]), again(batches[0]))
    with pytest.raises(QuantizationError, match=r"calibration batch 0 is a dict with keys \['image'\].*pixel_values"):
        q.quantize(tiny, [{"image": batches[0]}], compile=False)
    with pytest.raises(QuantizationError, match=r"calibration batch 1 has shape \(3, 16, 16\).*unsqueeze\(0\)"):
        q.quantize(tiny, [batches[0], batches[1][0]], compile=False)


def test_a_wrapped_model_is_quantized_as_the_model_it_wraps(tiny):
    """nn.DataParallel / torch.compile wrappers are quantized as the model inside (was: torch export errors)."""
    plain = q.quantize(tiny, _batches(), probe=_batches(1, 32, seed=9)[0], compile=False)
    for wrapped in (nn.DataParallel(tiny), torch.compile(tiny)):
        int8 = q.quantize(wrapped, _batches(), probe=_batches(1, 32, seed=9)[0], compile=False)
        assert torch.equal(int8(_batches(1, 4, seed=5)[0]), plain(_batches(1, 4, seed=5)[0]))


@pytest.mark.parametrize("batches, probe, words", [
    ([torch.randn(4, 1, 16, 16)] * 2, None, r"does not run on the calibration images \(1×16×16\)"),
    ([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 20, 20)], None, r"batch 1 holds 3×20×20 images.*batch 0's are 3×16×16"),
    (_batches(), torch.randn(3, 16, 16), r"probe has shape \(3, 16, 16\).*N×3×16×16"),
    (_batches(), torch.randn(4, 3, 20, 20), r"probe has shape \(4, 3, 20, 20\).*N×3×16×16"),
], ids=["wrong-channels", "mixed-sizes", "3d-probe", "other-size-probe"])
def test_calibration_and_probe_the_model_cannot_take_are_named_before_quantizing(tiny, batches, probe, words):
    """Images of another channel count or size, and a probe of another shape, are QuantizationErrors
    naming the shapes, raised before any quantization (was: PyTorch's conv / cat / matmul errors)."""
    with pytest.raises(QuantizationError, match=words):
        q.quantize(tiny, batches, probe=probe, compile=False)


@pytest.mark.parametrize("kwargs, words", [
    (dict(min_agreement=2), r"min_agreement=2"), (dict(max_rel_error=0.0), r"max_rel_error=0.0"),
    (dict(min_agreement=float("nan")), r"min_agreement=nan"),
])
def test_self_check_thresholds_out_of_range_are_refused_before_quantizing(tiny, kwargs, words):
    with pytest.raises(ValueError, match=words):
        q.quantize(tiny, _batches(), compile=False, **kwargs)


class _Unfused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def reparameterize(self):  # a fusion hook nobody called
        pass

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def test_multi_branch_model_is_refused_by_name():
    with pytest.raises(QuantizationError, match=r"multi-branch.*block: _Unfused offers reparameterize"):
        q.quantize(nn.Sequential(OrderedDict(block=_Unfused())), _batches(), compile=False)


def test_reused_module_is_a_clear_error():
    """torchao's annotator cannot partition one nn.ReLU called at two places: say so, and the fix."""
    import tinyrep_models

    shared_relu = tinyrep_models.TinyRep(in_chans=3).eval()
    with pytest.raises(QuantizationError, match="its own module"):
        q.quantize(shared_relu, _batches(), compile=False)


def test_missing_extra_names_it(monkeypatch, tiny):
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao...` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"repan-zoo\[quant\]"):
        q.quantize(tiny, _batches(), compile=False)


def test_constant_channel_fold_is_exact_and_fixes_int8():
    """The MobileOne-S0 cause in miniature: without the fold INT8 is refused, with it it passes."""
    net = DeadChannelNet().eval()
    calib, probe = _batches(), _batches(1, 32, seed=9)[0]
    with torch.no_grad():
        ref = net(probe)
    folded_net = DeadChannelNet().eval()
    record = q.fold_constant_channels(folded_net, calib)
    assert [(r["layer"], r["into"], r["channels"]) for r in record] == [("dw", "pw", [0])]
    assert record[0]["max_abs_weight_removed"] == 500.0
    with torch.no_grad():
        assert relative_error(ref, folded_net(probe)) < 1e-5
    assert folded_net.pw.weight[:, 0].abs().max() == 0 and folded_net.dw.weight[0].abs().max() == 0
    with pytest.raises(QuantizationError):
        q.quantize(net, calib, probe=probe, fold_constants=False, compile=False)
    ok = q.quantize(net, calib, probe=probe, compile=False)
    assert ok.check["passed"] and ok.check["folded"][0]["channels"] == [0]


def test_fold_is_judged_against_float64_not_against_fp32_rounding(monkeypatch):
    """A model whose fp32 evaluation itself rounds far above 1e-4 (cancelling weights of 5e7 on
    a constant channel: the fitted MobileOne-S0 pattern, magnified) is folded, because the fold
    is compared with the float64 model, not with fp32's rounding; a fold that really changes the
    model (every channel folded, as if constant) is refused and names the way out."""
    net = DeadChannelNet().eval()
    with torch.no_grad():
        net.pw.weight[:, 0] = 5e7
        net.pw.bias.copy_(torch.randn(8, generator=torch.Generator().manual_seed(1)) * 0.1 - 5e7 * 0.9144)
    calib, probe = _batches(), _batches(1, 32, seed=9)[0]
    ok = q.quantize(net, calib, probe=probe, compile=False, min_agreement=0.0, max_rel_error=float("inf"))
    c = ok.check
    assert c["fp32_rel_error"] > 1e-4 and c["fold_rel_error"] < c["fp32_rel_error"] and c["folded"][0]["channels"] == [0]

    fold = q.core.fold_constant_channels
    monkeypatch.setattr(q.core, "fold_constant_channels", lambda m, b: fold(m, b, rtol=10.0))  # folds varying channels
    with pytest.raises(QuantizationError, match="folding constant channels / equalizing activations changed the fp32 model.*fold_constants=False, equalize=None"):
        q.quantize(DeadChannelNet().eval(), calib, probe=probe, compile=False)


class WideRangeNet(nn.Module):
    """Deploy-form chain whose stem channel 0 outputs ~1000× the range of the others (a fused BN
    with a tiny variance does this), undone by the depthwise conv reading it: exact in fp32, but
    one per-tensor uint8 scale for the stem's output rounds the other seven channels to zero."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            for m in (self.stem, self.dw, self.pw, self.conv, self.head):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            self.stem.weight[0] *= 1000
            self.stem.bias[0] *= 1000
            self.dw.weight[0] /= 1000

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))))
        return self.head(x.mean((2, 3)))


def test_equalize_activations_is_exact_and_fixes_a_wide_range_channel():
    calib, probe = _batches(), _batches(1, 32, seed=9)[0]
    net = WideRangeNet().eval()
    with torch.no_grad():
        ref = net(probe)
    eq = WideRangeNet().eval()
    records = q.equalize_activations(eq, calib)
    assert [(r["layer"], r["into"], r["kind"]) for r in records] == [
        ("stem", "dw", "depthwise"), ("dw", "pw", "pointwise"), ("pw", "conv", "dense")]
    assert records[0]["spread_before"] > 100 and records[0]["spread_after"] == pytest.approx(1.0)  # depthwise: full
    assert all(r["spread_after"] < r["spread_before"] for r in records)
    with torch.no_grad():
        assert relative_error(ref, eq(probe)) < 1e-5
    with pytest.raises(QuantizationError, match="disagrees") as refused:
        q.quantize(net, calib, probe=probe, equalize=None, compile=False)
    assert refused.value.check["equalize_alpha"] is None
    # layer_errors locates it: the stem's own output is fine, the depthwise conv reading its
    # quantized output is where the signal is lost
    bad = q.quantize(net, calib, probe=probe, equalize=None, compile=False, min_agreement=0.0, max_rel_error=9.0)
    layers = {r["layer"]: r["sqnr_db"] for r in q.layer_errors(bad, probe)}
    assert list(layers) == ["stem", "dw", "pw", "conv", "head"]
    assert layers["stem"] > 30 and layers["dw"] < 10
    ok = q.quantize(net, calib, probe=probe, compile=False, equalize=0.5)
    assert ok.check["passed"] and ok.check["equalize_alpha"] == 0.5 and len(ok.check["equalized"]) == 3
    assert "equalize_trials" not in ok.check  # a given strength is used as it is
    assert min(r["sqnr_db"] for r in q.layer_errors(ok, probe)) > 20
    with pytest.raises(ValueError, match=r"alpha=1.5.*\[0, 1\]"):
        q.equalize_activations(WideRangeNet().eval(), calib, alpha=1.5)


def test_fp32_modules_stay_unquantized(tiny):
    """The remedy of keeping named layers in fp32: their convs take fp32 weights (no int8 kernel),
    the check records them, and an unknown name is refused with the names to use."""
    calib, probe = _batches(), _batches(1, 32, seed=9)[0]
    int8 = q.quantize(tiny, calib, probe=probe, compile=False, fp32_modules=["stem", "head"])
    assert int8.check["fp32_modules"] == ["stem", "head"] and int8.check["passed"]
    full = q.quantize(tiny, calib, probe=probe, compile=False)

    def int8_kernels(m):  # the converted graph names its constants _frozen_paramN: count them by shape
        return sorted(tuple(t.shape) for t in m.graph.state_dict().values() if t.dtype == torch.int8)

    assert int8_kernels(full) == [(8, 3, 3, 3), (10, 16), (16, 8, 3, 3)]  # stem, head, body
    assert int8_kernels(int8) == [(16, 8, 3, 3)]  # body only
    with pytest.raises(QuantizationError, match=r"fp32_modules names no submodule.*\['stme'\].*named_modules"):
        q.quantize(tiny, calib, fp32_modules=["stme"], compile=False)


def test_export_round_trip(tmp_path, tiny):
    path = tmp_path / "tiny.pt2"
    probe = _batches(1, 16, seed=9)[0]
    report = q.export_int8(tiny, path, _batches(), probe=probe)
    assert path.is_file() and report["bytes"] == path.stat().st_size and report["check"]["passed"]
    assert report["file_vs_memory_rel_error"] <= 1e-5
    loaded = q.load_int8(path, sha256=report["sha256"])
    weights = dict(loaded.state_dict())
    assert "stem.reparam_conv.weight" not in weights  # the fp32 kernels are not shipped beside the INT8 ones
    assert [t.dtype for t in weights.values() if t.dim() == 4] == [torch.int8, torch.int8]
    x = _batches(1, 3, seed=4)[0]
    with torch.no_grad():
        fp32 = tiny(x)
        assert q.agreement(fp32, loaded(x))["rel_error"] < q.DEFAULT_MAX_REL_ERROR
    with pytest.raises(QuantizationError, match="sha256"):
        q.load_int8(path, sha256="0" * 64)
    # a refused export leaves nothing behind
    bad = tmp_path / "bad.pt2"
    with pytest.raises(QuantizationError):
        q.export_int8(tiny, bad, [b * 0.01 for b in _batches()], probe=probe)
    assert not bad.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny.pt2"]


def test_load_refuses_non_archives_and_pickles(tmp_path):
    plain = tmp_path / "x.pt2"
    plain.write_bytes(b"not a zip")
    with pytest.raises(QuantizationError, match="not a torch.export archive"):
        q.load_int8(plain)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/data/constants/custom_obj_0", b"\x80\x04N.")
    pickled = tmp_path / "p.pt2"
    pickled.write_bytes(buf.getvalue())
    with pytest.raises(QuantizationError, match="pickled payloads"):
        q.load_int8(pickled)
    with pytest.raises(FileNotFoundError, match="repan export"):
        q.load_int8(tmp_path / "missing.pt2")
    for sha in (123, "abc", "g" * 64):  # was: AttributeError: 'int' object has no attribute 'lower'
        with pytest.raises(ValueError, match="64 hex digits"):
            q.load_int8(plain, sha256=sha)


def test_export_int8_names_a_bad_path_or_a_one_image_probe_before_quantizing(tmp_path, tiny, monkeypatch):
    """A folder in the way of the file, or a probe of one image (the program's batch axis is dynamic
    only from 2), is refused before the quantization runs (was: after it, from torch.export)."""
    monkeypatch.setattr(sys.modules["repan_zoo.quantize.program"], "quantize",
                        lambda *a, **k: pytest.fail("quantized before the check"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError):
        q.export_int8(tiny, tmp_path / "a_file" / "m.pt2", _batches())
    with pytest.raises(QuantizationError, match="probe .* at least 2 images"):
        q.export_int8(tiny, tmp_path / "m.pt2", _batches(), probe=torch.randn(1, 3, 16, 16))


@pytest.mark.slow
def test_compiled_int8_matches_eager_int8(tiny):
    """torch.compile with inductor freezing (the fast path) once, on the tiny model."""
    calib, probe = _batches(), _batches(1, 16, seed=9)[0]
    compiled = q.quantize(tiny, calib, probe=probe)
    assert compiled.check["compiled"] and compiled.check["passed"]
    eager = q.quantize(tiny, calib, probe=probe, compile=False)
    assert q.agreement(eager(probe), compiled(probe))["rel_error"] < 0.05


@pytest.mark.slow
def test_cli_export_int8(tmp_path, capsys):
    """`repan export --int8` on real Fashion-MNIST training images (skipped without the dataset)."""
    from repan_zoo.data import FASHION_MNIST_DIR
    if not any(FASHION_MNIST_DIR.glob("train-images-idx3-ubyte*")):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from repan_zoo.cli import main

    out = tmp_path / "tiny.pt2"
    # an untrained model's logits are nearly tied, so its INT8 top-1 agreement is a draw of its random init
    # (0.64 < 0.9 in about one of ten unseeded runs): a fixed init (agreement 1.000; seed 0 gives 0.922, near the
    # 0.9 bar) makes this a test of the CLI, not of luck
    torch.manual_seed(1)
    rc = main(["export", "repan_repvgg_a0_w025", "--input-size", "1", "28", "28", "--num-classes", "10", "--int8",
               "--out", str(out), "--calib-batches", "2", "--calib-batch-size", "32", "--probe-images", "64"])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0 and out.is_file(), text + captured.err
    assert "64 held-out images" in text and "calibrated on 64 training images" in text
    assert captured.err.count("warning: no --pretrained or --checkpoint") == 1 and "weights random init" in text
    assert q.load_int8(out)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cli_names_the_missing_extra(monkeypatch, tmp_path, capsys):
    from repan_zoo.cli import main

    monkeypatch.setattr(q.core, "_torchao", lambda: (_ for _ in ()).throw(MissingExtraError("needs repan-zoo[quant]")))
    monkeypatch.setattr(q, "calibration_data", lambda *a, **k: {"calibration": _batches(1, 4), "probe": _batches(1, 4)[0],
                                                                 "split": {}})
    rc = main(["export", "repan_repvgg_a0_w025", "--input-size", "3", "16", "16", "--int8", "--out", str(tmp_path / "x.pt2")])
    assert rc == 2 and "repan-zoo[quant]" in capsys.readouterr().err
    assert not (tmp_path / "x.pt2").exists()


class PlainNet(nn.Module):
    """conv → ReLU → conv → pool → linear with even channel ranges: nothing for equalization to fix."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem, self.conv, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)
        with torch.no_grad():
            for m in (self.stem, self.conv, self.head):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3)))


@pytest.mark.parametrize("net,kept", [(WideRangeNet, 0.5), (PlainNet, None)], ids=["wide_range", "plain"])
def test_equalize_auto_keeps_the_strength_closer_to_fp32_on_the_probe(net, kept):
    """The default ``equalize="auto"`` quantizes each candidate and keeps the one with the lowest probe error:
    equalized where one channel's range would swamp the others, off where equalizing only adds error (the
    shipped RepVGG-A1 0.25× lost 0.9 test points to α = 0.5); the kept model is the one that strength gives."""
    calib, probe = _batches(), _batches(1, 32, seed=9)[0]
    model = net().eval()
    auto = q.quantize(model, calib, probe=probe, compile=False, min_agreement=0.0, max_rel_error=9.0)
    trials = auto.check["equalize_trials"]
    assert auto.check["equalize"] == "auto" and [t["equalize_alpha"] for t in trials] == list(q.EQUALIZE_CANDIDATES)
    best = min(trials, key=lambda t: t["rel_error"])
    assert auto.check["equalize_alpha"] == best["equalize_alpha"] == kept
    assert max(t["rel_error"] for t in trials) > best["rel_error"]
    fixed = q.quantize(model, calib, probe=probe, compile=False, equalize=kept, min_agreement=0.0, max_rel_error=9.0)
    assert auto.check["rel_error"] == pytest.approx(best["rel_error"]) == pytest.approx(fixed.check["rel_error"])
    assert len(auto.check["equalized"]) == len(fixed.check["equalized"]) and (not auto.check["equalized"]) == (kept is None)
    with pytest.raises(ValueError, match="equalize='best'.*'auto'"):
        q.quantize(model, calib, probe=probe, compile=False, equalize="best")


def test_cli_int8_options_parse_and_reach_export(monkeypatch, tmp_path, capsys):
    """`repan export --int8 --equalize none --fp32-module NAME` reaches export_int8; a strength outside [0, 1] is refused."""
    from repan_zoo.cli import build_parser, main

    args = build_parser().parse_args(["export", "m", "--int8", "--out", "x.pt2", "--equalize", "none",
                                      "--fp32-module", "stem", "--fp32-module", "head"])
    assert args.equalize is None and args.fp32_modules == ["stem", "head"]
    assert build_parser().parse_args(["export", "m", "--int8", "--out", "x.pt2"]).equalize == "auto"
    assert build_parser().parse_args(["export", "m", "--int8", "--out", "x.pt2", "--equalize", "AUTO"]).equalize == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "m", "--int8", "--out", "x.pt2", "--equalize", "1.5"])
    assert "--equalize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "m", "--int8", "--out", "x.pt2", "--equalize", "best"])
    assert "or 'auto'" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(q, "calibration_data", lambda *a, **k: {"calibration": _batches(1, 4), "probe": _batches(1, 4)[0],
                                                                 "split": {}})
    monkeypatch.setattr(q, "export_int8", lambda *a, **k: seen.update(k) or (_ for _ in ()).throw(QuantizationError("stop")))
    rc = main(["export", "repan_repvgg_a0_w025", "--input-size", "3", "16", "16", "--int8", "--out", str(tmp_path / "x.pt2"),
               "--equalize", "0.25", "--fp32-module", "stem"])
    assert rc != 0 and seen["equalize"] == 0.25 and seen["fp32_modules"] == ["stem"]

"""repan_zoo.detection: torchvision detectors on RepAn backbones, unfold → fine-tune → reparameterize.

Tiny everywhere: 64×64 images, 0.25× backbones, 16-channel FPN, one CPU thread.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import repan_zoo
from helpers import same_state, snapshot, training_flags
from repan_zoo.checkpoint import model_form
from repan_zoo.detection import (
    CocoDetectionSet,
    DetectorConfig,
    build_detector,
    check_feature_strides,
    compare_detectors,
    detections_match,
    export_detector,
    load_coco_json,
    load_detector,
    make_fmnist_detection,
    match_detections,
    measure_strides,
    probe_images,
    unfold_backbone,
)
from repan_zoo.detection.cli import main as finetune_main
from repan_zoo.detection.fmnist import CanvasSpec
from repan_zoo.errors import CocoFormatError, DatasetNotFoundError, FeatureStrideError

SIDE = 64
#: the first three levels of repan_repvgg_a0_w025 (strides 2, 4, 8; 7 Rep blocks deep): exactness tests
#: compare whole FPN maps, and over the default 21 blocks of a random network the fp32 forward alone
#: drifts ~6e-6 from float64, so two fp32 evaluations already differ by ~1e-5 (the whole-net bound).
SHALLOW = [0, 1, 2]
TINY = CanvasSpec(canvas=SIDE, min_items=1, max_items=3, min_side=14, max_side=30)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_detector(detector: str = "fasterrcnn", backbone: str = "repan_repvgg_a0_w025", **kwargs) -> nn.Module:
    cfg = DetectorConfig(detector=detector, backbone=backbone, num_classes=4, min_size=SIDE, max_size=SIDE,
                         fpn_channels=16, representation_size=32, score_thresh=kwargs.pop("score_thresh", 0.05),
                         **kwargs)
    torch.manual_seed(0)
    return build_detector(cfg)


@torch.no_grad()
def settle(detector: nn.Module, seed: int = 3) -> nn.Module:
    """Non-trivial, well-conditioned BN: running statistics estimated from images (so the random
    network's features stay in range and it makes detections), γ ~ U(0.5, 1.5), β ~ N(0, 0.2²).
    Returns the detector in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in detector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average of the batch below
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
    detector.train()
    batch, _ = detector.transform(probe_images(detector, 4, seed=seed))
    detector.backbone(batch.tensors)
    for bn in bns:
        bn.momentum = 0.1
    return detector.eval()


@torch.no_grad()
def spread_heads(detector: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal weights, zero biases for every conv / linear outside the backbone. torchvision's
    detection-head init (N(0, 0.01²), prior bias) makes the scores of an untrained detector all
    ≈ 0.01, equal to 1e-6: every top-k cut is then a near-tie. Spread scores make a detection
    comparison meaningful."""
    gen = torch.Generator().manual_seed(seed)
    for name, module in detector.named_modules():
        if not name.startswith("backbone") and isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.zero_()
    return detector


@pytest.fixture(scope="module")
def fmnist_arrays():
    from repan_zoo.data import load_fashion_mnist

    return load_fashion_mnist()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory, fmnist_arrays) -> Path:
    root = tmp_path_factory.mktemp("fmnist_det")
    make_fmnist_detection(root, num_train=8, num_val=4, seed=5, spec=TINY, arrays=fmnist_arrays)
    return root


# -- building, forward / backward ------------------------------------------------------------------


@pytest.mark.parametrize("detector,backbone,kwargs", [
    ("retinanet", "repan_repvgg_a0_w025", {}),
    ("fasterrcnn", "repan_resnet18_dbb_w025", {}),
    ("retinanet", "repan_mobileone_s0", {"width_mult": 0.25, "in_chans": 1}),
])
def test_detector_forward_backward(detector, backbone, kwargs):
    model = tiny_detector(detector, backbone, model_kwargs=kwargs).train()
    images = probe_images(model, 2)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 50.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    expected = {"classification", "bbox_regression"} if detector == "retinanet" else \
        {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    blocks = repan_zoo.rep_blocks(model)
    assert blocks and all(name.startswith("backbone.body.") for name, _ in blocks)
    grads = [p.grad for _, b in blocks for p in b.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # the detection loss reaches the Rep blocks
    strides = model.backbone.strides
    assert all(b == 2 * a for a, b in zip(strides, strides[1:]))
    assert model.pretrained_cfg["input_size"][0] == model.backbone.in_chans


def test_export_detector_names_bad_probe_images_and_paths_before_fusing(tmp_path, monkeypatch):
    """Probe images that are no images of the detector's input (none, 1 channel for a 3-channel
    detector, a batch tensor, integers) and a folder in the way of the file are refused by name
    before the detector is fused (was: a TorchScript interpreter trace, or 'batch_size=0 must be
    >= 1' naming an argument the caller never passed)."""
    from repan_zoo.detection import export as det_export

    model = tiny_detector("retinanet")
    c = model.pretrained_cfg["input_size"][0]
    monkeypatch.setattr(det_export, "_deploy_copy", lambda detector: pytest.fail("fused before the check"))
    for images, words in [([], "at least one image"),
                          ([torch.rand(c + 1, SIDE, SIDE)], rf"image 0 has {c + 1} channel.*takes {c}"),
                          (torch.rand(2, c, SIDE, SIDE), "a list of"),
                          ([torch.rand(c, SIDE)], r"image 0 has shape \(\d+, \d+\); an image is \[C, H, W\]"),
                          ([torch.randint(0, 255, (c, SIDE, SIDE), dtype=torch.uint8)], r"torch.uint8.*float.*\[0, 1\]")]:
        for part in ("full", "dense"):
            with pytest.raises(ValueError, match=words):
                det_export.export_detector(model, tmp_path / "d.pt", part=part, images=images)
    with pytest.raises(IsADirectoryError):
        det_export.export_detector(model, tmp_path, images=[torch.rand(c, SIDE, SIDE)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_classes="5"), r"num_classes='5': expected an integer ≥ 2"),
    (dict(num_classes=1), r"num_classes=1: must be ≥ 2.*background"),
    (dict(score_thresh=2.0), r"score_thresh=2.0: must be ≥ 0 and ≤ 1"),
    (dict(fpn_channels=0), r"fpn_channels=0: must be ≥ 1"),
    (dict(anchor_scale=float("nan")), r"anchor_scale=nan"),
])
def test_detector_config_numbers_are_checked_by_name(kwargs, words):
    """Each numeric field with the command line's rule (was: "'<' not supported between str and int")."""
    with pytest.raises(ValueError, match=words):
        DetectorConfig(**kwargs)


def test_feature_stride_errors():
    assert check_feature_strides([4, 8, 16]) == [4, 8, 16]
    with pytest.raises(FeatureStrideError, match="at least 2"):
        check_feature_strides([8])
    with pytest.raises(FeatureStrideError, match="does not increase"):
        check_feature_strides([4, 4, 8])
    with pytest.raises(FeatureStrideError, match="skips a level"):
        check_feature_strides([4, 16])
    with pytest.raises(FeatureStrideError, match="not a power of two"):
        check_feature_strides([3, 6, 12])
    with pytest.raises(FeatureStrideError, match="out_indices=\\(3,\\)"):  # one level from the registry
        tiny_detector("retinanet", out_indices=[3])
    with pytest.raises(FeatureStrideError, match="does not increase"):
        tiny_detector("fasterrcnn", out_indices=[2, 1])
    for bad in ([7, 8, 9], [1, 4]):  # levels the backbone does not have (was: a bare IndexError from timm)
        with pytest.raises(FeatureStrideError, match=r"out of range for 4 feature levels"):
            tiny_detector("retinanet", out_indices=bad)
    # feature_info that lies about a level's reduction is caught on a real forward
    model = tiny_detector("retinanet")
    body = model.backbone.body
    assert measure_strides(body, 1) == [4, 8, 16]
    level = body.feature_info.info[body.feature_info.out_indices[1]]
    level["reduction"] = 16
    with pytest.raises(FeatureStrideError, match="declares reduction 16"):
        measure_strides(body, 1)


# -- reparameterize the whole detector in one call -------------------------------------------------


def test_reparameterize_fasterrcnn_in_one_call():
    """Issue 10: a FasterRCNN on a features_only repan backbone, fused by one call; the original
    is unchanged; features and detections of the fused detector match the unfolded one's."""
    # low score threshold and no detection cap: the comparison is not decided by a top-k cut
    deployed = tiny_detector("fasterrcnn", score_thresh=0.001, detections_per_img=1000,
                             model_kwargs={"deploy": True}, out_indices=SHALLOW)
    unfolded = unfold_backbone(deployed, ("conv_kxk", "conv_1x1"), residual=True,
                               generator=torch.Generator().manual_seed(1))
    assert model_form(deployed) == "deploy" and model_form(unfolded) == "train"
    repan_zoo.set_lambda(unfolded, 0.7)  # expanded branches active (Eq. 3), so the fusion includes λ
    settle(unfolded)
    unfolded.backbone.fpn.train()  # a mixed train/eval tree: every flag must survive the call
    before, flags = snapshot(unfolded), training_flags(unfolded)
    images = probe_images(unfolded, 3, seed=9)

    fused = repan_zoo.reparameterize(unfolded)

    assert same_state(before, snapshot(unfolded)) and training_flags(unfolded) == flags
    assert model_form(unfolded) == "train" and model_form(fused) == "deploy"
    fused_flags = training_flags(fused)
    assert all(fused_flags[name] == flag for name, flag in flags.items() if name in fused_flags)
    assert fused.backbone.fpn.training and not fused.backbone.body.training
    assert fused.repan_exactness["model_rel_error"] <= 1e-5  # FPN features of the probe, see verify.capture
    report = compare_detectors(unfolded, fused, images)
    assert report["detections"] > 0  # a real comparison, not one of empty outputs
    # fp32: FPN maps within the unfolded detector's own fp32 rounding (vs float64) and the same
    # detections, up to a near-tie at NMS going the other way (≤ 1 %)
    assert detections_match(report, max_flips=0.01), report
    # float64: the fusion is exact to 1e-10, and so are the detections (no near-ties at this precision)
    exact = copy.deepcopy(unfolded).double()
    exact_report = compare_detectors(exact, repan_zoo.reparameterize(exact), [img.double() for img in images],
                                     match_tol=1e-9)
    assert exact_report["feature_rel_error"] <= 1e-10 and exact_report["detections"] == report["detections"]
    assert exact_report["count_diff"] == 0 and exact_report["unmatched"] == 0
    assert exact_report["box_rel_error"] <= 1e-10 and exact_report["score_abs_error"] <= 1e-10
    # everything outside the Rep blocks is bit-identical
    fused_state = fused.state_dict()
    for key, value in before.items():
        if not key.startswith("backbone.body."):
            assert torch.equal(fused_state[key], value), key


def test_match_detections_tolerates_nms_order_only():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    ref = [{"boxes": boxes, "scores": torch.tensor([0.5, 0.5]), "labels": torch.tensor([1, 2])}]
    swapped = [{"boxes": boxes.flip(0), "scores": torch.tensor([0.5, 0.5]), "labels": torch.tensor([2, 1])}]
    assert match_detections(ref, swapped)["box_rel_error"] == 0.0
    nudged = [{"boxes": boxes + 2e-4, "scores": torch.tensor([0.5, 0.5]), "labels": torch.tensor([1, 2])}]
    assert match_detections(ref, nudged)["box_rel_error"] == pytest.approx(1e-5, rel=1e-2)
    moved = [{"boxes": boxes + 1.0, "scores": torch.tensor([0.5, 0.5]), "labels": torch.tensor([1, 2])}]
    assert match_detections(ref, moved)["unmatched"] == 2  # another box is no partner, whatever the order
    relabeled = [{"boxes": boxes, "scores": torch.tensor([0.5, 0.5]), "labels": torch.tensor([1, 1])}]
    assert match_detections(ref, relabeled)["unmatched"] == 1


# -- export -----------------------------------------------------------------------------------------


@pytest.mark.extras  # pycocotools / onnx
def test_export_torchscript_and_onnx(tmp_path):
    model = spread_heads(settle(tiny_detector("retinanet", score_thresh=0.5, out_indices=SHALLOW)))
    unfolded = unfold_backbone(model, generator=torch.Generator().manual_seed(2))
    repan_zoo.set_lambda(unfolded, 1.0)
    settle(unfolded, seed=4)
    images = probe_images(unfolded, 2, seed=5)
    before = snapshot(unfolded)

    ts = export_detector(unfolded, tmp_path / "det.pt", fmt="torchscript", images=images)
    onnx_report = export_detector(unfolded, tmp_path / "det.onnx", fmt="onnx", images=images)
    assert same_state(before, snapshot(unfolded)) and model_form(unfolded) == "train"
    for report in (ts, onnx_report):
        assert report["vs_source"]["detections"] > 0
        assert detections_match(report["vs_deploy"], max_flips=0.01)
        assert detections_match(report["vs_source"], max_flips=0.01)
    assert ts["vs_deploy"]["feature_rel_error"] == 0.0 and ts["vs_deploy"]["unmatched"] == 0  # same ops, same numbers
    assert onnx_report["conv_nodes"] > 0

    # the files themselves, loaded independently, give the unfolded detector's detections
    loaded = torch.jit.load(str(tmp_path / "det.pt"))
    _, scripted = loaded(images)
    with torch.no_grad():
        expected = unfolded(images)
    got = match_detections(expected, scripted)
    assert got["detections"] > 0 and got["unmatched"] + got["count_diff"] <= 0.01 * got["detections"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    keys = [o.name for o in session.get_outputs()]
    outs = [dict(zip(keys, map(torch.from_numpy, session.run(None, {"image": img.numpy()})))) for img in images]
    got = match_detections(expected, outs)
    assert got["unmatched"] + got["count_diff"] <= 0.01 * got["detections"]


@pytest.mark.extras  # pycocotools / onnx
def test_export_dense_part_onnx(tmp_path):
    """Backbone + FPN + RPN head up to raw outputs, through repan_zoo.export (onnxruntime-checked)."""
    model = settle(tiny_detector("fasterrcnn"))
    report = export_detector(model, tmp_path / "dense.onnx", fmt="onnx", part="dense")
    dense = report["dense"]
    assert dense["max_rel_error"] <= 1e-5 and dense["batchnorm_nodes"] == 0
    assert (tmp_path / "dense.onnx").is_file()


# -- data -------------------------------------------------------------------------------------------


@pytest.mark.extras  # pycocotools / onnx
def test_fmnist_set_is_deterministic_and_valid(tmp_path, tiny_set, fmnist_arrays):
    again = tmp_path / "again"
    make_fmnist_detection(again, num_train=8, num_val=4, seed=5, spec=TINY, arrays=fmnist_arrays, splits=("val",))
    assert (again / "val" / "instances.json").read_bytes() == (tiny_set / "val" / "instances.json").read_bytes()
    for png in sorted((tiny_set / "val" / "images").iterdir()):
        assert (again / "val" / "images" / png.name).read_bytes() == png.read_bytes()
    data = load_coco_json(tiny_set / "train" / "instances.json")
    assert len(data["images"]) == 8 and len(data["categories"]) == 10 and data["annotations"]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SIDE and y + h <= SIDE and w > 0 and h > 0

    ds = CocoDetectionSet(tiny_set / "train" / "images", tiny_set / "train" / "instances.json", in_chans=1)
    image, target = ds[0]
    assert image.shape == (1, SIDE, SIDE) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
    xyxy = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns])
    assert torch.equal(target["boxes"], xyxy)
    assert target["labels"].tolist() == [ds.categories.label(a["category_id"]) for a in anns]


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_invalid_coco_files_raise_clear_errors(tmp_path):
    good = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    load_coco_json(_write(tmp_path / "good.json", good))

    cases = {
        "syntax.json": ('{"images": [', "line 1"),
        "noann.json": ({k: v for k, v in good.items() if k != "annotations"}, "annotations"),
        "bbox.json": ({**good, "annotations": [{**good["annotations"][0], "bbox": [0, 0, 4]}]}, "annotations[0].bbox"),
        "image.json": ({**good, "annotations": [{**good["annotations"][0], "image_id": 7}]}, "annotations[0].image_id"),
        "width.json": ({**good, "images": [{**good["images"][0], "width": "8"}]}, "images[0].width"),
        "toplevel.json": ([1, 2], "the top level"),
    }
    for name, (content, field) in cases.items():
        path = _write(tmp_path / name, content)
        with pytest.raises(CocoFormatError) as info:
            load_coco_json(path)
        assert info.value.path == str(path) and info.value.field == field
        assert str(path) in str(info.value) and field in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="a.png"):  # valid file, image missing on disk
        CocoDetectionSet(tmp_path, tmp_path / "good.json")
    (tmp_path / "a.png").write_bytes(b"")
    crowd_only = {**good, "annotations": [{**good["annotations"][0], "iscrowd": 1}]}
    for name, content in (("nobox.json", {**good, "annotations": []}), ("crowd.json", crowd_only)):
        with pytest.raises(CocoFormatError, match="holds no box") as info:  # was: trained on nothing, mAP 0.0
            CocoDetectionSet(tmp_path, _write(tmp_path / name, content))
        assert info.value.field == "annotations"
    (tmp_path / "a.png").unlink()
    # the fine-tuning script reports it, names the file, and exits with status 2
    (tmp_path / "imgs").mkdir()
    bad = str(tmp_path / "bbox.json")
    status = finetune_main(["--train-images", str(tmp_path / "imgs"), "--train-annotations", bad,
                            "--val-images", str(tmp_path / "imgs"), "--val-annotations", bad,
                            "--out", str(tmp_path / "run"), "--no-progress"])
    assert status == 2


# -- the fine-tuning script end to end -----------------------------------------------------------


def _finetune(tiny_set: Path, out: Path, *extra: str) -> int:
    return finetune_main([
        "--data-root", str(tiny_set), "--out", str(out), "--detector", "retinanet",
        "--backbone", "repan_repvgg_a0_w025", "--fpn-channels", "16", "--batch-size", "4",
        "--max-steps-per-epoch", "2", "--calib-batches", "1", "--calib-batch-size", "4", "--warmup-steps", "1",
        "--lr", "0.001", "--no-progress", "--threads", "1", *extra,
    ])


@pytest.mark.extras  # pycocotools / onnx
def test_finetune_script_end_to_end_and_resume(tmp_path, tiny_set):
    # a deploy-form backbone checkpoint, as repan-train writes it
    import timm

    from repan_zoo.checkpoint import save_checkpoint

    classifier = timm.create_model("repan_repvgg_a0_w025", deploy=True)
    ckpt = save_checkpoint(classifier, tmp_path / "backbone.safetensors", architecture="repan_repvgg_a0_w025")

    out = tmp_path / "run"
    args = ("--backbone-checkpoint", str(ckpt), "--unfold", "--cycles", "2", "--epochs", "1")
    assert _finetune(tiny_set, out, *args) == 0
    final = json.loads((out / "final.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["cycle"], r["epoch"]) for r in metrics] == [(1, 1), (2, 1)]
    assert all(0.0 <= r["val_mAP"] <= 1.0 for r in metrics)
    assert final["exactness"]["detections_match"] and final["reload_check"]["ok"]
    assert final["exactness"]["reparameterize"]["model_rel_error"] <= 1e-5
    assert final["val_deploy"]["mAP"] == pytest.approx(final["val_train_form"]["mAP"], abs=1e-3)
    steps = [(c["cycle"], c["step"]) for c in final["cycles"]]  # the shared driver's log (annealing.cycles)
    assert steps == [(1, "expand_restore"), (1, "calibrate"), (1, "rep"), (2, "expand_restore"), (2, "calibrate")]
    calibrations = [c for c in final["cycles"] if c["step"] == "calibrate"]
    # cycle 1 calibrates too: the deploy checkpoint has no BN statistics (restored μ = 0, σ = 1)
    assert calibrations[0]["images"] > 0 and calibrations[1]["images"] > 0
    assert all(c["rel_error_vs_fused"] <= 1e-5 for c in calibrations)  # Rep → Expand → Restore → Calibrate keeps the function
    deployed, meta = load_detector(str(out / "deploy.safetensors"))
    assert model_form(deployed) == "deploy" and meta["form"] == "deploy"

    # resume: point the run back at its first epoch and continue; the result is the same run
    pointer = out / "checkpoints" / "latest.json"
    info = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**info, "dir": "ep0001"}))
    from repan_zoo.checkpoint import read_checkpoint

    first_state, first_meta = read_checkpoint(out / "deploy.safetensors")
    stale = out / "checkpoints" / ".latest.json.k1ll3d.tmp"  # what a write killed mid-way leaves
    stale.write_text("{")
    assert _finetune(tiny_set, out, *args, "--resume") == 0
    assert not stale.exists()
    state, meta = read_checkpoint(out / "deploy.safetensors")
    assert same_state(first_state, state)  # bit-identical weights: the resumed run is the same run
    assert meta["metrics"] == first_meta["metrics"]
    assert len(json.loads((out / "metrics.json").read_text())) == 2

    # a --resume refused for another detector changes nothing in the run directory
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _finetune(tiny_set, out, *args, "--resume", "--fpn-channels", "24") == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


@pytest.mark.extras  # pycocotools
def test_a_detector_that_fails_its_reload_check_is_never_the_runs_output(tmp_path, tiny_set, monkeypatch, capsys):
    """As repan-train's: deploy.safetensors only once reloading it reproduced the detections."""
    from repan_zoo.detection import finetune

    real = finetune.detections_match
    monkeypatch.setattr(finetune, "detections_match",
                        lambda report, **kw: False if kw.get("tolerance") == 0.0 else real(report, **kw))
    out = tmp_path / "run"
    assert _finetune(tiny_set, out, "--cycles", "1", "--epochs", "1") != 0
    assert "deploy.unverified.safetensors" in capsys.readouterr().err
    assert not (out / "deploy.safetensors").exists() and not (out / "final.json").exists()
    assert (out / "deploy.unverified.safetensors").is_file()


@pytest.mark.extras  # pycocotools
def test_finetune_resume_without_a_run_is_refused_and_leaves_no_folder(tmp_path, tiny_set, capsys):
    out = tmp_path / "never_started"
    assert _finetune(tiny_set, out, "--resume") != 0
    assert "without --resume" in capsys.readouterr().err
    assert not out.exists()  # nothing made: the same command without --resume starts cleanly
    out.mkdir()  # a folder the user made is kept
    assert _finetune(tiny_set, out, "--resume") != 0
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize("field,value,flag", [("lr", 0.0, "--lr"), ("cycles", 0, "--cycles"), ("min_lr", -1.0, "--min-lr"),
                                              ("score_thresh", 2.0, "--score-thresh"), ("eval_every", 0, "--eval-every")])
def test_a_finetune_config_built_in_python_checks_each_option_like_the_command_line(tmp_path, field, value, flag):
    from repan_zoo.detection.config import FinetuneConfig
    from repan_zoo.errors import RecipeError

    paths = dict(out=str(tmp_path), train_images="a", train_annotations="a.json", val_images="b",
                 val_annotations="b.json")
    FinetuneConfig(**paths).check()
    with pytest.raises(RecipeError, match=f"^{flag} "):
        FinetuneConfig(**paths, **{field: value}).check()


@pytest.mark.extras  # pycocotools
@pytest.mark.parametrize("with_detections", [True, False])
def test_coco_map_reports_figures_cocoeval_cannot_define_as_none(with_detections):
    """Only small objects (area < 32²): mAP_medium / mAP_large and their recalls are undefined
    (COCOeval's -1), not 0 — with detections and without any."""
    from pycocotools.coco import COCO

    from repan_zoo.detection.evaluate import COCO_STATS, coco_map

    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 64, "height": 64} for i in (1, 2)],
                  "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20],
                                   "area": 400.0, "iscrowd": 0} for i in (1, 2)],
                  "categories": [{"id": 1, "name": "item"}]}
    gt.createIndex()
    results = [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9}] if with_detections else []
    metrics = coco_map(gt, results)
    undefined = {"mAP_medium", "mAP_large", "AR_medium", "AR_large"}
    assert {name for name in COCO_STATS if metrics[name] is None} == undefined
    assert all(0.0 <= metrics[name] <= 1.0 for name in COCO_STATS if name not in undefined)
    assert (metrics["mAP"] > 0.0) == with_detections

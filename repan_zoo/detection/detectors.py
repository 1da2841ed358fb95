"""torchvision ``RetinaNet`` and ``FasterRCNN`` on any ``repan_*`` backbone, from one config.

:class:`DetectorConfig` is plain data (JSON round-trip), so a run directory, a checkpoint's
metadata or a benchmark can rebuild the same detector; :func:`build_detector` builds it.

Anchors follow the pyramid: at a level of stride ``s`` the base size is ``anchor_scale · s``
(RetinaNet: three octave scales ``2^{0, 1/3, 2/3}`` of it, as in the RetinaNet paper;
Faster R-CNN: one), with aspect ratios 0.5, 1, 2. RetinaNet adds P6/P7 above the body's
last level, Faster R-CNN the max-pooled "pool" level (RPN only); RoI pooling uses the
body's levels.

The detector carries ``pretrained_cfg`` (``architecture``, ``input_size`` = ``(C, H, W)``,
``mean``, ``std``) so that :func:`repan_zoo.reparameterize` / :func:`repan_zoo.unfold` probe
it with images of the right shape, and :func:`repan_zoo.checkpoint.save_checkpoint` names it;
``repan_config`` holds the :class:`DetectorConfig` as a dict.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..cli_types import check_values, number
from .backbone import RepanFPNBackbone, create_body

__all__ = ["DETECTORS", "DetectorConfig", "build_detector", "detector_config", "probe_images"]

DETECTORS = ("retinanet", "fasterrcnn")


#: the numeric fields of :class:`DetectorConfig` and their ranges (the command line's rule)
_NUMBERS = {
    "num_classes": number(int, 2), "fpn_channels": number(int, 1), "min_size": number(int, 1),
    "max_size": number(int, 1), "anchor_scale": number(float, 0.0, lo_open=True),
    "score_thresh": number(float, 0.0, 1.0), "nms_thresh": number(float, 0.0, 1.0),
    "detections_per_img": number(int, 1), "topk_candidates": number(int, 1), "representation_size": number(int, 1),
}


@dataclass
class DetectorConfig:
    """Everything that shapes a detector (not its weights).

    ``num_classes`` counts the background: K categories → ``K + 1`` (labels ``1..K``).
    ``min_size`` / ``max_size`` are torchvision's resize bounds (equal to the canvas side:
    no resizing). ``image_mean`` / ``image_std`` default to the backbone's ``pretrained_cfg``
    (averaged over channels when its channel count differs from ``in_chans``).
    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``width_mult``, ``in_chans``).
    ``topk_candidates``: RetinaNet's per-level candidates before NMS.
    """

    detector: str = "retinanet"
    backbone: str = "repan_repvgg_a0_w025"
    num_classes: int = 11
    out_indices: Optional[List[int]] = None
    fpn_channels: int = 64
    min_size: int = 96
    max_size: int = 96
    image_mean: Optional[List[float]] = None
    image_std: Optional[List[float]] = None
    anchor_scale: float = 4.0
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 300
    representation_size: int = 256
    model_kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector={self.detector!r}: choose one of {DETECTORS}")
        check_values(self, _NUMBERS, ValueError, {"num_classes": ": it counts the background too (K categories → K + 1 ≥ 2)"},
                     none_passes=False)
        if self.min_size > self.max_size:
            raise ValueError(f"need 1 ≤ min_size ≤ max_size, got {self.min_size}, {self.max_size}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios={self.aspect_ratios!r} must be a non-empty list of positive ratios")
        if self.out_indices is not None:
            self.out_indices = [int(i) for i in self.out_indices]

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DetectorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @property
    def in_chans(self) -> Optional[int]:
        value = self.model_kwargs.get("in_chans")
        return int(value) if value is not None else None


def _norm_stats(cfg: DetectorConfig, body: nn.Module, in_chans: int) -> tuple:
    pcfg = getattr(body, "pretrained_cfg", None) or {}
    mean = list(cfg.image_mean) if cfg.image_mean is not None else list(pcfg.get("mean", (0.5,) * in_chans))
    std = list(cfg.image_std) if cfg.image_std is not None else list(pcfg.get("std", (0.25,) * in_chans))
    if cfg.image_mean is None and len(mean) != in_chans:
        mean = [sum(mean) / len(mean)] * in_chans
    if cfg.image_std is None and len(std) != in_chans:
        std = [sum(std) / len(std)] * in_chans
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"image_mean {mean} / image_std {std} must have one value per input channel ({in_chans})")
    return mean, std


def _anchor_generator(cfg: DetectorConfig, strides: Sequence[int]):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    octaves = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)) if cfg.detector == "retinanet" else (1.0,)
    sizes = tuple(tuple(float(cfg.anchor_scale * s * o) for o in octaves) for s in strides)
    ratios = (tuple(float(r) for r in cfg.aspect_ratios),) * len(strides)
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


def build_detector(
    cfg: DetectorConfig,
    *,
    backbone_checkpoint: Optional[Union[str, Path]] = None,
    pretrained: bool = False,
    check_strides: bool = True,
) -> nn.Module:
    """A torchvision ``RetinaNet`` / ``FasterRCNN`` on ``cfg.backbone`` (see the module docstring).

    ``backbone_checkpoint``: typed safetensors weights of the backbone classifier (e.g. the
    trainer's ``deploy.safetensors``; the backbone then has the checkpoint's form);
    ``pretrained=True``: the hub's weights. Otherwise the backbone is randomly initialised.
    Raises :class:`~repan_zoo.errors.FeatureStrideError` for feature levels an FPN cannot use.
    """
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import MultiScaleRoIAlign

    body = create_body(cfg.backbone, out_indices=cfg.out_indices, checkpoint=backbone_checkpoint,
                       pretrained=pretrained, **cfg.model_kwargs)
    extra = "p6p7" if cfg.detector == "retinanet" else "maxpool"
    backbone = RepanFPNBackbone(body, cfg.fpn_channels, extra, what=f"backbone {cfg.backbone}", check=check_strides)
    in_chans = backbone.in_chans
    mean, std = _norm_stats(cfg, body, in_chans)
    anchors = _anchor_generator(cfg, backbone.strides)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=mean, image_std=std)
    if cfg.detector == "retinanet":
        head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], cfg.num_classes)
        model = RetinaNet(
            backbone, cfg.num_classes, anchor_generator=anchors, head=head, score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img, topk_candidates=cfg.topk_candidates,
            **common,
        )
    else:
        roi_pool = MultiScaleRoIAlign(featmap_names=backbone.body_level_names, output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(backbone.out_channels * 7 * 7, cfg.representation_size)
        model = FasterRCNN(
            backbone, None, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, box_head=box_head,
            box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
            rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=500,
            rpn_post_nms_top_n_test=300, box_batch_size_per_image=128, box_score_thresh=cfg.score_thresh,
            box_nms_thresh=cfg.nms_thresh, box_detections_per_img=cfg.detections_per_img, **common,
        )
    resolved = DetectorConfig.from_dict({**cfg.as_dict(), "image_mean": mean, "image_std": std,
                                         "out_indices": list(body.feature_info.out_indices),
                                         "model_kwargs": {**cfg.model_kwargs, "in_chans": in_chans}})
    model.repan_config = resolved.as_dict()
    model.pretrained_cfg = {
        "architecture": f"{cfg.detector}_{cfg.backbone}",
        "input_size": (in_chans, cfg.min_size, cfg.min_size),
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": cfg.num_classes,
    }
    return model


def detector_config(model: nn.Module) -> DetectorConfig:
    """The :class:`DetectorConfig` a detector was built from (``build_detector`` records it)."""
    data = getattr(model, "repan_config", None)
    if not isinstance(data, dict):
        raise ValueError(f"{type(model).__name__} was not built by repan_zoo.detection.build_detector (no repan_config)")
    return DetectorConfig.from_dict(json.loads(json.dumps(data)))


def probe_images(model: nn.Module, count: int = 2, *, seed: int = 0) -> List[torch.Tensor]:
    """``count`` seeded images in [0, 1] of the detector's input size, on its device and dtype."""
    c, h, w = model.pretrained_cfg["input_size"]
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(c, h, w, generator=gen).to(param) for _ in range(count)]

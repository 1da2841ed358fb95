"""The detection fine-tuning recipe (:class:`FinetuneConfig`), the options of ``repan-detect``."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from ..errors import RecipeError
from ..expansion import Expansion

__all__ = ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """A fine-tuning run (the CLI's options; see ``finetune_detection.py --help``)."""

    out: str
    train_images: str
    train_annotations: str
    val_images: str
    val_annotations: str
    detector: str = "retinanet"
    backbone: str = "repan_repvgg_a0_w025"
    backbone_checkpoint: Optional[str] = None
    pretrained: bool = False
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    out_indices: Optional[List[int]] = None
    fpn_channels: int = 64
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    anchor_scale: float = 4.0
    score_thresh: float = 0.05
    detections_per_img: int = 100
    # RepAn
    unfold: bool = False
    expansion: Expansion = field(default_factory=Expansion)
    cycles: int = 1
    lam_schedule: str = "linear"
    lam_start: float = 0.0
    lam_end: float = 1.0
    lam_warmup: float = 0.3
    calib_batches: int = 4
    calib_batch_size: int = 16
    # optimisation
    epochs: int = 6
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_steps: int = 50
    momentum: float = 0.9
    wd: float = 1e-4
    clip_grad: Optional[float] = 10.0
    freeze_bn: bool = False
    sync_bn: bool = False
    flip: bool = True
    seed: int = 0
    max_steps_per_epoch: Optional[int] = None
    # run
    resume: bool = False
    device: Optional[str] = None
    workers: int = 0
    eval_batch_size: int = 16
    eval_every: int = 1
    progress: bool = True
    export: List[str] = field(default_factory=list)
    compare_images: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.expansion, Expansion):
            self.expansion = Expansion.of(self.expansion)

    def check(self) -> None:
        if self.cycles < 1 or self.epochs < 1:
            raise RecipeError(f"cycles={self.cycles}, epochs={self.epochs}: both must be ≥ 1")
        if self.batch_size < 1 or self.lr <= 0:
            raise RecipeError(f"batch_size={self.batch_size}, lr={self.lr}: need batch_size ≥ 1 and lr > 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise RecipeError(f"optimizer={self.optimizer!r}: choose adamw or sgd")
        bad = [f for f in self.export if f not in ("torchscript", "onnx")]
        if bad:
            raise RecipeError(f"export formats {bad}: choose from torchscript, onnx")
        if self.backbone_checkpoint and self.pretrained:
            raise RecipeError("give --backbone-checkpoint or --pretrained, not both")

    def as_dict(self) -> Dict[str, Any]:
        """The recipe as flat JSON values (``config.json``, ``final.json``): the fields, with
        :attr:`expansion`'s fields in place of it."""
        d: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            d.update(value.as_dict() if f.name == "expansion" else {f.name: copy.deepcopy(value)})
        return d

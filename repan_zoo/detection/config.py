"""The detection fine-tuning recipe (:class:`FinetuneConfig`), the options of ``repan-detect``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..cli_types import SEED_MAX, check_fields, csv_list, int_list, json_dict, no_option, number, option
from ..errors import RecipeError
from ..expansion import Expansion, flat_fields

__all__ = ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """A fine-tuning run: every field but ``compare_images`` is an option of ``repan detect``
    (declared in its ``metadata``; see ``repan detect --help``)."""

    out: str = field(metadata=option(run=True))
    train_images: str = field(metadata=option(group="data (COCO format)"))
    train_annotations: str = field(metadata=option())
    val_images: str = field(metadata=option())
    val_annotations: str = field(metadata=option())
    detector: str = field(default="retinanet", metadata=option(
        choices=("retinanet", "fasterrcnn"), group="detector and backbone"))
    backbone: str = field(default="repan_repvgg_a0_w025", metadata=option(
        "a repan_* timm model (timm.list_models('repan_*'))"))
    backbone_checkpoint: Optional[str] = field(default=None, metadata=option(
        "typed safetensors of the backbone classifier, e.g. repan-train's deploy.safetensors"))
    pretrained: bool = field(default=False, metadata=option("the hub's weights for the backbone"))
    model_kwargs: Dict[str, Any] = field(default_factory=dict, metadata=option(
        "JSON kwargs for timm.create_model, e.g. '{\"width_mult\": 0.25, \"in_chans\": 1}'", type=json_dict))
    out_indices: Optional[List[int]] = field(default=None, metadata=option(
        "feature levels for the FPN (default: the last three)", type=int_list))
    fpn_channels: int = field(default=64, metadata=option(type=number(int, 1)))
    min_size: Optional[int] = field(default=None, metadata=option(
        "resize bound (default: the first image's short side)", type=number(int, 1)))
    max_size: Optional[int] = field(default=None, metadata=option(
        "resize bound (default: the first image's long side)", type=number(int, 1)))
    anchor_scale: float = field(default=4.0, metadata=option(
        "anchor size = scale × level stride", type=number(float, 0.0, lo_open=True)))
    score_thresh: float = field(default=0.05, metadata=option(
        "detections below are dropped", type=number(float, 0.0, 1.0)))
    detections_per_img: int = field(default=100, metadata=option(type=number(int, 1)))
    # RepAn
    unfold: bool = field(default=False, metadata=option(
        "Expand + Restore the backbone before fine-tuning (repan_zoo.unfold, λ=0: same function)",
        group="RepAn (unfold, cycles on the detection task)"))
    expansion: Expansion = field(default_factory=Expansion, metadata=option(
        "its fields are options: --branches, --k, --restore, --residual, --branch-gamma"))
    cycles: int = field(default=1, metadata=option(
        "RepAn cycles R; cycles 2..R start with Rep → Expand → Restore → Calibrate", type=number(int, 1)))
    lam_schedule: str = field(default="linear", metadata=option("Θ: constant | linear | cosine | step"))
    lam_start: float = field(default=0.0, metadata=option(type=number(float, 0.0, 1.0)))
    lam_end: float = field(default=1.0, metadata=option(type=number(float, 0.0, 1.0)))
    lam_warmup: float = field(default=0.3, metadata=option(
        "fraction of a cycle over which λ rises", type=number(float, 0.0, 1.0)))
    calib_batches: int = field(default=4, metadata=option("batches for BN calibration", type=number(int, 0)))
    calib_batch_size: int = field(default=16, metadata=option(type=number(int, 1)))
    # optimisation
    epochs: int = field(default=6, metadata=option("epochs per cycle", type=number(int, 1), group="optimisation"))
    batch_size: int = field(default=16, metadata=option("global batch (split over processes)", type=number(int, 1)))
    optimizer: str = field(default="adamw", metadata=option(choices=("adamw", "sgd")))
    lr: float = field(default=1e-3, metadata=option(
        "peak learning rate (cosine per cycle)", type=number(float, 0.0, lo_open=True)))
    min_lr: float = field(default=0.0, metadata=option(type=number(float, 0.0)))
    warmup_steps: int = field(default=50, metadata=option(
        "linear LR warmup at each cycle start", type=number(int, 0)))
    momentum: float = field(default=0.9, metadata=option("SGD momentum", type=number(float, 0.0, 1.0, hi_open=True)))
    wd: float = field(default=1e-4, metadata=option("weight decay", type=number(float, 0.0)))
    clip_grad: Optional[float] = field(default=10.0, metadata=option(
        "gradient-norm clip (0 or none: off)", type=number(float, 0.0, none=True)))
    freeze_bn: bool = field(default=False, metadata=option("keep BatchNorm statistics fixed while training"))
    sync_bn: bool = field(default=False, metadata=option("synchronise BatchNorm over processes"))
    flip: bool = field(default=True, metadata=option("random horizontal flip", negatable=True))
    seed: int = field(default=0, metadata=option(type=number(int, 0, SEED_MAX)))
    max_steps_per_epoch: Optional[int] = field(default=None, metadata=option(
        "cap steps per epoch (smoke runs, tests)", type=number(int, 1)))
    # run
    resume: bool = field(default=False, metadata=option(run=True))
    device: Optional[str] = field(default=None, metadata=option(run=True))
    workers: int = field(default=0, metadata=option(run=True))
    eval_batch_size: int = field(default=16, metadata=option(type=number(int, 1), group="run"))
    eval_every: int = field(default=1, metadata=option(
        "evaluate mAP every N epochs (and at the end)", type=number(int, 1)))
    progress: bool = field(default=True, metadata=option(run=True))
    export: List[str] = field(default_factory=list, metadata=option(
        "export the deploy detector: torchscript,onnx", type=csv_list))
    compare_images: int = field(default=8, metadata=no_option())

    def __post_init__(self) -> None:
        if not isinstance(self.expansion, Expansion):
            self.expansion = Expansion.of(self.expansion)

    def check(self) -> None:
        """Raises :class:`RecipeError`: an option outside its range (as on the command line:
        :func:`~repan_zoo.cli_types.check_fields`), an unknown optimizer or export format, or both
        --backbone-checkpoint and --pretrained."""
        check_fields(self, RecipeError)
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
        return flat_fields(self)

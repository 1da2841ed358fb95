"""Knowledge distillation (Sec. 3.4, Table 4): soft labels from a teacher kept in eval mode.

``loss = (1 - α) · CE(student, y) + α · T² · KL(softmax(teacher/T) ‖ softmax(student/T))``

The T² factor keeps the soft-label gradients on the scale of the hard-label ones (Hinton et
al.). The paper uses α = 0.9, T = 10 on CIFAR and α = 0.5 on ImageNet; α = 0 is RepAn
without KD (Table 4, row 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ManifestError, RecipeError
from .build import build_model

__all__ = ["KDLoss", "build_teacher", "pretrained_source"]


class KDLoss(nn.Module):
    """Hard-label cross-entropy mixed with the temperature-softened KL to the teacher."""

    def __init__(self, alpha: float = 0.9, temperature: float = 10.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise RecipeError(f"KD α={alpha} must be in [0, 1] (the share of the distillation term)")
        if not temperature > 0:
            raise RecipeError(f"KD temperature T={temperature} must be > 0")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        hard = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        if teacher_logits is None or self.alpha == 0.0:
            return hard
        t = self.temperature
        log_p = F.log_softmax(logits.float() / t, dim=1)
        q = F.log_softmax(teacher_logits.float().detach() / t, dim=1)
        soft = F.kl_div(log_p, q, reduction="batchmean", log_target=True) * (t * t)
        return (1.0 - self.alpha) * hard + self.alpha * soft


def pretrained_source(model: nn.Module) -> Dict[str, Any]:
    """The pretrained weights ``model`` was built with, by portable name (its ``pretrained_cfg``,
    resolved in timm's order: a local ``file``, else ``hf_hub_id``, else ``url``).

    Returns:
        ``architecture``, ``tag``; zoo weights (a :mod:`repan_zoo.manifest` entry): ``manifest``
        (``model.tag``) and ``checkpoint_sha256`` from the manifest; a local file: its
        ``checkpoint_sha256`` (never its path, which is one machine's); else ``hf_hub_id`` or
        ``url`` (``checkpoint_sha256`` None: timm does not pin the bytes).
    """
    from ..fileio import sha256_file
    from ..manifest import find_entry

    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    record: Dict[str, Any] = {"architecture": arch, "tag": tag}
    try:
        entry = find_entry(arch, tag) if arch and tag else None
    except ManifestError:
        entry = None
    if entry is not None:
        return {**record, "checkpoint_sha256": entry.sha256, "manifest": entry.name}
    file = cfg.get("file")
    if file:
        sha = sha256_file(Path(file)) if Path(file).is_file() else None
        return {**record, "checkpoint_sha256": sha, "manifest": None}
    for key in ("hf_hub_id", "url"):
        if cfg.get(key):
            record[key] = cfg[key]
            break
    return {**record, "checkpoint_sha256": None, "manifest": None}


def build_teacher(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    checkpoint: Optional[str] = None,
    pretrained: bool = False,
    model_kwargs: Optional[Dict[str, Any]] = None,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """A teacher from a timm model name, optionally with weights from a local safetensors file
    (train or deploy form, or a plain state dict: :func:`repan_zoo.checkpoint.load_into`), or
    timm's own pretrained weights (``pretrained=True``). A teacher without weights would teach
    noise, so one of the two is required. Returned in eval mode with ``requires_grad=False`` everywhere; it never trains.

    Raises:
        RecipeError: no weights given, or ``name`` is not a timm model
            (:func:`~repan_zoo.annealing.build.build_model`).
        CheckpointError: the checkpoint does not fit the model.
    """
    from ..checkpoint import load_into, read_checkpoint

    kwargs = dict(model_kwargs or {})
    if not checkpoint and not pretrained:
        raise RecipeError(
            f"teacher {name!r} has no weights: pass --teacher-checkpoint FILE.safetensors (e.g. the deploy "
            "checkpoint of a baseline run on the same dataset) or --teacher-pretrained"
        )
    teacher = build_model(name, num_classes=num_classes, in_chans=in_chans, model_kwargs=kwargs,
                          pretrained=pretrained and not checkpoint, option="--teacher")
    if checkpoint:
        state, meta = read_checkpoint(checkpoint)
        load_into(teacher, state, meta, what=f"teacher checkpoint {checkpoint}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if device is not None:
        teacher.to(device)
    return teacher

"""Built-in :class:`~repan_zoo.verify.ProbeAdapter` s: the models the exactness checks
(:func:`repan_zoo.reparameterize`, :func:`repan_zoo.unfold`, export) feed and read in a form of
their own. Imported by ``import repan_zoo``, so they are always registered.

* ``torchvision_detector`` — torchvision's detectors (RetinaNet, Faster R-CNN, any model whose
  ``transform`` is a ``GeneralizedRCNNTransform``): the probe batch is passed as a list of images,
  and the backbone's (FPN) feature maps are compared instead of the detections (which NMS and
  score thresholds make discrete).
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .verify import ProbeAdapter, register_probe_adapter

__all__ = ["TORCHVISION_DETECTOR"]


def _is_torchvision_detector(model: nn.Module) -> bool:
    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def _backbone(model: nn.Module) -> Optional[nn.Module]:
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else None


TORCHVISION_DETECTOR = register_probe_adapter(ProbeAdapter(
    "torchvision_detector", _is_torchvision_detector, to_input=lambda batch: [img for img in batch], compared=_backbone,
))

"""Detection with RepAn backbones on torchvision's RetinaNet and Faster R-CNN.

The design card's third use (the paper's Table 6 fine-tunes RetinaNet on COCO): a deploy
backbone is unfolded for fine-tuning (:func:`repan_zoo.unfold`, optionally with RepAn cycles on
the detection task), trained, reparameterized for deployment in one call
(:func:`repan_zoo.reparameterize` finds the Rep blocks inside the detector) and exported.

* :mod:`.backbone`   — ``features_only`` repan body + torchvision FPN, stride checks
* :mod:`.detectors`  — :class:`DetectorConfig`, :func:`build_detector`
* :mod:`.rep`        — unfold of a detector, calibration inputs as the backbone sees them
* :mod:`.compare`    — features and detections of two detectors (exactness of a conversion)
* :mod:`.export`     — TorchScript / ONNX of the deployed detector, each file checked
* :mod:`.coco`       — COCO-format validation (typed errors) and the dataset (transforms v2)
* :mod:`.evaluate`   — COCO mAP with pycocotools, multi-process
* :mod:`.fmnist`     — the Fashion-MNIST canvas detection set
* :mod:`.config`     — :class:`FinetuneConfig`, the recipe
* :mod:`.finetune`   — the fine-tuning run on the shared Algorithm-1 driver (``repan-detect``)
"""
from .backbone import RepanFPNBackbone, check_feature_strides, create_body, measure_strides
from .coco import CategoryMap, CocoDetectionSet, collate, load_coco_json, validate_coco
from .compare import compare_detectors, detections_match, feature_error, feature_noise, match_detections
from .detectors import DETECTORS, DetectorConfig, build_detector, detector_config, probe_images
from .evaluate import coco_map, evaluate_detector
from .export import DenseDetector, export_detector
from .config import FinetuneConfig
from .finetune import load_detector, run_finetune
from .fmnist import CanvasSpec, make_fmnist_detection
from .rep import calibration_batches, unfold_backbone

__all__ = [
    "RepanFPNBackbone", "check_feature_strides", "create_body", "measure_strides",
    "CategoryMap", "CocoDetectionSet", "collate", "load_coco_json", "validate_coco",
    "compare_detectors", "detections_match", "feature_error", "feature_noise", "match_detections",
    "DETECTORS", "DetectorConfig", "build_detector", "detector_config", "probe_images",
    "coco_map", "evaluate_detector",
    "DenseDetector", "export_detector",
    "FinetuneConfig", "load_detector", "run_finetune",
    "CanvasSpec", "make_fmnist_detection",
    "calibration_batches", "unfold_backbone",
]

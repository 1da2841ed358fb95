"""COCO-format detection data: a validator with typed errors, and a dataset on torchvision's
``CocoDetection`` with transforms v2.

A COCO instances file is a JSON object with ``images`` (``id``, ``file_name``, ``width``,
``height``), ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]``
in pixels, optional ``iscrowd`` and ``area``) and ``categories`` (``id``, ``name``).
:func:`validate_coco` checks all of that before pycocotools sees the file and raises
:class:`~repan_zoo.errors.CocoFormatError` naming the file and the first bad field (e.g.
``annotations[3].bbox``); a missing image file raises
:class:`~repan_zoo.errors.DatasetNotFoundError` naming it.

COCO category ids may be any positive integers (COCO itself uses 1–90 with gaps); the
detectors get contiguous labels ``1..K`` (0 is the background of Faster R-CNN) through
:class:`CategoryMap`, which maps them back for evaluation.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..errors import CocoFormatError, DatasetNotFoundError
from ..extras import require_extra
from ..jsonio import is_number

__all__ = ["validate_coco", "load_coco_json", "CategoryMap", "CocoDetectionSet", "DetectionTransforms", "collate"]

PathLike = Union[str, Path]


def _fail(path: Path, field: str, problem: str) -> CocoFormatError:
    return CocoFormatError(
        f"{path} is not a valid COCO instances file: {field} {problem}. A COCO file needs 'images' "
        "[{id, file_name, width, height}], 'annotations' [{id, image_id, category_id, bbox: [x, y, w, h]}] "
        "and 'categories' [{id, name}]",
        path=str(path), field=field,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_list(path: Path, data: Dict[str, Any], key: str) -> List[Any]:
    if key not in data:
        raise _fail(path, key, "is missing")
    items = data[key]
    if not isinstance(items, list):
        raise _fail(path, key, f"must be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(path, f"{key}[{i}]", f"must be an object, got {type(item).__name__}")
    return items


def _check_ids(path: Path, items: List[Dict[str, Any]], key: str) -> Dict[int, Dict[str, Any]]:
    seen: Dict[int, Dict[str, Any]] = {}
    for i, item in enumerate(items):
        if "id" not in item:
            raise _fail(path, f"{key}[{i}].id", "is missing")
        if not _is_int(item["id"]):
            raise _fail(path, f"{key}[{i}].id", f"must be an integer, got {item['id']!r}")
        if item["id"] in seen:
            raise _fail(path, f"{key}[{i}].id", f"{item['id']} is used twice")
        seen[item["id"]] = item
    return seen


def load_coco_json(path: PathLike) -> Dict[str, Any]:
    """Read and validate a COCO instances file (:func:`validate_coco`); returns the parsed JSON."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"COCO annotation file {path} does not exist; pass the instances JSON of the split")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CocoFormatError(f"{path} is not a COCO instances file: not UTF-8 text ({exc})", path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path} is not a COCO instances file: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})",
            path=str(path), field=f"line {exc.lineno}",
        ) from exc
    validate_coco(data, path)
    return data


def validate_coco(data: Any, path: PathLike = "<memory>") -> None:
    """Raise :class:`CocoFormatError` (naming ``path`` and the field) unless ``data`` is a valid
    COCO instances dict (see the module docstring)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise _fail(path, "the top level", f"must be a JSON object, got {type(data).__name__}")
    images = _check_list(path, data, "images")
    annotations = _check_list(path, data, "annotations")
    categories = _check_list(path, data, "categories")
    image_ids = _check_ids(path, images, "images")
    _check_ids(path, annotations, "annotations")
    category_ids = _check_ids(path, categories, "categories")
    if not categories:
        raise _fail(path, "categories", "is empty: a detector needs at least one category")
    for i, img in enumerate(images):
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise _fail(path, f"images[{i}].file_name", "is missing or not a non-empty string")
        for key in ("width", "height"):
            if key not in img:
                raise _fail(path, f"images[{i}].{key}", "is missing")
            if not _is_int(img[key]) or img[key] < 1:
                raise _fail(path, f"images[{i}].{key}", f"must be a positive integer, got {img[key]!r}")
    for i, cat in enumerate(categories):
        if cat["id"] < 1:
            raise _fail(path, f"categories[{i}].id", f"must be ≥ 1 (0 is the background), got {cat['id']}")
        if not isinstance(cat.get("name"), str):
            raise _fail(path, f"categories[{i}].name", "is missing or not a string")
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise _fail(path, f"{where}.{key}", "is missing")
        if ann["image_id"] not in image_ids:
            raise _fail(path, f"{where}.image_id", f"{ann['image_id']!r} is not the id of an entry in 'images'")
        if ann["category_id"] not in category_ids:
            raise _fail(path, f"{where}.category_id", f"{ann['category_id']!r} is not the id of an entry in 'categories'")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise _fail(path, f"{where}.bbox", f"must be [x, y, width, height] (4 finite numbers), got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise _fail(path, f"{where}.bbox", f"has a negative width or height: {bbox!r}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            raise _fail(path, f"{where}.iscrowd", f"must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and (not is_number(ann["area"]) or ann["area"] < 0):
            raise _fail(path, f"{where}.area", f"must be a number ≥ 0, got {ann['area']!r}")


@dataclass(frozen=True)
class CategoryMap:
    """COCO category ids ↔ contiguous detector labels ``1..K`` (sorted by id)."""

    category_ids: Tuple[int, ...]
    names: Tuple[str, ...]

    @classmethod
    def from_coco(cls, data: Dict[str, Any]) -> "CategoryMap":
        cats = sorted(data["categories"], key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in cats), tuple(c["name"] for c in cats))

    @property
    def num_classes(self) -> int:
        """Detector classes: the K categories plus the background (label 0)."""
        return len(self.category_ids) + 1

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def category(self, label: int) -> int:
        return self.category_ids[int(label) - 1]

    def as_dict(self) -> Dict[str, Any]:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}


def _labels_and_crowd(inputs: Any) -> Tuple[torch.Tensor, ...]:
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "iscrowd") if k in target)


class DetectionTransforms:
    """transforms v2 for (PIL image, target) pairs: to a float tensor in [0, 1] with ``in_chans``
    channels (1: grayscale), a random horizontal flip of image and boxes when training, and
    removal of degenerate boxes (with their labels and crowd flags). An image without
    annotations (its target has no ``boxes``) gets the image steps only. Normalisation and
    resizing are the detector's own (``GeneralizedRCNNTransform``)."""

    def __init__(self, train: bool, in_chans: int, *, flip: bool = True):
        from torchvision.transforms import v2

        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans}: COCO images are read as RGB or grayscale (1 or 3 channels)")
        steps: List[Any] = [v2.ToImage()]
        if in_chans == 1:
            steps.append(v2.Grayscale(num_output_channels=1))
        if train and flip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        self.image_steps = v2.Compose(steps)
        self.box_steps = v2.Compose(steps + [v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd)])

    def __call__(self, image: Any, target: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
        if "boxes" in target:
            target = dict(target)
            for key in ("labels", "iscrowd"):  # the v2 wrapper gives lists; sanitizing needs tensors
                if key in target:
                    target[key] = torch.as_tensor(target[key], dtype=torch.int64)
            return self.box_steps(image, target)
        return self.image_steps(image), target


class CocoDetectionSet(Dataset):
    """A COCO-format split: ``images_dir`` + ``annotation_file``, read by torchvision's
    ``CocoDetection`` wrapped for transforms v2.

    ``dataset[i]`` → ``(image, target)``: a float tensor ``[C, H, W]`` in [0, 1] and a dict with
    ``boxes`` (float ``[n, 4]``, x1 y1 x2 y2 in pixels), ``labels`` (int64, contiguous 1..K) and
    ``image_id`` (int). Crowd annotations are left out of the targets (they stay in the ground
    truth that :mod:`repan_zoo.detection.evaluate` scores against).

    The files are checked before the extra is asked for: :class:`~repan_zoo.errors.DatasetNotFoundError`
    (the annotation file, the image folder or an image missing) and
    :class:`~repan_zoo.errors.CocoFormatError` (the file and its first bad field) come first; then,
    without pycocotools (the ``detection`` extra, which ``CocoDetection`` reads with),
    :class:`~repan_zoo.errors.MissingExtraError`.
    """

    def __init__(self, images_dir: PathLike, annotation_file: PathLike, *, train: bool = False, in_chans: int = 3,
                 flip: bool = True, categories: Optional[CategoryMap] = None, check_files: bool = True):
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.data = load_coco_json(self.annotation_file)
        if not self.images_dir.is_dir():
            raise DatasetNotFoundError(f"image folder {self.images_dir} (for {self.annotation_file}) does not exist")
        if check_files:
            missing = [img["file_name"] for img in self.data["images"] if not (self.images_dir / img["file_name"]).is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"{len(missing)} image file(s) named in {self.annotation_file} are not in {self.images_dir}: "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
        if not any(not ann.get("iscrowd", 0) for ann in self.data["annotations"]):
            raise CocoFormatError(
                f"{self.annotation_file} holds no box (no non-crowd annotation): a detector cannot learn from it, "
                "and its mAP is undefined (COCOeval's -1). Add the annotations, or use another split",
                path=str(self.annotation_file), field="annotations")
        self.categories = categories or CategoryMap.from_coco(self.data)
        unknown = sorted({c["id"] for c in self.data["categories"]} - set(self.categories.category_ids))
        if unknown:
            raise CocoFormatError(
                f"{self.annotation_file}: categories {unknown} are not among the training categories "
                f"{list(self.categories.category_ids)}; train and validation files must share their categories",
                path=str(self.annotation_file), field="categories",
            )
        self.in_chans = in_chans
        require_extra("detection", "COCO data (torchvision's CocoDetection)")  # after the files: their faults first
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            base = CocoDetection(str(self.images_dir), str(self.annotation_file),
                                 transforms=DetectionTransforms(train, in_chans, flip=flip))
        self.coco = base.coco
        for ann in self.coco.dataset["annotations"]:  # COCOeval reads both; optional in the file
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        self.dataset = wrap_dataset_for_transforms_v2(base, target_keys=("image_id", "boxes", "labels", "iscrowd"))
        self.ids: List[int] = list(base.ids)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image, target = self.dataset[index]
        image_id = int(target.get("image_id", self.ids[index]))
        boxes = target.get("boxes")
        if boxes is None or len(boxes) == 0:
            return image.as_subclass(torch.Tensor), {
                "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": image_id,
            }
        keep = ~target["iscrowd"].bool()
        labels = torch.tensor([self.categories.label(int(c)) for c in target["labels"].tolist()], dtype=torch.int64)
        return image.as_subclass(torch.Tensor), {
            "boxes": boxes.as_subclass(torch.Tensor)[keep].float(),
            "labels": labels[keep],
            "image_id": image_id,
        }


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """Detection batches are lists (images may differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)

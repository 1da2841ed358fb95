"""A small, deterministic detection set from real images: Fashion-MNIST items on canvases.

Each canvas (black, ``canvas``×``canvas`` pixels, grayscale PNG) holds 1–``max_items`` Fashion-MNIST
items, each scaled to a random side between ``min_side`` and ``max_side`` pixels, placed at a
random position such that no two items' boxes overlap by more than ``max_overlap`` of the
smaller box (intersection / smaller area), composited with ``max`` (the items have black
backgrounds). Each item's box is the tight box of its visible pixels (value > ``threshold``),
its category one of the 10 Fashion-MNIST classes (COCO ids 1–10).

Training canvases take their items from the Fashion-MNIST *training* images, validation
canvases from the *test* images, so no item appears in both splits. Everything is drawn from
``numpy.random.default_rng([seed, split])``: the same arguments give the same files, byte for byte.

Layout written under ``out``::

    train/images/000000.png ...   train/instances.json   (COCO instances)
    val/images/000000.png ...     val/instances.json

``instances.json`` is written last and atomically: a split whose JSON exists is complete.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from ..fileio import atomic_write

__all__ = ["CanvasSpec", "make_fmnist_detection", "SPLITS"]

#: split name → (Fashion-MNIST source arrays, stream id of the RNG)
SPLITS = {"train": ("train", 0), "val": ("test", 1)}


@dataclass(frozen=True)
class CanvasSpec:
    """How the canvases are drawn (see the module docstring)."""

    canvas: int = 96
    min_items: int = 1
    max_items: int = 4
    min_side: int = 20
    max_side: int = 44
    max_overlap: float = 0.1
    threshold: int = 10
    tries: int = 50

    def check(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 ≤ min_items ≤ max_items, got {self.min_items}, {self.max_items}")
        if not 8 <= self.min_side <= self.max_side <= self.canvas:
            raise ValueError(f"need 8 ≤ min_side ≤ max_side ≤ canvas, got {self.min_side}, {self.max_side}, {self.canvas}")
        if not 0.0 <= self.max_overlap < 1.0:
            raise ValueError(f"max_overlap={self.max_overlap} must be in [0, 1)")
        if not 0 <= self.threshold < 255:
            raise ValueError(f"threshold={self.threshold} must be in [0, 255)")


def _overlap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    """Intersection over the smaller area of two (x0, y0, x1, y1) boxes (exclusive ends)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _draw_canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, spec: CanvasSpec):
    from PIL import Image

    canvas = np.zeros((spec.canvas, spec.canvas), dtype=np.uint8)
    placed: List[Tuple[Tuple[int, int, int, int], int]] = []
    wanted = int(rng.integers(spec.min_items, spec.max_items + 1))
    for _ in range(wanted):
        index = int(rng.integers(len(images)))
        side = int(rng.integers(spec.min_side, spec.max_side + 1))
        item = np.asarray(Image.fromarray(images[index]).resize((side, side), Image.BILINEAR))
        rows = np.flatnonzero((item > spec.threshold).any(axis=1))
        cols = np.flatnonzero((item > spec.threshold).any(axis=0))
        if rows.size == 0:
            continue
        for _ in range(spec.tries):
            x0 = int(rng.integers(0, spec.canvas - side + 1))
            y0 = int(rng.integers(0, spec.canvas - side + 1))
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
            if all(_overlap(box, other) <= spec.max_overlap for other, _ in placed):
                region = canvas[y0:y0 + side, x0:x0 + side]
                np.maximum(region, item, out=region)
                placed.append((box, int(labels[index])))
                break
    return canvas, placed


def _write_split(out: Path, split: str, count: int, images: np.ndarray, labels: np.ndarray, spec: CanvasSpec,
                 seed: int, stream: int, source: str) -> Dict[str, Any]:
    from PIL import Image

    rng = np.random.default_rng([seed, stream])
    folder = out / split / "images"
    folder.mkdir(parents=True, exist_ok=True)
    coco_images, annotations = [], []
    for i in range(count):
        canvas, placed = _draw_canvas(rng, images, labels, spec)
        name = f"{i:06d}.png"
        Image.fromarray(canvas, mode="L").save(folder / name, format="PNG", optimize=False)
        coco_images.append({"id": i + 1, "file_name": name, "width": spec.canvas, "height": spec.canvas})
        for (x0, y0, x1, y1), label in placed:
            w, h = x1 - x0, y1 - y0
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h), "iscrowd": 0,
            })
    data = {
        "info": {
            "description": f"Fashion-MNIST items composited on {spec.canvas}x{spec.canvas} canvases ({split})",
            "source": f"Fashion-MNIST {source} images", "seed": seed, "canvas_spec": asdict(spec),
            "generator": "repan_zoo.detection.fmnist.make_fmnist_detection",
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(FASHION_MNIST_CLASSES)],
    }
    text = json.dumps(data)
    atomic_write(out / split / "instances.json", lambda tmp: Path(tmp).write_text(text))
    return {"images": count, "objects": len(annotations), "annotation_file": str(out / split / "instances.json")}


def make_fmnist_detection(
    out: Union[str, Path],
    *,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    spec: Optional[CanvasSpec] = None,
    data_dir: Optional[Union[str, Path]] = None,
    splits: Sequence[str] = ("train", "val"),
    arrays: Optional[Dict[str, Any]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Write the COCO-format canvas set under ``out`` (see the module docstring); returns a summary
    per split. ``data_dir`` is the Fashion-MNIST IDX folder (default: Debian's location);
    ``arrays`` the already loaded :func:`repan_zoo.datasets.load_fashion_mnist` result, if at hand."""
    spec = spec or CanvasSpec()
    spec.check()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits {unknown}: choose from {list(SPLITS)}")
    counts = {"train": num_train, "val": num_val}
    if any(counts[s] < 1 for s in splits):
        raise ValueError(f"num_train={num_train}, num_val={num_val}: each split needs at least one image")
    arrays = arrays if arrays is not None else load_fashion_mnist(data_dir)
    out = Path(out)
    summary = {}
    for split in splits:
        source, stream = SPLITS[split]
        images = arrays[f"{source}_images"][:, 0].numpy()
        labels = arrays[f"{source}_labels"].numpy()
        summary[split] = _write_split(out, split, counts[split], images, labels, spec, seed, stream, source)
    return summary

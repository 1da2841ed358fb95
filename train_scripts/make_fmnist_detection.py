#!/usr/bin/env python3
"""Write the Fashion-MNIST detection set in COCO format (deterministic, seeded).

Fashion-MNIST items (Debian's IDX files in /usr/share/datasets/fashion-mnist/, or --data-dir)
composited onto black canvases, 1–4 items each, random scale, limited overlap; boxes are the
items' tight boxes, categories the 10 Fashion-MNIST classes. Training canvases use the
training images, validation canvases the test images. See repan_zoo.detection.fmnist.

    python train_scripts/make_fmnist_detection.py --out data/fmnist_det            # 1000 train / 200 val, 96×96
    python train_scripts/make_fmnist_detection.py --out data/tiny --num-train 8 --num-val 4 --canvas 64
"""
import argparse
import json
import sys

from repan_zoo.detection.fmnist import CanvasSpec, make_fmnist_detection


def main(argv=None) -> int:
    d = CanvasSpec()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (train/ and val/ are written inside)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canvas", type=int, default=d.canvas, help="canvas side in pixels")
    p.add_argument("--min-items", type=int, default=d.min_items)
    p.add_argument("--max-items", type=int, default=d.max_items)
    p.add_argument("--min-side", type=int, default=None, help="smallest item side (default: canvas × 0.21)")
    p.add_argument("--max-side", type=int, default=None, help="largest item side (default: canvas × 0.46)")
    p.add_argument("--max-overlap", type=float, default=d.max_overlap, help="max intersection / smaller box")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's location)")
    args = p.parse_args(argv)
    min_side = args.min_side or max(8, round(args.canvas * d.min_side / d.canvas))
    max_side = args.max_side or max(min_side, round(args.canvas * d.max_side / d.canvas))
    spec = CanvasSpec(canvas=args.canvas, min_items=args.min_items, max_items=args.max_items, min_side=min_side,
                      max_side=max_side, max_overlap=args.max_overlap)
    summary = make_fmnist_detection(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                                    spec=spec, data_dir=args.data_dir)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

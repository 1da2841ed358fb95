"""Re-measure every manifest entry's test accuracy through ``timm.create_model(..., pretrained=True)``.

    HF_HUB_OFFLINE=1 python benchmarks/check_pretrained.py [--data-dir DIR] [--tolerance 0.1]

For each entry of ``weights_manifest/`` (bundled ones always; Hub ones when online or cached) the
script builds ``timm.create_model("<model>.<tag>", pretrained=True)`` — which verifies size and
sha256 before loading — evaluates it on the Fashion-MNIST test set with the entry's own mean/std,
and compares with the manifest's ``metrics.fashion_mnist.test_top1``. Results go to
``benchmarks/results/pretrained_check.json``; exit 1 when any entry is off by more than
``--tolerance`` points.

Each row also gives the top-1 a fine-tuner starts from: ``pretrained=True`` builds the train form,
whose BNs :func:`repan_zoo.checkpoint.load_into` restores with μ = 0, σ = 1, and training mode
normalises with each batch's statistics instead (``train_mode_test_top1``, batches of 128 test
images); after :func:`repan_zoo.calibrate_bn` on 5 batches of 128 training images
(``train_mode_test_top1_calibrated``; what ``repan-train --init-checkpoint`` does) it starts from
the shipped function.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
import timm

import repan_zoo  # noqa: F401  (registers the models)
from repan_zoo.convert import calibrate_bn, reparameterize
from repan_zoo.data import Normalize, calibration_batches, load_splits
from repan_zoo.errors import UncalibratedBNWarning, WeightsError
from repan_zoo.manifest import load_manifest
from repan_zoo.metrics import top1
from repan_zoo.profile import count_params
from repan_zoo.runtime.report import write_json

OUT = Path(__file__).resolve().parent / "results" / "pretrained_check.json"


@torch.no_grad()
def train_mode_top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize,
                    calibrate: list = (), batch: int = 128) -> float:
    """top-1 (%) of a copy of ``model`` in training mode (each ``batch`` of test images normalised by
    its own BN statistics: the function fine-tuning starts from), after :func:`calibrate_bn` on the
    ``calibrate`` batches (uint8 images) when given."""
    model = copy.deepcopy(model)
    if calibrate:
        calibrate_bn(model.eval(), [normalize(b) for b in calibrate])
    with warnings.catch_warnings():  # as loaded, the uncalibrated statistics are what is measured
        warnings.simplefilter("ignore", UncalibratedBNWarning)
        return top1(model.train(), images, labels, normalize=normalize, batch_size=batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: Debian's location)")
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed difference in top-1 points")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_splits("fashion_mnist", a.data_dir, val_size=1, split_seed=0, seed=0, flip=False)  # only .test is used
    images, labels = data.test[torch.arange(len(data.test))]
    calib = calibration_batches(data.train, 5, 128, seed=0, cycle=0)
    rows, failed = [], False
    for entry in load_manifest().values():
        listed = entry.metrics.get("fashion_mnist", {})
        listed = listed.get("test_top1") if isinstance(listed, dict) else listed
        row = {"model": entry.name, "source": entry.source, "manifest_test_top1": listed}
        start = time.time()
        try:
            model = timm.create_model(entry.name, pretrained=True)
        except WeightsError as exc:  # a Hub entry while offline with an empty cache
            row.update(status="unavailable", error=str(exc))
            rows.append(row)
            print(f"{entry.name}: unavailable ({type(exc).__name__})")
            continue
        norm = Normalize(entry.mean, entry.std)
        measured = top1(model.eval(), images, labels, normalize=norm)
        ok = listed is not None and abs(measured - listed) <= a.tolerance
        failed |= not ok
        row.update(status="ok" if ok else "MISMATCH", measured_test_top1=measured,
                   difference=None if listed is None else measured - listed, seconds=time.time() - start,
                   test_images=len(images), deploy_params=count_params(reparameterize(model)))
        row.update(train_mode_test_top1=train_mode_top1(model, images, labels, norm),
                   train_mode_test_top1_calibrated=train_mode_top1(model, images, labels, norm, calib))
        rows.append(row)
        print(f"{entry.name} ({entry.source}): measured {measured:.2f}, manifest {listed}, {row['status']}; "
              f"train mode {row['train_mode_test_top1']:.2f}, calibrated {row['train_mode_test_top1_calibrated']:.2f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT, {"benchmark": "pretrained weights reproduce the manifest's test top-1",
                     "command": "HF_HUB_OFFLINE=1 python benchmarks/check_pretrained.py",
                     "tolerance": a.tolerance, "torch": torch.__version__, "timm": timm.__version__, "rows": rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fine-tune a torchvision RetinaNet / Faster R-CNN on a RepAn backbone, then reparameterize it.

A thin wrapper around :mod:`repan_zoo.detection.cli`; run with ``--help`` for the options.
Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, nccl on GPUs)::

    python train_scripts/make_fmnist_detection.py --out data/fmnist_det
    python train_scripts/finetune_detection.py --data-root data/fmnist_det --out runs/det \
        --detector retinanet --backbone repan_repvgg_a0_w025 \
        --backbone-checkpoint runs/a0/deploy.safetensors --unfold --epochs 6
    torchrun --standalone --nproc_per_node 2 train_scripts/finetune_detection.py ... --resume
"""
import sys

from repan_zoo.detection.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Train a RepAn Zoo model: ``--method baseline | kd | repan`` (Algorithm 1 of the RepAn paper).

A thin wrapper around the ``repan-train`` console script (:mod:`repan_zoo.train_cli`); run
``python train_scripts/train.py --help`` for the options. Under ``torchrun`` it trains with
DistributedDataParallel (gloo on CPU, nccl on GPUs)::

    torchrun --standalone --nproc_per_node 2 train_scripts/train.py --method repan \
        --model repan_repvgg_a1_w025 --cycles 4 --epochs 3 --out runs/a1
"""
import sys

from repan_zoo.train_cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Publish a trained deploy checkpoint (thin wrapper of the ``repan-publish`` console script).

    python train_scripts/publish.py runs/a0/deploy.safetensors --metrics runs/a0/final.json \\
        --repo ORG/repan_repvgg_a0 --tag fmnist
"""
import sys

from repan_zoo.publish_cli import main

if __name__ == "__main__":
    sys.exit(main())

"""A tiny timm-registered Rep network for the trainer's tests (``tinyrep_test``).

Its name does not start with ``repan_`` so it never appears among the zoo's models. Three
RepBlocks (3×3 trunk + 1×1 + identity where shapes allow) and a linear head; it accepts
``deploy=True`` like the zoo's models. Test-only knobs (model kwargs):

``nan_after``   the training-mode forward number ``nan_after + 1`` and later return NaN logits
                (to test the divergence stop);
``step_delay``  seconds to sleep in every training-mode forward (to land a SIGKILL mid-epoch).

Subprocesses load it with ``repan-train --import tinyrep_models`` (``PYTHONPATH=tests``).
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn as nn
from timm.models import register_model

from repan_zoo.blocks import RepBlock

__all__ = ["TinyRep", "tinyrep_test"]


class TinyRep(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 8, deploy: bool = False,
                 nan_after: Optional[int] = None, step_delay: float = 0.0, bad_value: str = "nan", **_unused):
        super().__init__()
        w = width
        self.stem = RepBlock(in_chans, w, 3, stride=2, branches=("conv_1x1",), deploy=deploy)
        self.stage = nn.ModuleList([
            RepBlock(w, w, 3, stride=1, branches=("conv_1x1", "identity"), deploy=deploy),
            RepBlock(w, 2 * w, 3, stride=2, branches=("conv_1x1",), deploy=deploy),
        ])
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * w, num_classes)
        self.num_classes = num_classes
        self.nan_after = nan_after
        self.bad_value = float(bad_value)  # "nan" or "inf": what the logits become
        self.step_delay = step_delay
        self._train_forwards = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        for block in self.stage:
            x = self.act(block(x))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_head(self.forward_features(x))
        if self.training:
            self._train_forwards += 1
            if self.step_delay:
                time.sleep(self.step_delay)
            if self.nan_after is not None and self._train_forwards > self.nan_after:
                out = out * self.bad_value
        return out


@register_model
def tinyrep_test(pretrained: bool = False, **kwargs) -> TinyRep:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    model = TinyRep(**kwargs)
    model.pretrained_cfg = {"architecture": "tinyrep_test", "input_size": (kwargs.get("in_chans", 1), 28, 28),
                            "num_classes": model.num_classes}
    return model


def synthetic_splits(n_train: int = 256, n_val: int = 64, n_test: int = 64, seed: int = 0, num_classes: int = 10):
    """Random 1×28×28 uint8 images whose class shifts the brightness (learnable), as DataSplits:
    no dataset files needed."""
    from repan_zoo.data import DataSplits, ImageSet

    gen = torch.Generator().manual_seed(seed)

    def make(n: int, flip: bool) -> ImageSet:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        noise = torch.randint(0, 120, (n, 1, 28, 28), generator=gen)
        images = (noise + labels.view(-1, 1, 1, 1) * 12).clamp(0, 255).to(torch.uint8)
        return ImageSet(labels, images, flip=flip, seed=seed)

    return DataSplits(name="synthetic", train=make(n_train, True), val=make(n_val, False), test=make(n_test, False),
                      num_classes=num_classes, in_chans=1, input_size=(1, 28, 28), mean=(0.35,), std=(0.2,))

"""Shared test helpers (importable from any test file: ``from helpers import randomize_bn``)."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import pytest
import torch
import torch.nn as nn

from repan_zoo.blocks import RepBlock
from repan_zoo.randomize import randomize, randomize_bn, randomize_convs  # noqa: F401  (one copy, in the package)

_BN = nn.modules.batchnorm._BatchNorm


def rel_err(ref: torch.Tensor, new: torch.Tensor) -> float:
    """``max|new - ref| / max|ref|`` over the FULL tensor (borders included), in float64."""
    ref64, new64 = ref.detach().double(), new.detach().double()
    return ((new64 - ref64).abs().max() / ref64.abs().max()).item()


def make_input(channels: int = 8, size: int = 9, batch: int = 2, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen).to(dtype)


def snapshot(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached clone of the state dict (parameters and buffers), for bit-identity checks."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    """Same keys and bit-identical tensors (dtype included)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def training_flags(module: nn.Module) -> Dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


class Head(nn.Module):
    """A plain (non-Rep) module with its own conv + BN: must stay bit-identical through conversions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class TinyNet(nn.Module):
    """A small network with RepBlocks in nested containers next to plain modules.

    stem:   plain conv + BN (not a RepBlock)
    body:   Sequential of RepBlocks and ReLUs (stride 2, in≠out, DBB branches, depthwise)
    extra:  ModuleDict holding a RepBlock beside a plain Head
    """

    def __init__(self, in_ch: int = 3, width: int = 8, lam: float = 1.0):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_ch, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.body = nn.Sequential(
            RepBlock(w, w, 3, 1, branches=("conv_1x1", "identity"), lam=lam),
            nn.ReLU(),
            RepBlock(w, 2 * w, 3, 2, branches=("conv_1x1", "1x1_kxk", "conv_kx1", "conv_1xk"), lam=lam),
            nn.ReLU(),
            RepBlock(2 * w, 2 * w, 3, 1, groups=2 * w, branches=("identity", "avg", "conv_1x1"), lam=lam),
        )
        self.extra = nn.ModuleDict({"rep": RepBlock(2 * w, 2 * w, 1, branches=("conv_1x1",), lam=lam), "head": Head(2 * w)})

    def forward(self, x):
        y = self.body(self.stem(x))
        return self.extra["head"](torch.relu(self.extra["rep"](y)))


def bns_of(module: nn.Module) -> Iterable[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BN)]


@pytest.fixture
def single_thread():
    """One intra-op thread for the test, then the old count back. Tiny inputs gain nothing from
    threads, and on a busy 2-core machine OpenMP spin-waiting makes 2 threads several times slower.
    Use it with ``pytestmark = pytest.mark.usefixtures("single_thread")`` (after importing it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: one small model (and the kwargs that keep it small) per family and block type: conv / dws / basic /
#: bottleneck; RepVGG, MobileOne, MobileNet, ResNet plain / ACB / DBB branches (tests over "every family")
FAMILY_MODELS = [
    ("repan_repvgg_a0_w025", {}),
    ("repan_mobileone_s0", dict(width_mult=0.25)),
    ("repan_mobilenet", dict(width_mult=0.25)),
    ("repan_resnet18_w025", {}),
    ("repan_resnet18_acb_w025", {}),
    ("repan_resnet18_dbb_w025", {}),
    ("repan_resnet50_dbb", dict(width_mult=0.125)),
]
FAMILY_IDS = [name for name, _ in FAMILY_MODELS]


def hide_modules(monkeypatch, *modules: str) -> None:
    """Make ``import`` of each top-level module (and its submodules) fail for the rest of the test,
    as it does where the package is not installed (an optional extra left out)."""
    import sys

    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError

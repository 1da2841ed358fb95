"""Shared fixtures. Helpers that test files import live in ``tests/helpers.py``."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `from helpers import ...` in every layout

import fake_hub  # noqa: E402  weights-hub tests: a loopback Hub; HF_ENDPOINT must be set before huggingface_hub loads

fake_hub.install_session_hub()

from helpers import TinyNet, make_input, randomize  # noqa: E402


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: every random tensor of a test is reproducible."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tiny_net() -> TinyNet:
    """A train-form TinyNet in eval mode with random convs and random BN statistics."""
    return randomize(TinyNet(), seed=7)


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return make_input(channels=3, size=9, batch=2, seed=11)

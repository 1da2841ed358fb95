"""Shared fixtures. Helpers that test files import live in ``tests/helpers.py``."""
from __future__ import annotations

import os
import random
import sys

import numpy as np

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `from helpers import ...` in every layout

import fake_hub  # noqa: E402  weights-hub tests: a loopback Hub; HF_ENDPOINT must be set before huggingface_hub loads

fake_hub.install_session_hub()

from helpers import TinyNet, make_input, randomize  # noqa: E402


SEED = 0


def _seed_global_rngs() -> None:
    torch.manual_seed(SEED)
    random.seed(SEED)
    np.random.seed(SEED)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of a test is set up: a module / session fixture is built by the first test
    that asks for it, whichever that is (``-k``, ``--lf``), from the seeded global RNGs."""
    _seed_global_rngs()


@pytest.fixture(autouse=True)
def _seeded_test():
    """Each test starts from the seeded global RNGs (torch, random, numpy), whatever ran before and
    whichever module fixtures its setup built, as pytest-randomly resets them: a model whose init
    draws from the global RNG (a Linear head, timm's init) is the same in any order. Was: a module
    fixture's head depended on the files run earlier."""
    _seed_global_rngs()


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

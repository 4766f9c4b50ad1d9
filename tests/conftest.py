"""Shared fixtures: a fixed seed for every test and a helper that randomizes weights.

Freshly initialized models have zero biases, unit LayerNorms and tiny class tokens, so a converter
that forgot to copy one of them could still give equal logits. ``perturb`` fills every parameter with
random values first, so each parity test really compares the copied numbers.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch, numpy and random before every test so results never depend on test order."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture
def single_thread():
    """Run a test on one thread: on a shared 2-core machine small models are several times faster that way.

    Opt-in per module with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def perturb_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Add N(0, std^2) noise to every parameter (LayerNorm scales stay near 1, biases become non-zero)."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * std)
    return model


@pytest.fixture
def perturb() -> Callable[..., nn.Module]:
    return perturb_

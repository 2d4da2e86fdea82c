"""Shared fixtures: small models built offline from the tiny preset with random weights. The helpers the test
modules share (specs, corpora, fakes) are in ``helpers.py``."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import VARIANTS, tiny_spec

# Two cores: keep torch from oversubscribing them when tests run beside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_models():
    """One eval-mode tiny model per variant, built once per session (seed 0)."""
    from ilt_core.modeling.model import build_model

    models = {}
    for variant in VARIANTS:
        model = build_model(tiny_spec(variant), seed=0)
        model.eval()
        models[variant] = model
    return models

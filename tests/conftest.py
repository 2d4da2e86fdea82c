"""Shared fixtures: small models built offline from the tiny preset with random weights."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing them when tests run beside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))

VARIANTS = ("full", "image-only", "bytes-only")


def tiny_spec(variant: str = "full", **overrides) -> dict:
    """The tiny preset as a mapping, with one modality switched off for the variants."""
    from ilt_core.spec import load_spec

    spec = load_spec("tiny").to_dict()
    if variant == "image-only":
        spec["bytes_encoder"] = False
    elif variant == "bytes-only":
        spec["image_encoder"] = False
    spec["modality_dropout"] = 0.0
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def tiny_models():
    """One eval-mode tiny model per variant, built once per session (seed 0)."""
    from ilt_core.model import build_model

    models = {}
    for variant in VARIANTS:
        model = build_model(tiny_spec(variant), seed=0)
        model.eval()
        models[variant] = model
    return models

"""Shared fixtures: small models built offline from the tiny preset with random weights."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing them when tests run beside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))

VARIANTS = ("full", "image-only", "bytes-only")  # ilt_core.specs.spec.VARIANTS, in this order


def tiny_spec(variant: str = "full", **overrides) -> dict:
    """The tiny preset as a mapping, one modality off for the variants, no modality dropout."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("tiny", variant, **{"modality_dropout": 0.0, **overrides})


#: The tiny preset shrunk to a few hundred thousand parameters per component: learning and memorisation tests
#: show their invariants as well on it, in a fraction of the time (``ilt build tiny --set ...`` does the same).
MICRO = (
    "image_encoder.config.hidden_size=64",
    "image_encoder.config.num_hidden_layers=2",
    "image_encoder.config.num_attention_heads=2",
    "image_encoder.config.intermediate_size=128",
    "bytes_encoder.config.hidden_size=64",
    "bytes_encoder.config.num_hidden_layers=1",
    "bytes_encoder.config.intermediate_size=128",
    "latent_transformer.config.hidden_size=128",
    "latent_transformer.config.num_hidden_layers=2",
    "latent_transformer.config.num_attention_heads=4",
    "latent_transformer.config.intermediate_size=256",
    "bytes_decoder.config.hidden_size=128",
    "bytes_decoder.config.num_hidden_layers=2",
    "bytes_decoder.config.num_attention_heads=4",
    "bytes_decoder.config.num_key_value_heads=4",
    "bytes_decoder.config.intermediate_size=256",
)


def micro_spec(variant: str = "full", **overrides) -> dict:
    """:func:`tiny_spec` with every backbone shrunk (:data:`MICRO`): same architectures, about 1/30 the work."""
    from ilt_core.specs.spec import load_spec, spec_variant

    return spec_variant(load_spec("tiny", MICRO), variant, **{"modality_dropout": 0.0, **overrides})


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

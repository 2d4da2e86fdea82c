"""Shared fixtures: small models built offline from the tiny preset with random weights."""

from __future__ import annotations

import contextlib
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


def micro_spec(variant: str = "full", **overrides) -> dict:
    """The ``micro`` preset (tiny's architectures, narrowed) as a mapping, like :func:`tiny_spec`: learning and
    memorisation tests show their invariants as well on it, in a fraction of the time."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("micro", variant, **{"modality_dropout": 0.0, **overrides})


class SavedBytes:
    """Counts the bytes of the distinct storages autograd keeps for backward while the context is open."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return t


@contextlib.contextmanager
def saved_bytes():
    """``with saved_bytes() as kept: ...forward...``; then ``kept.total`` is what backward would keep, in bytes."""
    kept = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(kept.pack, lambda t: t):
        yield kept


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

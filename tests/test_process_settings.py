"""A library call leaves the process around it as it found it.

Building a model, calling it (training and inference), generating and loading one change none of torch's, numpy's
or OpenBLAS's settings, the C library's allocator or the random states; generating from several threads at once
gives each thread what it gets alone. (The process-wide settings the ``ilt train`` command makes are tested in
``test_training_memory.py``.)
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import micro_spec

from ilt_core.modeling import memory, products
from ilt_core.modeling.model import ILTModel, build_model

TEXTS = ["שלום עולם, מה שלומך", "hello there, world"]


def settings() -> dict:
    """Every process-wide setting a model call could change, as comparable values."""
    import transformers

    return {
        "torch threads": torch.get_num_threads(),
        "torch inter-op threads": torch.get_num_interop_threads(),
        "OpenBLAS threads": products.openblas_threads(),
        "default dtype": torch.get_default_dtype(),
        "grad enabled": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "anomaly detection": torch.is_anomaly_enabled(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "numpy errors": np.geterr(),
        "environment": dict(os.environ),
        "working directory": os.getcwd(),
        "transformers verbosity": transformers.logging.get_verbosity(),
    }


def random_states() -> dict:
    return {
        "torch": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
        "numpy": hashlib.sha256(np.random.get_state()[1].tobytes()).hexdigest(),
        "python": random.getstate(),
    }


@pytest.fixture
def spied(monkeypatch) -> list:
    """The calls that would change the allocator or OpenBLAS's thread count, recorded (and still made)."""
    calls: list = []
    real_mallopt = memory._mallopt
    monkeypatch.setattr(memory, "_mallopt", lambda *s: calls.append(("mallopt", s)) or real_mallopt(*s))
    found = products._openblas_threads()
    if found is not None:
        setter, getter = found
        monkeypatch.setattr(
            products, "_openblas_threads", lambda: (lambda n: calls.append(("openblas", n)) or setter(n), getter)
        )
    return calls


def test_build_call_generate_and_load_change_no_process_setting(spied, tmp_path) -> None:
    torch.manual_seed(123)
    before, states = settings(), random_states()
    model = build_model(micro_spec(modality_dropout=0.15), seed=0)  # its own seed: the caller's state untouched
    model.eval()
    assert model.generate(["שלום "], max_new_units=2) and model.generate(
        ["hi "], max_new_units=2, do_sample=True, seed=3
    )
    model.save_pretrained(tmp_path)
    loaded = ILTModel.from_pretrained(tmp_path)
    assert loaded.generate(["שלום "], max_new_units=2) == model.generate(["שלום "], max_new_units=2)
    assert random_states() == states
    # a training step (dropout draws from torch's random state, as any torch module's does) and inference
    inputs = model.processor(TEXTS).model_inputs()
    model.train()
    model(**inputs).loss.backward()
    model.eval()
    with torch.no_grad():
        model(**inputs)
    assert settings() == before
    assert spied == []


def test_with_openblas_on_one_thread_the_products_split_and_nothing_changes(spied) -> None:
    assert products.openblas_threads() is not None  # numpy's wheels ship OpenBLAS
    model = build_model(micro_spec(), seed=0).eval()
    inputs = model.processor(TEXTS * 8).model_inputs()  # enough rows for a product to be split
    with torch.no_grad():
        threaded = model(**inputs).logits
    before = products.set_openblas_threads(1)  # what a process's start-up does (the `ilt` command)
    try:
        assert before is not None and settings()["OpenBLAS threads"] == 1
        with torch.no_grad():
            split = model(**inputs).logits
        assert settings()["OpenBLAS threads"] == 1
    finally:
        products.set_openblas_threads(before)
    torch.testing.assert_close(split, threaded)
    assert spied == ([] if before == 1 else [("openblas", 1), ("openblas", before)])  # the test's own two calls


def test_threads_generating_at_once_each_get_what_they_get_alone() -> None:
    model = build_model(micro_spec(), seed=0).eval()
    jobs = [  # greedy, and two seeded samplings: each seeds torch's one random state
        (["שלום "], dict(max_new_units=3)),
        (["hello there "], dict(max_new_units=3, do_sample=True, seed=3)),
        (["עולם ", "world "], dict(max_new_units=3, do_sample=True, top_k=20, seed=11)),
    ]
    alone = [model.generate(prompts, **options) for prompts, options in jobs]
    start = threading.Barrier(len(jobs))

    def run(job: tuple) -> list[str]:
        start.wait()
        return model.generate(job[0], **job[1])

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(run, jobs)) == alone

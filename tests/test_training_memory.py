"""Memory of a training step: ``ilt train --cpu_malloc reuse`` reuses freed pages, ``return`` gives them back, and
nothing else (building, a training step, activation checkpointing) touches the C library's settings.

Each check runs in a fresh interpreter (the C library's allocation settings are process-wide), and measures bytes
and page faults, not time: large blocks like a step's activations are allocated and freed, and the process's
resident memory must drop by what was freed (``return``), or a block allocated again must reuse the freed pages
without faulting them in afresh (``reuse``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, resource, sys, torch
    from ilt_core.modeling.memory import set_cpu_malloc
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import spec_variant

    mode, malloc = sys.argv[1], sys.argv[2]
    undo = set_cpu_malloc(malloc)
    spec = spec_variant("micro", "bytes-only", modality_dropout=0.0)
    spec["activation_checkpointing"] = mode == "built"  # built with checkpointing on (no step: glibc's
    model = build_model(spec, seed=0)  # threshold then stays where it starts, below 3 MiB blocks)
    if mode in ("train", "undone"):  # a training step
        model.train()
        model(**model.processor(["a short text to train on, twice.", "another one"]).model_inputs()).loss.backward()
    if mode == "undone":
        undo()

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    # 40 activations of 3 MiB, each followed by a small block that stays alive (as autograd's small tensors do),
    # after one 3 MiB block was freed first (as in any step after the first)
    n = 3 * 2**20 // 4
    first = torch.ones(n)
    del first
    big, small = [], []
    for _ in range(40):
        big.append(torch.ones(n))
        small.append(torch.ones(4096))
    before = rss()
    big.clear()
    dropped = before - rss()
    # a 48 MiB activation (above glibc's largest mapping threshold), allocated and freed as in two steps, then again
    for _ in range(2):
        block = torch.ones(12 * 2**20)
        del block
    start = faults()
    block = torch.ones(12 * 2**20)
    print(json.dumps({"freed": 40 * n * 4, "dropped": dropped, "pages": 48 * 256, "faults": faults() - start}))
    """
)


#: (what the probe does, --cpu_malloc): a training step or a checkpointed build, with or without the setting
PROBES = [("built", "return"), ("built", "default"), ("train", "reuse"), ("train", "default"), ("undone", "reuse")]


@pytest.fixture(scope="module")
def probes() -> dict[tuple[str, str], dict[str, int]]:
    """Every probe, each in its own interpreter, all started at once (each measures only its own process)."""
    running = {
        key: subprocess.Popen(
            [sys.executable, "-c", PROBE, *key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key in PROBES
    }
    results = {}
    for key, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, (key, err[-2000:])
        results[key] = json.loads(out.strip().splitlines()[-1])
    return results


def returned(r: dict[str, int]) -> bool:
    """The freed 3 MiB blocks left the process."""
    return r["dropped"] >= 0.9 * r["freed"]


def reused(r: dict[str, int]) -> bool:
    """The 48 MiB block came back without faulting its pages in again."""
    return r["faults"] <= 0.05 * r["pages"]


def test_return_gives_freed_activations_back_to_the_system(probes):
    on = probes["built", "return"]
    assert returned(on) and not reused(on), on
    # a model built with activation checkpointing does not do it by itself: the freed blocks stay resident
    off = probes["built", "default"]
    assert off["dropped"] <= 0.5 * off["freed"], off


def test_reuse_keeps_freed_pages_for_the_next_step(probes):
    assert reused(probes["train", "reuse"])
    # a training step does not do it by itself: a block that large is mapped afresh, every page faulted in
    r = probes["train", "default"]
    assert r["faults"] >= 0.9 * r["pages"], r


def test_what_set_cpu_malloc_returns_undoes_it(probes):
    r = probes["undone", "reuse"]  # glibc's defaults back (its threshold fixed at 128 KiB): both blocks unmapped
    assert not reused(r) and returned(r), r


def test_ilt_train_sets_the_option_once_and_undoes_it_on_return(monkeypatch):
    from ilt_core.errors import ILTError
    from ilt_core.training import run

    calls = []
    monkeypatch.setattr(run, "set_cpu_malloc", lambda policy: calls.append(policy) or (lambda: calls.append("undo")))
    with pytest.raises(ILTError, match="max_train_minutes"):  # a bad argument after the start: undone all the same
        run.run_training(["--model_spec", "micro", "--output_dir", "x", "--cpu_malloc", "return"]
                         + ["--max_train_minutes", "-1"])  # fmt: skip
    assert calls == ["return", "undo"]
    calls.clear()
    with pytest.raises(ILTError, match="max_train_minutes"):  # by default: freed pages kept for the next step
        run.run_training(["--model_spec", "micro", "--output_dir", "x", "--max_train_minutes", "-1"])
    assert calls == ["reuse", "undo"]

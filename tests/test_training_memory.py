"""Memory of a training step: the process reuses freed pages for speed, or returns them with checkpointing.

Each check runs in a fresh interpreter (the C library's allocation settings are process-wide and sticky), and
measures bytes and page faults, not time: large blocks like a step's activations are allocated and freed, and the
process's resident memory must drop by what was freed (memory-saving configuration), or a block allocated again
must reuse the freed pages without faulting them in afresh (a training forward's default).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, resource, sys, torch
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import spec_variant

    mode = sys.argv[1]
    spec = spec_variant("micro", "bytes-only", modality_dropout=0.0)
    spec["activation_checkpointing"] = mode == "checkpointed"
    model = build_model(spec, seed=0)
    inputs = model.processor(["a short text to train on, twice.", "another one"]).model_inputs()
    if mode in ("checkpointed", "train"):
        model.train()
        model(**inputs).loss.backward()
    elif mode == "eval":
        model.eval()
        with torch.no_grad():
            model(**inputs)

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


def probe(mode: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_activation_checkpointing_returns_freed_activations_to_the_system():
    on = probe("checkpointed")  # a training step ran too: it must not switch the process back to keeping them
    assert on["dropped"] >= 0.9 * on["freed"], on
    # without it, the same blocks stay resident: the setting is what returns them
    off = probe("plain")
    assert off["dropped"] <= 0.5 * off["freed"], off


def test_training_forward_reuses_freed_pages():
    train = probe("train")
    assert train["faults"] <= 0.05 * train["pages"], train
    # inference leaves the C library's default: a block that large is mapped afresh, every page faulted in
    inference = probe("eval")
    assert inference["faults"] >= 0.9 * inference["pages"], inference


def test_memory_settings_report_whether_they_applied():
    from ilt_core.modeling import memory

    assert memory.return_freed_memory() == (memory._libc() is not None)
    assert not memory.keep_freed_memory()  # returning memory was asked first: it stays

"""Memory of the memory-saving configuration: what activation checkpointing frees leaves the process.

Each check runs in a fresh interpreter (the C library's allocation settings are process-wide and sticky).
Budgets are in bytes: a block pattern like a training step's (large activations between small blocks that stay)
is allocated and freed, and the process's resident memory must drop by what was freed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# 40 activations of 3 MiB, each followed by a small block that stays alive (as autograd's small tensors do),
# after one 3 MiB block was freed first (as in any step after the first): the freed 120 MiB either leave the
# process or stay in the heap between the small blocks.
PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import spec_variant

    spec = spec_variant("micro", "bytes-only", modality_dropout=0.0)
    spec["activation_checkpointing"] = sys.argv[1] == "on"
    model = build_model(spec, seed=0)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    n = 3 * 2**20 // 4
    first = torch.ones(n)
    del first  # a first large block freed: glibc raises its mapping threshold to its size
    big, small = [], []
    for _ in range(40):
        big.append(torch.ones(n))
        small.append(torch.ones(4096))
    before = rss()
    big.clear()
    print(json.dumps({"freed": 40 * n * 4, "dropped": before - rss()}))
    """
)


def probe(checkpointing: bool) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "on" if checkpointing else "off"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_activation_checkpointing_returns_freed_activations_to_the_system():
    on = probe(True)
    assert on["dropped"] >= 0.9 * on["freed"], on
    # without it, the same blocks stay resident: the setting is what returns them
    off = probe(False)
    assert off["dropped"] <= 0.5 * off["freed"], off


def test_return_freed_memory_reports_whether_it_applied():
    from ilt_core.modeling import memory

    applied = memory.return_freed_memory()
    assert applied == (memory._libc() is not None)

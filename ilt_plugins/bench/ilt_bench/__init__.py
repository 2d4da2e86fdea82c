"""ILT plugin ``bench``: the benchmark harness (``ilt bench``) and the code every benchmark script shares.

- ``harness``, ``run``, ``report``, ``baselines``, ``mixes``: ``ilt bench`` (mixes trained on the same budget,
  seeds, learning-rate sweeps, the report).
- ``machine``: the machine facts, package versions and process memory every benchmark records.
- ``common``: benchmark texts, timing, JSON, and the one way a script starts a child process (``run_child``).
- ``setups``, ``matmuls``, ``corpora``, ``marks``: the reference setup and a training step, a step's matrix
  products, generated corpora, and a Trainer callback for the training children (``benchmarks/*.py``).
"""

from __future__ import annotations

from ilt_core import hookimpl


@hookimpl
def ilt_cli_commands(subparsers) -> None:
    """``ilt bench``."""
    from ilt_bench.harness import add_bench_parser

    add_bench_parser(subparsers)

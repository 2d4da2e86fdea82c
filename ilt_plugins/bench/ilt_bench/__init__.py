"""ILT plugin ``bench``: the benchmark harness (``ilt bench``), its mixes, baselines and report."""

from __future__ import annotations

from ilt_core import hookimpl


@hookimpl
def ilt_cli_commands(subparsers) -> None:
    """``ilt bench``."""
    from ilt_bench.harness import add_bench_parser

    add_bench_parser(subparsers)

"""Pool the rounds of several ``bench_reference.py`` runs: medians over every round, and per-round ratios.

    python benchmarks/pool_rounds.py results/reference/train-fast-norm-rope-2026-12-01-run*.log

Reads the ``| figure | reference | project | ratio |`` table each run prints (its log), takes every round's
reference and project figure of the words/s rows, and prints, per figure: the median of each side over all rounds,
their ratio, the per-round ratios (round i of the reference against round i of the project: they ran A/B, one after
the other) with their median, and how many rounds reach ``--goal``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

ROW = re.compile(r"^\| (\w+_words_per_s) \| ([^|]+) \| ([^|]+) \|", re.MULTILINE)


def rounds(text: str) -> dict[str, list[tuple[float, float]]]:
    """figure -> [(reference, project)] for every round of one run's table."""
    out: dict[str, list[tuple[float, float]]] = {}
    for figure, ref, ours in ROW.findall(text):
        if "-" in (ref.strip(), ours.strip()):  # a figure only one side measured (checkpointing: the reference's)
            continue
        pairs = zip(
            (float(x.replace(",", "")) for x in ref.split(", ")),
            (float(x.replace(",", "")) for x in ours.split(", ")),
            strict=True,
        )
        out.setdefault(figure, []).extend(pairs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", type=Path, nargs="+", help="bench_reference.py outputs (their printed tables)")
    p.add_argument("--goal", type=float, default=1.5, help="the ratio each round is checked against (default 1.5)")
    args = p.parse_args(argv)
    pooled: dict[str, list[tuple[float, float]]] = {}
    for log in args.logs:
        found = rounds(log.read_text(encoding="utf-8"))
        if not found:
            raise SystemExit(f"pool_rounds: {log}: no '| ..._words_per_s | reference | project |' table in it")
        for figure, pairs in found.items():
            pooled.setdefault(figure, []).extend(pairs)
    for figure, pairs in pooled.items():
        ref = statistics.median(r for r, _ in pairs)
        ours = statistics.median(o for _, o in pairs)
        ratios = sorted(o / r for r, o in pairs)
        reached = sum(x >= args.goal for x in ratios)
        print(
            f"{figure}: {len(pairs)} rounds; medians reference {ref:.1f}, project {ours:.1f}, ratio {ours / ref:.3f}; "
            f"per-round ratios {', '.join(f'{x:.3f}' for x in ratios)} (median {statistics.median(ratios):.3f}); "
            f"{reached} of {len(pairs)} rounds >= {args.goal:g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

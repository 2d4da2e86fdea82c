"""Streaming training data (`ilt train --streaming`): start-up and memory by corpus size, and the pipeline's words/s by workers.

    .venv/bin/python benchmarks/bench_stream.py --out benchmarks/results/bench_stream.json
    .venv/bin/python benchmarks/bench_stream.py --sizes 10 100 --steps 50 --pipeline-batches 100
    .venv/bin/python benchmarks/bench_stream.py --quick                      # smoke run (tiny corpora)
    .venv/bin/python benchmarks/bench_stream.py --sizes 1000 --pipeline-only --pipeline-batches 400   # part 2 only

The corpora are ``bench_data_scale.py``'s (:func:`ilt_bench.corpora.make_corpus`: the same generator, sizes,
shards and ``--work`` folder, so a corpus either script wrote is reused): Hebrew lines from he-news and he-mishnah with a share of
their words respelled, as ``--shards`` parquet shards with a ``text`` column.

1. **Streaming runs.** For each size, one fresh process trains the same small model as
   ``bench_data_scale.py`` for ``--steps`` optimizer steps with ``--streaming`` on the parquet shards
   (``--loader-workers`` DataLoader workers), and reports the seconds from launch to the end of the
   first step and the peak RSS over the steps (the main process; each worker is a process of its
   own, reported as the workers' peak). Goal (issue 14): at the largest size, time to step 1 within
   +20% of the smallest size's, and peak RSS within +15%.
2. **Pipeline words/s (no model).** For 0, 1 and 2 workers (``--pipeline-workers``), one fresh
   process streams the largest corpus in batches of ``ilt train``'s default shape (8 rows x 256 units;
   ``--pipeline-batch-size``, ``--pipeline-block-size``) through :class:`ilt_core.training.stream_loader.StreamingLoader`
   (segmenting, blocking, packing, rendering the word images and encoding the bytes, as training
   does, with the small model's processor) and counts the units (words with their whitespace) of
   ``--pipeline-batches`` batches after the first (worker start-up excluded; ``--pipeline-warmup W``:
   after the first W, when the render caches, one per worker, are warmer). Goal: 2 workers give
   at least 1.7x the words/s of 1 (needs 2 free cores: on a shared machine the figure says how much
   the others left). ``--pipeline-rounds R`` runs the 0, 1, 2 workers R times, interleaved, and
   reports each count's median run and the median of the rounds' 2-vs-1 ratios. Beside words/s, the
   CPU milliseconds per batch of the main process (all its threads: what training's main process,
   which also runs the model, gives to the data) and of the workers together. ``--pipeline-scaling``:
   each round also runs two 0-worker pipelines at once in two processes; their summed words/s over
   the round's one alone is what the machine gives two processes of this work with nothing sent
   between them: the most 2 workers can give over 1 here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

from ilt_bench import common  # noqa: E402
from ilt_bench.corpora import SMALL_MODEL, make_corpus  # noqa: E402
from ilt_bench.marks import StepMarks  # noqa: E402

from ilt_core.training.arguments import DEFAULT_BLOCK_SIZE  # noqa: E402

RSS_GOAL = 1.15
FIRST_STEP_GOAL = 1.20
WORKERS_GOAL = 1.7
#: transformers' TrainingArguments.per_device_train_batch_size default, which ilt train keeps
PIPELINE_BATCH_SIZE = 8


def _children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train with --streaming and measure (in its own process)."""

    from ilt_core.training import run as training_run

    marks: dict[str, Any] = {}

    argv = [
        "--model_spec", "tiny", "--set", *SMALL_MODEL,
        "--train_file", spec["train_file"],
        "--streaming",
        "--dataloader_num_workers", str(spec["loader_workers"]),
        "--do_train",
        "--output_dir", spec["output_dir"],
        "--block_size", str(spec["block_size"]),
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--max_steps", str(spec["steps"]),
        *common.QUIET_TRAINING_ARGS,
    ]  # fmt: skip
    result = training_run.run_training(argv, callbacks=[StepMarks(marks, spec["launched"], spec["steps"])])
    marks["units"] = result.train_metrics.get("train_units")
    marks["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    marks["workers_peak_rss_mib"] = _children_peak_mib() if spec["loader_workers"] else 0.0
    return marks


def pipeline_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The data pipeline alone: batches from a StreamingLoader with ``workers`` workers; units per second."""
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import load_spec
    from ilt_core.text.row_collator import UnitCollator
    from ilt_core.training.shards import TextStream
    from ilt_core.training.sources import resolve_source
    from ilt_core.training.stream_dataset import StreamingRows
    from ilt_core.training.stream_loader import StreamingLoader

    model = build_model(load_spec("tiny", list(SMALL_MODEL)), seed=0)
    source = resolve_source(spec["train_file"], "--train_file", None)
    stream = TextStream(source.description, source.column, "--train_file", source.files)
    dataset = StreamingRows(
        stream, model.processor, spec["block_size"], spec["batch_size"], num_workers=spec["workers"], seed=0
    )
    sink = UnitCollator(model.processor, spec["block_size"])
    loader = StreamingLoader(dataset, sink, prefetch_factor=4 if spec["workers"] else None)
    start = time.perf_counter()
    first = None
    skip = spec.get("warmup", 1)
    for i, _ in enumerate(loader):
        if i == skip - 1:  # worker start-up and the first batches (default: 1): not counted
            first = time.perf_counter()
            units0 = sink.stats["units"]
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        if i == skip - 1 + spec["batches"]:
            break
    seconds = time.perf_counter() - first
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    units = sink.stats["units"] - units0
    del loader  # the workers exit and are waited for: their CPU time is then the children's
    workers_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "workers": spec["workers"],
        "batches": spec["batches"],
        "units": units,
        "seconds": seconds,
        "words_per_s": units / seconds,
        "first_batch_s": first - start,
        "collate_seconds_in_workers": sink.stats["seconds"],
        "main_cpu_ms_per_batch": 1e3
        * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
        / spec["batches"],
        # all batches, the warm-up included (its CPU time cannot be told apart in the workers)
        "workers_cpu_ms_per_batch": 1e3 * (workers_cpu.ru_utime + workers_cpu.ru_stime) / (spec["batches"] + skip),
    }


def run_child(kind: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
    return run_children_at_once(kind, [spec], label)[0]


def run_children_at_once(kind: str, specs: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """:func:`run_child` for several children started together (each its own process, running side by side)."""
    commands = [
        [sys.executable, __file__, f"--{kind}-child", json.dumps({**s, "launched": time.time()})] for s in specs
    ]
    return common.run_children(commands, label)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[10, 100, 1000], help="corpus sizes in MB")
    p.add_argument("--shards", type=int, default=8, help="parquet shards per corpus")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per streaming run")
    p.add_argument("--loader-workers", type=int, default=0, help="--dataloader_num_workers of the streaming runs")
    p.add_argument("--pipeline-workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pipeline-batches", type=int, default=200, help="batches timed per pipeline run")
    p.add_argument(
        "--pipeline-warmup",
        type=int,
        default=1,
        help="batches made before the timed ones (default 1: worker start-up; more: warmer render caches, one per worker)",
    )
    p.add_argument(
        "--pipeline-rounds", type=int, default=1, help="pipeline runs per worker count, interleaved (medians reported)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="rows per step of the streaming runs")
    p.add_argument("--block-size", type=int, default=32, help="units per row (positions) of the streaming runs")
    p.add_argument(
        "--pipeline-batch-size",
        type=int,
        default=PIPELINE_BATCH_SIZE,
        help="rows per batch of the pipeline runs (default: ilt train's, Trainer's per_device_train_batch_size)",
    )
    p.add_argument(
        "--pipeline-block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help="units per row of the pipeline runs (default: ilt train's --block_size)",
    )
    p.add_argument("--respell", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/ilt-bench-data-scale"), help="corpora (shared)")
    p.add_argument("--quick", action="store_true", help="smoke run: corpora of 0.1 and 0.3 MB, 2 steps, 5 batches")
    p.add_argument(
        "--pipeline-only", action="store_true", help="only part 2, the pipeline's words/s, on the largest size"
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--train-child", help=argparse.SUPPRESS)
    p.add_argument(
        "--pipeline-scaling",
        action="store_true",
        help="each round also runs two 0-worker pipelines at once, in two processes: their summed words/s over one "
        "alone is what this machine gives two processes doing this work side by side, the bound of 2 workers vs 1",
    )
    p.add_argument("--pipeline-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if common.answer_as_child(args, {"train_child": train_child, "pipeline_child": pipeline_child}):
        return 0
    if args.quick:
        args.sizes, args.steps, args.shards, args.pipeline_batches = [0.1, 0.3], 2, 3, 5
        args.pipeline_batch_size, args.pipeline_block_size = args.batch_size, args.block_size

    args.work.mkdir(parents=True, exist_ok=True)
    if args.pipeline_only:
        args.sizes = args.sizes[-1:]
    corpora = [make_corpus(size, args.work, args.shards, args.respell, args.seed) for size in args.sizes]
    base = {"block_size": args.block_size, "batch_size": args.batch_size, "output_dir": str(args.work / "out-stream")}
    runs = []
    for corpus in [] if args.pipeline_only else corpora:
        label = f"{corpus['size_mb']:g} MB parquet, streaming"
        common.log(f"{label}: training {args.steps} steps, {args.loader_workers} workers")
        spec = {**base, "train_file": corpus["parquet"], "steps": args.steps, "loader_workers": args.loader_workers}
        r = run_child("train", spec, label)
        runs.append({"size_mb": corpus["size_mb"], "corpus_bytes": corpus["bytes"], **r})
        common.log(f"{label}: first step at {r['first_step_s']:.1f} s, peak RSS {r['peak_rss_steps_mib']:.0f} MiB")
    rounds: dict[int, list[dict[str, Any]]] = {w: [] for w in args.pipeline_workers}
    shape = {"block_size": args.pipeline_block_size, "batch_size": args.pipeline_batch_size}
    scaling: list[list[dict[str, Any]]] = []  # per round: two 0-worker pipelines run at once
    largest = corpora[-1]
    for k in range(args.pipeline_rounds):  # interleaved: 0, 1, 2 workers, then again
        for workers in args.pipeline_workers:
            label = f"pipeline {largest['size_mb']:g} MB, {workers} workers (round {k + 1})"
            spec = {**base, **shape, "train_file": largest["parquet"], "workers": workers}
            spec["batches"] = args.pipeline_batches
            spec["warmup"] = max(1, args.pipeline_warmup)
            r = run_child("pipeline", spec, label)
            rounds[workers].append(r)
            common.log(f"{label}: {r['words_per_s']:,.0f} words/s")
        if args.pipeline_scaling:
            label = f"pipeline {largest['size_mb']:g} MB, two 0-worker processes at once (round {k + 1})"
            spec = {**base, **shape, "train_file": largest["parquet"], "workers": 0}
            spec["batches"] = args.pipeline_batches
            spec["warmup"] = max(1, args.pipeline_warmup)
            pair = run_children_at_once("pipeline", [spec, spec], label)
            scaling.append(pair)
            rates = " + ".join(f"{r['words_per_s']:,.0f}" for r in pair)
            common.log(f"{label}: {rates} words/s")
    # per worker count, the run with the median words/s (of an odd number of rounds; the upper middle otherwise)
    pipeline = [sorted(rs, key=lambda r: r["words_per_s"])[len(rs) // 2] for rs in rounds.values()]
    goals: dict[str, Any] = {}
    if runs:
        small, large = runs[0], runs[-1]
        goals["first_step_ratio"] = large["first_step_s"] / small["first_step_s"]
        goals["peak_rss_steps_ratio"] = large["peak_rss_steps_mib"] / small["peak_rss_steps_mib"]
    goals["two_vs_one_worker"] = None
    if 1 in rounds and 2 in rounds:
        # the median of the per-round ratios: each round's 1 and 2 workers ran one after the other
        ratios = sorted(b["words_per_s"] / a["words_per_s"] for a, b in zip(rounds[1], rounds[2], strict=True))
        goals["two_vs_one_worker"] = ratios[len(ratios) // 2]
        goals["two_vs_one_worker_rounds"] = ratios
    if scaling and 0 in rounds:
        # per round: two processes side by side against one alone (the round's 0-worker run)
        bounds = sorted(
            sum(r["words_per_s"] for r in pair) / alone["words_per_s"]
            for pair, alone in zip(scaling, rounds[0], strict=True)
        )
        goals["two_processes_vs_one"] = bounds[len(bounds) // 2]
        goals["two_processes_vs_one_rounds"] = bounds
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if "child" not in k},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "corpora": corpora,
        "streaming_runs": runs,
        "pipeline": pipeline,
        "pipeline_rounds": {str(w): rs for w, rs in rounds.items()},
        "pipeline_two_at_once": scaling,
        "goals": goals,
    }
    common.write_json(args.out, report)
    if runs:
        print("| corpus | time to step 1 | peak RSS, steps (main) | peak RSS, workers | steps/s |")
        print("| --- | --- | --- | --- | --- |")
    for r in runs:
        rate = (args.steps - 1) / r["steps_s"] if r["steps_s"] > 0 else 0.0
        print(
            f"| {r['size_mb']:g} MB | {r['first_step_s']:.1f} s | {r['peak_rss_steps_mib']:,.0f} MiB "
            f"| {r['workers_peak_rss_mib']:,.0f} MiB | {rate:.2f} |"
        )
    print("\n| DataLoader workers | words/s | untimed start | CPU ms a batch, main process | CPU ms a batch, workers |")
    print("| --- | --- | --- | --- | --- |")
    for r in pipeline:
        print(
            f"| {r['workers']} | {r['words_per_s']:,.0f} | {r['first_batch_s']:.1f} s | {r['main_cpu_ms_per_batch']:.2f} "
            f"| {r['workers_cpu_ms_per_batch']:.2f} |"
        )
    if runs:
        print(
            f"\n{large['size_mb']:g} MB vs {small['size_mb']:g} MB: time to step 1 x{goals['first_step_ratio']:.2f} "
            f"(goal <= {FIRST_STEP_GOAL}), peak RSS over the steps x{goals['peak_rss_steps_ratio']:.2f} "
            f"(goal <= {RSS_GOAL})"
        )
    if goals["two_vs_one_worker"] is not None:
        each = ", ".join(f"x{q:.2f}" for q in goals["two_vs_one_worker_rounds"])
        rounds_note = f" (median of {len(rounds[1])} rounds: {each})" if len(rounds[1]) > 1 else ""
        print(f"2 workers vs 1: x{goals['two_vs_one_worker']:.2f} words/s{rounds_note} (goal >= {WORKERS_GOAL})")
    if "two_processes_vs_one" in goals:
        each = ", ".join(f"x{q:.2f}" for q in goals["two_processes_vs_one_rounds"])
        print(
            f"two 0-worker pipelines at once vs one alone: x{goals['two_processes_vs_one']:.2f} words/s ({each}): "
            "what this machine gives two processes of this work, with nothing sent between them"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

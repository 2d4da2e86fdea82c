"""What a training step costs a GPU in launches and waits, counted on any machine (the CPU stand-in for CUDA's
sync debug mode and a profiler's kernel count).

For each preset and batch size (rows x block units), eager float32 and bf16 autocast, the dynamic batches of
``ilt train`` and the fixed-shape ones (``--fixed_shapes``): aten ops of the forward, the backward and the optimizer
step (each one kernel launch on a GPU), host syncs in the forward, and, for the fixed batches, graph breaks
(``torch._dynamo.explain``) and recompiles over ``--compile-batches`` batches of real text after
``--warmup-batches`` (default 1) warm-up batches (``torch.compile(fullgraph=True, dynamic=False)`` with the ``eager``
backend: dynamo's guards decide recompiles, not the backend). ``--grow-only`` makes capacities never shrink, as
``ilt train --torch_compile`` does; ``--compile-only`` counts only graph breaks and recompiles:

    .venv/bin/python benchmarks/bench_ops.py --text data/he-news/train.txt --sizes 8x128 --compile-only \
        --grow-only --warmup-batches 5

The fast paths are off (``ILTModel.set_fast_paths(False)``: no numpy products, norms, rotary embeddings or length
groups of the CPU's own): the path counted is the one a GPU runs.

    .venv/bin/python benchmarks/bench_ops.py --text data/he-news/train.txt --speed-rounds 10 \
        --out benchmarks/results/bench_ops.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from ilt_bench.opcount import DispatchCount

from ilt_core import build_model, load_spec
from ilt_core.text.collator import TextUnits, pack_rows


def batches(model, texts: list[str], rows: int, row_units: int, count: int) -> list[list[TextUnits]]:
    """``count`` batches of ``rows`` packed rows each, in text order (what ``ilt train`` packs)."""
    segmented = [TextUnits(model.processor.segment(t)) for t in texts if t.strip()]
    segmented = [t if len(t.units) + 1 <= row_units else TextUnits(t.units[: row_units - 1], False) for t in segmented]
    packed = pack_rows([len(t.units) + 1 for t in segmented], row_units)
    out = []
    for start in range(0, len(packed) - rows + 1, rows):
        out.append([segmented[i] for row in packed[start : start + rows] for i in row])
        if len(out) == count:
            break
    if len(out) < count:
        raise SystemExit(f"the text holds {len(out)} batches of {rows} x {row_units} units, not {count}")
    return out


def count_step(model, inputs: dict, optimizer, autocast: bool) -> dict[str, int]:
    """Ops of one forward, backward and optimizer step, and the forward's host syncs."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:  # warm-up: lazily made state (masks, tables) out of the way
        model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    with DispatchCount() as fwd, ctx:
        loss = model(**inputs).loss
    with DispatchCount() as bwd:
        loss.backward()
    with DispatchCount() as opt:
        optimizer.step()
    optimizer.zero_grad()
    return {
        "forward_ops": fwd.ops,
        "backward_ops": bwd.ops,
        "step_ops": fwd.ops + bwd.ops,
        "optimizer_ops": opt.ops,
        "forward_syncs": fwd.syncs,
        "forward_sync_ops": dict(fwd.sync_ops),
    }


def compile_counts(model, collate, texts_batches, warmup: int = 1) -> dict[str, int]:
    """Graph breaks of one fixed forward, and recompiles over the batches after the first ``warmup``."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    explained = dynamo.explain(model)(**collate(texts_batches[0]))
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    for batch in texts_batches[:warmup]:
        compiled(**collate(batch)).loss.backward()
    frames_after_warmup = counters["stats"]["unique_graphs"]
    for batch in texts_batches[warmup:]:
        compiled(**collate(batch)).loss.backward()
    dynamo.reset()
    return {
        "graph_breaks": explained.graph_break_count,
        "graphs": explained.graph_count,
        "warmup_batches": warmup,
        "graphs_in_warmup": frames_after_warmup,
        "recompiles": counters["stats"]["unique_graphs"] - frames_after_warmup,
        "compile_batches": len(texts_batches) - warmup,
    }


def time_steps(model, optimizer, collate: dict, data: list, rounds: int) -> dict[str, float]:
    """Median seconds of one eager fp32 training step (forward, backward, optimizer) per kind of batch, the kinds
    interleaved A B B A over ``rounds`` batches of the same text (collation not timed)."""
    inputs = {kind: [c(b) for b in data[: rounds + 1]] for kind, c in collate.items()}
    times: dict[str, list[float]] = {kind: [] for kind in collate}

    def step(batch: dict) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for kind in collate:  # warm-up
        step(inputs[kind][0])
    kinds = list(collate)
    for i in range(1, rounds + 1):
        for kind in kinds if i % 2 else kinds[::-1]:
            start = time.perf_counter()
            step(inputs[kind][i])
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True, help="a UTF-8 text file, one text per line")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sizes", nargs="+", default=["8x128", "16x256"], help="rows x block units")
    parser.add_argument("--compile-batches", type=int, default=50, help="batches after warm-up for recompiles")
    parser.add_argument("--warmup-batches", type=int, default=1, help="batches compiled before recompiles count")
    parser.add_argument(
        "--grow-only",
        action="store_true",
        help="capacities never shrink (FixedShapes.grow_only, what ilt train --torch_compile uses)",
    )
    parser.add_argument(
        "--compile-only", action="store_true", help="only graph breaks and recompiles of the fixed fp32 forward"
    )
    parser.add_argument(
        "--speed-rounds", type=int, default=0, help="also time N steps of each kind, interleaved (eager fp32)"
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    texts = Path(args.text).read_text(encoding="utf-8").splitlines()
    model = build_model(load_spec(args.preset), seed=0).train()
    model.set_fast_paths(False)  # the CPU-only layers step aside on a GPU: count the path a GPU runs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    processor = model.processor.with_pixels("uint8")
    results = []
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes]
    # every size's batches first: a text too short for one stops the run before any figure, not after hours
    all_data = {
        size: batches(model, texts, *dims, args.compile_batches + args.warmup_batches)
        for size, dims in zip(args.sizes, sizes, strict=True)
    }
    for size, (rows, row_units) in zip(args.sizes, sizes, strict=True):
        data = all_data[size]
        shapes = model.fixed_shapes(rows=rows, row_units=row_units, grow_only=args.grow_only)
        collate = {
            "dynamic": lambda b, r=row_units: processor.collate(b, packing=True, max_units=r).model_inputs(),
            "fixed": lambda b, s=shapes: processor.collate(b, packing=True, shapes=s).model_inputs(),
        }
        for kind in ("fixed",) if args.compile_only else ("dynamic", "fixed"):
            for autocast in (False,) if args.compile_only else (False, True):
                start = time.perf_counter()
                figures = {} if args.compile_only else count_step(model, collate[kind](data[0]), optimizer, autocast)
                row = {"size": size, "batches": kind, "dtype": "bf16 autocast" if autocast else "fp32", **figures}
                row["grow_only"] = args.grow_only
                if kind == "fixed" and not autocast:
                    row.update(compile_counts(model, collate[kind], data, args.warmup_batches))
                    row["capacity_changes"] = {
                        "units": shapes.changes,
                        "image_rows": shapes.images.changes if shapes.images else None,
                        "label_rows": shapes.label_stream.changes if shapes.label_stream else None,
                    }
                row["seconds"] = round(time.perf_counter() - start, 1)
                results.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
        if args.speed_rounds:
            medians = time_steps(model, optimizer, collate, data, args.speed_rounds)
            row = {
                "size": size,
                "step_seconds_median": medians,
                "fixed_over_dynamic": medians["fixed"] / medians["dynamic"],
                "rounds": args.speed_rounds,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        payload = {"preset": args.preset, "text": args.text, "torch": torch.__version__, "results": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

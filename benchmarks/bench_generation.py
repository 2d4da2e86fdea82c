"""Generation speed: units per second with and without the latent KV cache, by context length and batch size.

    .venv/bin/python benchmarks/bench_generation.py --out bench_generation.json

For each prompt length (units of context), batch size and cache setting, the time per decoding step (every row gets
one new unit) is the fastest gap between consecutive steps (the median is reported too), so the prompt's one-off
encoding and prefill are left out and a busy machine's spikes count little. units/s = batch / fastest step.
Random weights rarely write ``eos``, so every unit is forced to exactly ``--unit-bytes`` bytes
(``max_unit_bytes=--unit-bytes`` and ``suppress_tokens=[eos]``): each configuration does the same decoder work.

``--decoder`` first times the bytes decoder alone, per byte: ``transformers.generate`` against the plugin's
``greedy`` loop (same ids), for the preset's decoder and a 2-layer one (the reference setup's), batch 1 and 8, and
``greedy`` on the caller's threads (its rule of one thread for a few rows off) and with torch's products (its numpy
products for few rows off).
``--vit`` times the image encoder on the new units' word images: the transformers ViT forward against the fused
inference step (:mod:`ilt_hf.fast_vit`). ``--parts`` splits one step at the longest context into what both loops
share (encoding the new units, decoding their bytes) and the latent's part (one cached step, or the recomputation),
and prints the cache speed-up those parts allow: (recompute + shared) / (cached + shared), and its ceiling with a
free cached step, (recompute + shared) / shared; beside them the whole cached step (fastest and median gap), what
the parts leave unexplained (the loop's own overhead: bookkeeping, text of the units, the stop checks), and the
whole step on the caller's threads, interleaved with it (``whole_cached_step_callers_threads``: the A/B of the
one-thread rule for few rows, ``ONE_THREAD_ROWS`` in ``ilt_core.generation.loop`` and ``ilt_hf.fast_greedy``), and
with the latent's cached step and the bytes encoder through the transformers forward (``whole_cached_step_transformers``,
``latent_cached_step_transformers``, ``encode_new_units_transformers``: the A/B of the fused GPT-NeoX step,
:mod:`ilt_hf.fast_neox`, and BERT forward, :mod:`ilt_hf.fast_bert`), with the decoder's products in torch instead of
numpy (``whole_cached_step_torch_products``, ``decode_unit_bytes_torch_products``: ``ilt_hf.fast_greedy``'s
``NUMPY_PRODUCTS``), and with all of these off (``whole_cached_step_before``).

``--counts [BATCH ...]`` only counts, per unit step of ``tiny`` with 16-unit prompts and ``--unit-bytes`` bytes a
unit (eos barred: fixed work), the aten ops (per unit and per byte) and host syncs with the numpy products off (the
path a GPU runs), and times units/s and bytes/s, for a growing (``dynamic``) and a ``static`` latent cache:

    .venv/bin/python benchmarks/bench_generation.py --counts 1 8 64 --unit-bytes 16 --out counts.json

``--reference img`` (or ``noimg``) runs the reference implementation's setup instead of ``--preset``
(:func:`ilt_bench.setups.reference_spec`, words rendered 16 px high) at its generation protocol: batch 4, 16-unit prompts,
every unit decoded to 32 bytes (defaults of ``--contexts``, ``--batches``, ``--unit-bytes`` then 16, 4, 32). The
new units of ``--parts`` are then units this setup generated (32-byte words of random bytes, as in the protocol),
encoded afresh each call with the render cache warm, as the protocol's timed runs find them; and beside each part
the time its matrix products take alone (``<part>_products``: :func:`ilt_bench.matmuls.time_shape` of every shape, fastest of
torch and numpy, operand layouts, the caller's threads and one): what the part would cost without any overhead.

    .venv/bin/python benchmarks/bench_generation.py --reference img --parts --threads 2

Goals checked at the end: with the cache, time per new unit at 256 units of context <= 1.5x the time at 16; at 256
units of context the cached loop >= 5x faster than recomputing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from ilt_bench import common

from ilt_core import load_spec
from ilt_core.generation import Generation, GenerationOptions
from ilt_core.generation.decoding import LatentState, UnitEmbeddings, decode_unit_ids
from ilt_core.generation.loop import GenerationSession
from ilt_core.modeling.model import build_model
from ilt_core.modeling.products import set_cpu_products
from ilt_core.text.byte_tokenizer import EOS_ID, PAD_ID


def prompt_of(n_units: int, row: int) -> str:
    """A prompt of exactly ``n_units`` units (distinct words, so each is rendered and encoded)."""
    return "".join(f"w{row}x{i} " for i in range(n_units))


def forced_generation(model, prompts: list[str], units: int, use_cache: bool, unit_bytes: int) -> Generation:
    """A greedy generation of ``prompts``, every unit forced to ``unit_bytes`` bytes (eos barred)."""
    options = GenerationOptions(
        max_new_units=units,
        use_cache=use_cache,
        max_unit_bytes=unit_bytes,
        byte_options={"suppress_tokens": [EOS_ID]},
    )
    return Generation(model, prompts, options)


def step_times(model, prompts: list[str], units: int, use_cache: bool, unit_bytes: int) -> list[float]:
    """Seconds between consecutive decoding steps (each step gives every row one unit), prefill left out."""
    generation = forced_generation(model, prompts, units, use_cache, unit_bytes)
    cuda = model.encoder_mapping.weight.is_cuda
    stamps = []
    for n, _ in enumerate(generation.steps(), start=1):
        if n % len(prompts) == 0:  # the last row of a step has its unit
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def launch_counts(model, batches: list[int], unit_bytes: int, units: int, repeats: int) -> list[dict]:
    """Per unit step (every row one unit of ``unit_bytes`` bytes, eos and the other specials barred: fixed work), for each batch and cache
    kind: aten ops (what a GPU launches; per byte step of the decoder by the difference with units of twice the
    bytes) and host syncs (what it waits for; the ids' one copy back per unit step is not an aten op on a CPU),
    counted by
    :class:`ilt_bench.opcount.DispatchCount` with the CPU-only numpy products off, and units/s and bytes/s timed
    without the counter (best of ``repeats`` runs of ``units`` steps after a 1-step run, whose time is taken off)."""
    from ilt_bench.opcount import DispatchCount
    from ilt_hf import fused_llama

    rows = []
    # every id but the 256 bytes barred: no unit ends early or comes out empty (which would end its row)
    specials = list(range(256, model.bytes_decoder.vocab_size))
    saved = fused_llama.NUMPY_PRODUCTS
    fused_llama.NUMPY_PRODUCTS = False  # the path a GPU runs
    try:
        for batch in batches:
            prompts = [prompt_of(16, r) for r in range(batch)]
            for cache in ("dynamic", "static"):

                def run(n: int, limit: int = unit_bytes, prompts=prompts, cache=cache) -> None:
                    options = GenerationOptions(
                        max_new_units=n,
                        cache_implementation=cache,
                        max_unit_bytes=limit,
                        byte_options={"suppress_tokens": specials},
                    )
                    Generation(model, prompts, options).results()

                run(1)  # warm the render cache
                with DispatchCount() as one:
                    run(1)
                with DispatchCount() as more:
                    run(1 + units)
                with DispatchCount() as longer:  # units of twice the bytes: the byte loop's ops by difference
                    run(1 + units, 2 * unit_bytes)
                ops = (more.ops - one.ops) / units
                per_byte = (longer.ops - more.ops) / (1 + units) / unit_bytes  # 1 + units units, each longer
                syncs = (more.syncs - one.syncs) / units
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run(1)
                    t1 = time.perf_counter()
                    run(1 + units)
                    t2 = time.perf_counter()
                    best = min(best, ((t2 - t1) - (t1 - t0)) / units)
                row = dict(
                    batch=batch,
                    cache=cache,
                    ops_per_unit_step=ops,
                    ops_per_byte_step=per_byte,
                    syncs_per_unit_step=syncs,
                    sync_ops=dict(more.sync_ops),
                    units_per_second=batch / best,
                    bytes_per_second=batch * unit_bytes / best,
                )
                rows.append(row)
                print(
                    f"counts batch {batch:>3} {cache:>7}: {ops:8.0f} ops/unit step ({per_byte:6.1f} per byte step), "
                    f"{syncs:4.1f} syncs/unit step, {batch / best:8.1f} units/s, {batch * unit_bytes / best:9.0f} bytes/s",
                    flush=True,
                )
    finally:
        fused_llama.NUMPY_PRODUCTS = saved
    return rows


def decoder_per_byte(preset: str, batches: list[int], byte_count: int, repeats: int) -> list[dict]:
    """Milliseconds per byte of ``generate`` and of ``greedy`` (eos barred: every row writes ``byte_count``)."""
    from ilt_core.specs.spec import load_spec

    rows = []
    spec = load_spec(preset).to_dict()
    layers = spec["bytes_decoder"]["config"]["num_hidden_layers"]
    for n_layers in dict.fromkeys([layers, 2]):
        spec["bytes_decoder"]["config"]["num_hidden_layers"] = n_layers
        decoder = build_model(spec, seed=0).eval().bytes_decoder
        width = decoder.hidden_size
        for batch in batches:
            prefix = torch.randn(batch, 1, width, generator=torch.Generator().manual_seed(batch))
            mask = torch.ones(batch, 1, dtype=torch.long)
            runs = {
                "generate": lambda p=prefix, m=mask, d=decoder: d.generate(
                    p, m, max_new_tokens=byte_count, do_sample=False, suppress_tokens=[EOS_ID]
                ),
                "greedy": lambda p=prefix, d=decoder: d.greedy(p, byte_count, EOS_ID, PAD_ID, [EOS_ID]),
                "greedy_callers_threads": lambda p=prefix, d=decoder: callers_threads(
                    lambda: d.greedy(p, byte_count, EOS_ID, PAD_ID, [EOS_ID])
                ),
                "greedy_torch_products": lambda p=prefix, d=decoder: torch_products(
                    lambda: d.greedy(p, byte_count, EOS_ID, PAD_ID, [EOS_ID])
                ),
            }
            best = {name: 1000 * common.fastest(run, repeats) / byte_count for name, run in runs.items()}
            rows.append(
                dict(
                    decoder_layers=n_layers,
                    batch=batch,
                    generate_ms_per_byte=best["generate"],
                    greedy_ms_per_byte=best["greedy"],
                    greedy_callers_threads_ms_per_byte=best["greedy_callers_threads"],
                    greedy_torch_products_ms_per_byte=best["greedy_torch_products"],
                    speedup=best["generate"] / best["greedy"],
                )
            )
            print(
                f"decoder {n_layers} layers, batch {batch}: generate {best['generate']:.2f} ms/byte, "
                f"greedy {best['greedy']:.2f} ms/byte ({best['generate'] / best['greedy']:.2f}x), "
                f"greedy on the caller's {torch.get_num_threads()} threads {best['greedy_callers_threads']:.2f} ms/byte, "
                f"greedy with torch's products {best['greedy_torch_products']:.2f} ms/byte",
                flush=True,
            )
    return rows


def callers_threads(run):
    """``run()`` on the caller's thread count: the one-thread rules for few rows off (``ONE_THREAD_ROWS`` of
    ``ilt_core.generation.loop`` and of ``ilt_hf.fast_greedy``), for their A/B."""
    from ilt_hf import fast_greedy

    from ilt_core.generation import loop

    saved = loop.ONE_THREAD_ROWS, fast_greedy.ONE_THREAD_ROWS
    loop.ONE_THREAD_ROWS = fast_greedy.ONE_THREAD_ROWS = None
    try:
        return run()
    finally:
        loop.ONE_THREAD_ROWS, fast_greedy.ONE_THREAD_ROWS = saved


def transformers_path(model, run, roles=("latent_transformer", "bytes_encoder")):
    """``run()`` with the fused inference steps of ``roles`` off (:mod:`ilt_hf.fast_neox` for the latent's cached
    step, :mod:`ilt_hf.fast_bert` for the bytes encoder): those parts through the transformers forward, for the
    A/B. A component without the switch runs as it is."""
    switched = []
    for role in roles:
        switch = getattr(getattr(model, role, None), "set_fast_paths", None)  # protocols.FastPaths
        if switch is not None:
            switch(False)
            switched.append(switch)
    try:
        return run()
    finally:
        for switch in switched:
            switch(True)


def torch_products(run):
    """``run()`` with the fused greedy loop's numpy products off (``ilt_hf.fused_llama.NUMPY_PRODUCTS``): every
    decoder product through torch (MKL), for their A/B."""
    from ilt_hf import fused_llama

    saved = fused_llama.NUMPY_PRODUCTS
    fused_llama.NUMPY_PRODUCTS = False
    try:
        return run()
    finally:
        fused_llama.NUMPY_PRODUCTS = saved


def best_ms(run, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``run`` (after one warm-up call), in milliseconds."""
    return 1000 * common.fastest(run, repeats)


def vit_per_image(model, batches: list[int], repeats: int) -> list[dict]:
    """Milliseconds of the image encoder on ``batch`` new word images: transformers forward vs the fused step."""
    encoder = model.image_encoder
    switch = getattr(encoder, "set_fast_paths", None)  # ilt_hf's HFVisionEncoder
    if switch is None or "fused ViT inference step" not in switch(True):
        print("vit: the preset's image encoder has no fused step; skipped")
        return []
    rows = []
    for batch in batches:
        units = [f"q{i:03d} " for i in range(batch)]  # 4-byte units, as the decoding steps write
        groups = model.processor.render_units(units)

        def run(fused: bool, groups=groups) -> None:
            switch(fused)
            try:
                with torch.inference_mode():
                    for _, pixels in groups:
                        encoder(pixels)
            finally:
                switch(True)

        hf, fused = best_ms(lambda: run(False), repeats), best_ms(lambda: run(True), repeats)
        rows.append(dict(batch=batch, transformers_ms=hf, fused_ms=fused, speedup=hf / fused))
        print(f"vit, batch {batch}: transformers {hf:.2f} ms, fused {fused:.2f} ms ({hf / fused:.2f}x)", flush=True)
    return rows


def products_floor_ms(run) -> float:
    """Milliseconds the matrix products of one ``run()`` take alone (:func:`ilt_bench.matmuls.time_shape`: each shape timed with torch
    and numpy in every operand layout, operands hot in cache), at the faster of the caller's threads and one."""
    from unittest import mock

    from ilt_bench.matmuls import MatmulRecorder, time_shape

    recorder = MatmulRecorder()
    # dispatch modes do not see inference-mode tensors: the part runs under no_grad (the same kernels)
    with mock.patch("torch.inference_mode", torch.no_grad), torch.no_grad(), recorder:
        run()
    threads, total = torch.get_num_threads(), 0.0
    for shape, count in recorder.counts.items():
        best = float("inf")
        for n in dict.fromkeys([threads, 1]):
            torch.set_num_threads(n)
            best = min(best, *time_shape(shape, 3).values())
        torch.set_num_threads(threads)
        total += count * best
    return 1000 * total


def parts_of_step(
    model, prompts: list[str], unit_bytes: int, repeats: int, generated: bool, floors: bool = False
) -> dict[str, float]:
    """Milliseconds of each part of one decoding step for ``prompts`` (fastest runs), and of the whole step.

    ``floors``: beside each part, its matrix products alone (:func:`products_floor_ms`), ``<part>_products_ms``.

    ``generated``: the new units are units the model generates from these prompts (rendered once, then found in
    the render cache, each call encoding them afresh, as in the reference protocol's timed runs); otherwise
    short units never seen before (each rendered and encoded).
    """
    batch = len(prompts)
    generation = forced_generation(model, prompts, 8, True, unit_bytes)
    hyps, decoding = generation.hypotheses, generation.decoding
    fresh = iter(range(10**6))
    pool = []
    if generated:
        pool = [u for h in forced_generation(model, prompts, 8, True, unit_bytes).results() for u in h.units]

    def new_units() -> list[str]:
        n = next(fresh)
        if pool:
            return [pool[(n * batch + r) % len(pool)] for r in range(batch)]
        return [f"n{n:04d}r{r} " for r in range(batch)]  # never seen before: each is rendered and encoded

    # the parts on the threads a generation call of this batch runs on (its one-thread rule for few rows)
    with torch.inference_mode(), GenerationSession(model, None, batch):
        embed = UnitEmbeddings(model)
        cached, recomputed = LatentState(model, embed, True), LatentState(model, embed, False)
        latents = cached.start([h.context for h in hyps])
        recomputed.start([h.context for h in hyps])
        plain = LatentState(model, embed, True)  # the same cached step through the transformers forward
        transformers_path(model, lambda: plain.start([h.context for h in hyps]))

        def latent_ms(latent) -> float:
            units = new_units()
            embed(units)  # encoded outside the timing: the latent's part alone
            start = time.perf_counter()
            latent.step(units)
            return 1000 * (time.perf_counter() - start)

        def encode() -> None:
            UnitEmbeddings(model)(new_units())  # a fresh memo: every unit encoded again

        parts = {
            "encode_new_units": best_ms(encode, repeats),
            "decode_unit_bytes": best_ms(lambda: decode_unit_ids(model, latents, decoding), repeats),
            "decode_unit_bytes_torch_products": best_ms(
                lambda: torch_products(lambda: decode_unit_ids(model, latents, decoding)), repeats
            ),
            "latent_cached_step": min(latent_ms(cached) for _ in range(repeats + 1)),
            "latent_recomputed": min(latent_ms(recomputed) for _ in range(repeats + 1)),
        }
        # the fused cached step's A/B, interleaved: the same step through the transformers forward
        fused_ab, plain_ab = [], []
        for _ in range(repeats + 1):
            fused_ab.append(latent_ms(cached))
            plain_ab.append(transformers_path(model, lambda: latent_ms(plain)))
        parts["latent_cached_step"] = min(parts["latent_cached_step"], *fused_ab)
        parts["latent_cached_step_transformers"] = min(plain_ab)
        parts["encode_new_units_transformers"] = best_ms(lambda: transformers_path(model, encode), repeats)
    if floors:  # outside inference mode: a dispatch mode does not see its tensors' products
        runs = {
            "encode_new_units": encode,
            # torch's products: the recorder sees torch calls only (numpy's products have the same shapes)
            "decode_unit_bytes": lambda: torch_products(lambda: decode_unit_ids(model, latents, decoding)),
            "latent_cached_step": lambda: cached.step(new_units()),
        }
        for name, run in runs.items():
            parts[f"{name}_products_ms"] = products_floor_ms(run)

    # the whole step, and (interleaved, A B C A B C) the same on the caller's threads (the one-thread rule's A/B)
    # and with the latent's cached step through the transformers forward (the fused step's A/B)
    def run_step() -> list[float]:
        return step_times(model, prompts, 4, True, unit_bytes)

    arms = {
        "": run_step,
        "_callers_threads": lambda: callers_threads(run_step),
        "_transformers": lambda: transformers_path(model, run_step),
        "_torch_products": lambda: torch_products(run_step),
        # before the fused latent / bytes-encoder steps and the numpy products: all three off
        "_before": lambda: transformers_path(model, lambda: torch_products(run_step)),
    }
    whole: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(max(1, repeats // 2)):
        for arm, run in arms.items():
            whole[arm] += run()
    for arm, times in whole.items():
        parts[f"whole_cached_step{arm}"] = 1000 * min(times)
        parts[f"whole_cached_step{arm}_median"] = 1000 * statistics.median(times)
    explained = parts["encode_new_units"] + parts["decode_unit_bytes"] + parts["latent_cached_step"]
    parts["unexplained_overhead"] = parts["whole_cached_step"] - explained
    return parts


def step_parts(model, context: int, batches: list[int], unit_bytes: int, repeats: int, prompts_of=None) -> list[dict]:
    """The parts of one step at ``context`` units per batch size, and the cache speed-up they allow.

    ``prompts_of(batch)``: the prompts (the reference protocol's); default: ``prompt_of`` rows of distinct words.
    """
    rows = []
    for batch in batches:
        prompts = prompts_of(batch) if prompts_of else [prompt_of(context, r) for r in range(batch)]
        times = parts_of_step(
            model, prompts, unit_bytes, repeats, generated=prompts_of is not None, floors=prompts_of is not None
        )
        shared = times["encode_new_units"] + times["decode_unit_bytes"]
        allowed = (times["latent_recomputed"] + shared) / (times["latent_cached_step"] + shared)
        ceiling = (times["latent_recomputed"] + shared) / shared
        rows.append(dict(context=context, batch=batch, **times, speedup_allowed=allowed, speedup_ceiling=ceiling))
        print(
            f"parts at {context} units, batch {batch}: "
            + ", ".join(f"{k.removesuffix('_ms')} {v:.1f} ms" for k, v in times.items())
            + f"; cache speed-up these allow {allowed:.2f}x, ceiling with a free cached step {ceiling:.2f}x",
            flush=True,
        )
    return rows


def reference_setup(variant: str) -> tuple[dict, object]:
    """The reference implementation's setup (:func:`ilt_bench.setups.reference_spec`, 16 px words) and its protocol's
    prompts: ``prompts_of(batch)`` gives ``batch`` prompts of 16 consecutive he-news units."""
    from ilt_bench.setups import reference_spec

    spec = {**reference_spec(images=variant == "img"), "image_height": 16}
    from ilt_core.text.segmentation import segment

    units = common.load_text("he", 64 * 16, segment)

    def prompts_of(batch: int) -> list[str]:
        return ["".join(p) for p in common.chunk_texts(units, batch, 16)]

    return spec, prompts_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 64, 256], help="prompt lengths in units")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-units", type=int, default=8, help="decoding steps timed per run (after the first)")
    parser.add_argument("--unit-bytes", type=int, default=4, help="bytes the decoder writes per unit (forced)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--decoder", action="store_true", help="also time the bytes decoder alone (see above)")
    parser.add_argument("--vit", action="store_true", help="also time the image encoder: transformers vs fused")
    parser.add_argument("--parts", action="store_true", help="also split one step into its parts (see above)")
    parser.add_argument(
        "--counts",
        type=int,
        nargs="*",
        metavar="BATCH",
        help="only count ops and syncs per unit step and time units/s at these batches (default 1 8 64), "
        "growing and static latent cache, --unit-bytes bytes a unit (see launch_counts)",
    )
    parser.add_argument(
        "--reference", choices=["img", "noimg"], help="the reference's setup and protocol instead of --preset"
    )
    args = parser.parse_args()
    spec, prompts_of = args.preset, None
    if args.reference:
        spec, prompts_of = reference_setup(args.reference)
        defaults = parser.parse_args([])
        for name, value in (("contexts", [16]), ("batches", [4]), ("unit_bytes", 32)):
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.as_the_ilt_command()
    if args.counts is not None:
        # the CPU-only layers off (numpy products, the bytes encoder's length groups), the fused inference steps
        # on: the path a GPU runs
        model = build_model(load_spec(args.preset), seed=0).to(args.device).eval()
        set_cpu_products(model, "torch")
        model.bytes_encoder.group_lengths = False
        counts = launch_counts(model, args.counts or [1, 8, 64], args.unit_bytes, args.new_units, args.repeats)
        if args.out:
            args.out.write_text(json.dumps(dict(preset=args.preset, device=args.device, counts=counts), indent=2))
        return 0
    decoder_rows = decoder_per_byte(args.preset, args.batches, 32, 3 * args.repeats) if args.decoder else []

    model = build_model(spec, seed=0).to(args.device).eval()
    vit_rows = vit_per_image(model, args.batches, 5 * args.repeats) if args.vit else []
    part_rows = (
        step_parts(model, max(args.contexts), args.batches, args.unit_bytes, 3 * args.repeats, prompts_of)
        if args.parts
        else []
    )
    rows = []
    header = f"{'context':>8} {'batch':>6} {'cache':>6} {'s/step(min)':>12} {'s/step(med)':>12} {'units/s':>10}"
    print(header)
    print("-" * len(header))
    for context in args.contexts:
        for batch in args.batches:
            prompts = prompts_of(batch) if prompts_of else [prompt_of(context, r) for r in range(batch)]
            step_times(model, prompts, 2, True, args.unit_bytes)  # warm the render cache and kernels
            for use_cache in (True, False):
                times = []
                for _ in range(args.repeats):
                    times += step_times(model, prompts, 1 + args.new_units, use_cache, args.unit_bytes)
                best = min(times)  # the fastest step: the least disturbed by other work on the machine
                median = statistics.median(times)
                row = dict(
                    context=context,
                    batch=batch,
                    use_cache=use_cache,
                    seconds_per_step=best,
                    median_seconds_per_step=median,
                    units_per_second=batch / best,
                )
                rows.append(row)
                print(
                    f"{context:>8} {batch:>6} {str(use_cache):>6} {best:>12.4f} {median:>12.4f} {batch / best:>10.1f}",
                    flush=True,
                )

    def step(context: int, batch: int, cache: bool) -> float | None:
        for r in rows:
            if (r["context"], r["batch"], r["use_cache"]) == (context, batch, cache):
                return r["seconds_per_step"]
        return None

    goals = {}
    lo, hi = min(args.contexts), max(args.contexts)
    for batch in args.batches:
        a, b, c = step(lo, batch, True), step(hi, batch, True), step(hi, batch, False)
        if None not in (a, b, c):
            goals[f"batch{batch}"] = {
                f"cached_{hi}_over_cached_{lo}": b / a,
                "goal_cached_growth_le_1.5": b / a <= 1.5,
                f"uncached_over_cached_at_{hi}": c / b,
                "goal_cache_speedup_ge_5": c / b >= 5.0,
            }
    print(json.dumps(goals, indent=2))
    result = dict(
        preset=args.preset if not args.reference else f"reference-{args.reference}",
        device=args.device,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        machine=platform.platform(),
        unit_bytes=args.unit_bytes,
        new_units=args.new_units,
        rows=rows,
        decoder=decoder_rows,
        vit=vit_rows,
        parts=part_rows,
        goals=goals,
        note="fastest (and median) time per decoding step (one unit per row), prefill excluded; every unit forced to unit_bytes bytes",
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

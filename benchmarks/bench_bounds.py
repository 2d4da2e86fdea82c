"""Bounds from this machine's matrix-product speed: how fast can the reference implementation's setup go here?

    .venv/bin/python benchmarks/bench_bounds.py --out runs/bench_bounds.json
    .venv/bin/python benchmarks/bench_bounds.py --quick            # smoke run: fewer words, one timing each

The setup is the reference's (:func:`ilt_bench.setups.reference_spec`: BERT 2 x 128, ViT 12 x 192, GPT-NeoX 6 x 512, Llama
2 x 256, batch 8 x 64 he-news units, labels of the next 32 bytes). The script records every matrix product
(``aten.mm`` / ``addmm`` / ``bmm`` / ``baddbmm``: shape and count) of

- one training step (forward and backward), and
- one greedy decoding step of the reference's generation protocol (batch 4, prompts of 16 units, every unit decoded
  to its 32-byte cap, with the latent KV cache): the products of a 3-unit run minus those of a 1-unit run, halved,

then times each distinct shape with torch (MKL here) and with numpy (OpenBLAS), in each of the four layouts of its
operands (either side stored as is or transposed), and sums, over all products, the fastest of these: the time
the products alone take at the best speed this machine's BLAS libraries reach, operands hot in cache. Attention,
norms, activations, the optimizer, data and Python are left out, so a real step can only be slower. For training, a
second bound needs no assumption on how the products are grouped: all of the step's GFLOP at the fastest rate any
shape reached. Words per step / the smaller of the two times bounds words/s from above. No ratio to the
reference implementation is printed: its figures from another run compare nothing, and this script does not
measure it (no reference measurement in this run). A memory floor is printed too: the process
after building the model, plus gradients and AdamW's two moments (4 bytes each per parameter), before any activation.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions, rss_bytes  # noqa: E402
from ilt_bench.matmuls import MatmulRecorder, Shape, time_shape  # noqa: E402
from ilt_bench.setups import NO_REFERENCE, REFERENCE_PEAK_RSS_GOAL_MB, make_batches, reference_spec, text_units_in  # noqa: E402

GOALS = {"peak_rss_mb": REFERENCE_PEAK_RSS_GOAL_MB}
PROTOCOL = {"batch_size": 4, "prompt_units": 16, "byte_cap": 32}
#: setup -> word images on
SETUPS = {"with images": True, "without images": False}


def floor_of(counts: Counter[Shape], timings: dict[Shape, dict[str, float]]) -> dict[str, float]:
    """Total seconds of the recorded products with torch, with numpy, and with the faster of the two per shape."""
    total = {"torch_s": 0.0, "numpy_s": 0.0, "best_s": 0.0}
    for shape, count in counts.items():
        t = timings[shape]
        total["torch_s"] += count * t["torch_s"]
        total["numpy_s"] += count * t["numpy_s"]
        total["best_s"] += count * min(t["torch_s"], t["numpy_s"])
    total["gflop"] = sum(2 * b * m * k * n * c for (b, m, k, n), c in counts.items()) / 1e9
    total["products"] = sum(counts.values())
    return total


def record_training(model: Any, batch: Any) -> Counter[Shape]:
    recorder = MatmulRecorder()
    with recorder:
        model(**batch.model_inputs()).loss.backward()
    model.zero_grad(set_to_none=True)
    return recorder.counts


def record_generation(model: Any, prompts: list[str], new_units: int) -> Counter[Shape]:
    from ilt_core.generation.loop import generate
    from ilt_core.text.byte_tokenizer import BOS_ID, PAD_ID

    cap = PROTOCOL["byte_cap"]
    options = dict(byte_suppress_tokens=[PAD_ID, BOS_ID], byte_min_new_tokens=cap, max_unit_bytes=cap)
    recorder = MatmulRecorder()
    # dispatch modes do not see inference-mode tensors: run under no_grad instead (the same kernels)
    with mock.patch("torch.inference_mode", torch.no_grad), recorder:
        generate(model, prompts, max_new_units=new_units, use_cache=True, **options)
    return recorder.counts


def record_setup(images: bool, memory: bool) -> dict[str, Any]:
    """Build one reference setup; its training step's and generation step's products, its words per step, and
    (``memory``: the first model this process builds, so that its RSS is the model's) the memory floor."""
    from ilt_core.modeling.model import build_model

    gc.collect()
    rss_before = rss_bytes() / 2**20
    model = build_model(reference_spec(images), seed=0)
    rss_built = rss_bytes() / 2**20
    n_params = sum(p.numel() for p in model.parameters())
    common.log(f"reference setup, images {images}: {n_params / 1e6:.1f}M parameters, RSS {rss_built:.0f} MiB")
    units = common.load_text("he", 8 * 64 + 64, model.processor.segment)
    batch = make_batches(model, units, 8, 64, 1)[0]
    model.train()
    train_counts = record_training(model, batch)
    model.eval()
    prompts = ["".join(p) for p in common.chunk_texts(units, PROTOCOL["batch_size"], PROTOCOL["prompt_units"])]
    gen_counts = record_generation(model, prompts, 3)
    gen_counts.subtract(record_generation(model, prompts, 1))
    del model
    return {
        "words_per_step": text_units_in(batch),
        "train_counts": train_counts,
        "gen_counts": Counter({s: c for s, c in gen_counts.items() if c > 0}),  # two decoding steps' products
        "parameters": n_params,
        **(
            {
                "rss_before_build_mb": rss_before,
                "rss_after_build_mb": rss_built,
                # gradients and AdamW's two moments: 3 more float32 copies of the parameters
                "memory_floor_mb": rss_built + 3 * 4 * n_params / 2**20,
            }
            if memory
            else {}
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per product shape (the fastest counts)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one timing per shape")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    setups = {name: record_setup(images, i == 0) for i, (name, images) in enumerate(SETUPS.items())}
    shapes = sorted(
        {s for r in setups.values() for s in (*r["train_counts"], *r["gen_counts"])},
        key=lambda s: -s[0] * s[1] * s[2] * s[3],
    )
    common.log(f"timing {len(shapes)} product shapes with torch and numpy")
    timings = {s: time_shape(s, repeats) for s in shapes}
    # the fastest rate any recorded shape reached: a bound that no regrouping of the products can beat
    peak = max(2 * b * m * k * n / min(t["torch_s"], t["numpy_s"]) for (b, m, k, n), t in timings.items()) / 1e9
    # the same with torch's own BLAS only: what a torch training step can reach without another library
    peak_torch = max(2 * b * m * k * n / t["torch_s"] for (b, m, k, n), t in timings.items()) / 1e9

    result: dict[str, Any] = {
        "setup": "the reference's: batch 8 x 64 he-news units, labels of the next 32 bytes; generation batch 4, "
        "prompts of 16 units, 32 bytes a unit, latent KV cache",
        "machine": machine_info(),
        "versions": package_versions(),
        "peak_gflop_per_s": peak,
        "peak_gflop_per_s_torch": peak_torch,
        "goals": GOALS,
        "reference_implementation": NO_REFERENCE,
        "setups": {},
    }
    for name, r in setups.items():
        train = floor_of(r["train_counts"], timings)
        gen = floor_of(r["gen_counts"], timings)
        gen = {k: v / 2 if k != "products" else v // 2 for k, v in gen.items()}  # per step
        words = r["words_per_step"]
        bound = max(words / train["best_s"], words / (train["gflop"] / peak))
        bound_torch = max(words / train["torch_s"], words / (train["gflop"] / peak_torch))
        result["setups"][name] = {
            "words_per_training_step": words,
            "training_step_products": train,
            "training_gflop_per_word": train["gflop"] / words,
            "training_s_at_peak": train["gflop"] / peak,
            "training_words_per_s_bound": bound,
            "training_words_per_s_bound_torch": bound_torch,
            "generation_step_products": gen,
            "generation_ms_per_step_bound": 1000 * gen["best_s"],
            **{
                k: r[k]
                for k in ("rss_before_build_mb", "rss_after_build_mb", "parameters", "memory_floor_mb")
                if k in r
            },
            "shapes": [
                {
                    "shape": list(s),
                    "train": r["train_counts"].get(s, 0),
                    "generation_two_steps": r["gen_counts"].get(s, 0),
                    **timings[s],
                }
                for s in shapes
                if s in r["train_counts"] or s in r["gen_counts"]
            ],
        }
    print_report(result)
    common.write_json(args.out, result)
    return result


def print_report(result: dict[str, Any]) -> None:
    peak = result["peak_gflop_per_s"]
    for name, r in result["setups"].items():
        t, g = r["training_step_products"], r["generation_step_products"]
        print(f"reference setup {name}:")
        print(
            f"  training step: {t['products']} matrix products, {t['gflop']:.0f} GFLOP; alone they take "
            f"{t['torch_s']:.2f} s with torch, {t['numpy_s']:.2f} s with numpy, {t['best_s']:.2f} s at the faster "
            f"per shape, {r['training_s_at_peak']:.2f} s at the fastest rate any shape reached ({peak:.0f} GFLOP/s)"
        )
        print(
            f"  -> at most {r['training_words_per_s_bound']:.0f} words/s ({r['words_per_training_step']} words a step, "
            f"{r['training_gflop_per_word']:.3f} GFLOP of products a word); with torch's BLAS alone at most "
            f"{r['training_words_per_s_bound_torch']:.0f} words/s ({result['peak_gflop_per_s_torch']:.0f} GFLOP/s "
            "its fastest shape)"
        )
        print(
            f"  generation step: {g['products']} matrix products, {1000 * g['gflop']:.0f} MFLOP; alone they take "
            f"{1000 * g['torch_s']:.1f} ms with torch, {1000 * g['numpy_s']:.1f} ms with numpy, "
            f"{1000 * g['best_s']:.1f} ms at the faster per shape"
        )
        print(f"  -> at least {r['generation_ms_per_step_bound']:.1f} ms a generation step")
        if "memory_floor_mb" not in r:
            continue  # built second: this process's RSS holds the first model's pages too
        print(
            f"  memory before any activation: {r['memory_floor_mb']:.0f} MiB (the process after building "
            f"{r['rss_after_build_mb']:.0f} MiB + gradients and AdamW moments of {r['parameters'] / 1e6:.1f}M "
            f"parameters); the goal is {GOALS['peak_rss_mb']:.0f} MB"
        )
    print(NO_REFERENCE)


if __name__ == "__main__":
    main()

"""The model setups the benchmark scripts share, and one training step on them.

:func:`reference_spec` is the reference implementation's setup (bytes encoder BERT 2 x 128, image encoder ViT
12 x 192 patch 16, latent GPT-NeoX 6 x 512, bytes decoder Llama 2 x 256, labels of the next 32 bytes, words
rendered 16 px high); :func:`tiny_spec` the tiny preset's variants. :func:`make_batches`, :func:`train_step`,
:func:`step_flops` and :func:`text_to_batch` measure a training step and the text pipeline on them
(``benchmarks/bench_model.py``, ``bench_bounds.py``, ``bench_reference.py``, ``bench_generation.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ilt_bench import common

#: Absolute goal (not a ratio to figures measured elsewhere): peak RSS of the reference setup's training, MB.
REFERENCE_PEAK_RSS_GOAL_MB = 1500.0
#: Printed where a comparison with the reference implementation would stand: its figures from another day and
#: another text compare nothing; a comparison must read a measurement of it made in the same run.
NO_REFERENCE = (
    "reference implementation: no reference measurement in this run (figures from another run compare nothing)"
)
TINY_VARIANTS = ("full", "image-only", "bytes-only")


def tiny_spec(variant: str) -> dict[str, Any]:
    """The tiny preset, one modality off for the one-modality variants, no modality dropout (as tests/conftest.py)."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("tiny", variant, modality_dropout=0.0)


def reference_spec(images: bool = True, **attn: str) -> dict[str, Any]:
    """The reference implementation's setup (see the module docstring); ``attn``: role -> attn_implementation.

    Words rendered 16 px high, as the reference renders them (one row of 16 px patches).
    """
    spec = tiny_spec("full" if images else "bytes-only")
    spec["bytes_decoder"]["config"]["num_hidden_layers"] = 2
    spec.update(labels="bytes", label_bytes=32, modality_dropout=0.0, image_height=16)
    for role, implementation in attn.items():
        spec[role]["attn_implementation"] = implementation
    return spec


#: Names of the reference setup as a mix (with and without word images) for the scripts that take ``--mixes``.
REFERENCE_SETUPS = {"reference-setup": True, "reference-setup-no-images": False}


def setup_mixes(names: list[str]) -> list[Any]:
    """``ilt_bench.mixes.Mix`` objects for ``names``: ``benchmarks/mixes`` names or YAML paths, and the names of
    :data:`REFERENCE_SETUPS` (:func:`reference_spec` at the reference protocol's batch: 8 texts x 64 words, one
    more unit for the start marker)."""
    from ilt_bench.mixes import BenchSettings, Mix, resolve_mixes

    found = []
    for name in names:
        if name in REFERENCE_SETUPS:
            bench = BenchSettings(batch_size=8, block_units=65)
            found.append(Mix(name, Path(__file__), "ilt", reference_spec(REFERENCE_SETUPS[name]), bench))
        else:
            found += resolve_mixes(name)
    return found


def add_mixes_argument(parser: Any) -> None:
    """``--mixes`` (one or more) of an ``argparse`` parser, for the scripts that read them with :func:`setup_mixes`."""
    parser.add_argument(
        "--mixes",
        nargs="+",
        required=True,
        help="mix names or YAML paths (benchmarks/mixes), or " + " / ".join(REFERENCE_SETUPS),
    )


def make_batches(model: Any, units: list[str], rows: int, length: int, count: int, shapes: Any = None) -> list[Any]:
    """``count`` collated batches of ``rows`` consecutive ``length``-unit pieces (cut: no end label).

    ``shapes``: a :class:`ilt_core.text.collator.FixedShapes` (``model.fixed_shapes(rows, length + 1)``, what
    ``ilt train`` collates with by default); None collates each batch to its own sizes."""
    from ilt_core.text.collator import TextUnits

    pieces = common.chunk_texts(units, rows * count, length)
    return [
        model.processor.collate(
            [TextUnits(p, complete=False) for p in pieces[b * rows : (b + 1) * rows]],
            max_units=length + 1,
            shapes=shapes,
        )
        for b in range(count)
    ]


def text_units_in(batch: Any) -> int:
    """Units of text in a batch (start markers and padding excluded)."""
    return int(batch.attention_mask.sum()) - int(
        (batch.position_ids == 0).logical_and(batch.attention_mask.bool()).sum()
    )


def text_to_batch(model: Any, units: list[str], rows: int, length: int, repeats: int) -> dict[str, float]:
    """Raw text -> collated batch units/s through the model's processor, cold and warm render cache."""
    raw = ["".join(p) for p in common.chunk_texts(units, rows, length)]
    cold, warm = [], []
    for _ in range(repeats):
        if model.processor.cache is not None:
            model.processor.cache.clear()
        cold.append(common.timed(lambda: model.processor(raw, max_units=length + 1))[0])
        warm.append(common.timed(lambda: model.processor(raw, max_units=length + 1))[0])
    n = rows * length
    return {
        "text_to_batch_cold_units_per_s": n / common.median(cold),
        "text_to_batch_warm_units_per_s": n / common.median(warm),
    }


def train_step(model: Any, optimizer: Any, batch: Any, autocast: bool = False) -> float:
    """One forward + backward + optimizer step; returns the loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch.model_inputs())
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def step_flops(model: Any, batch: Any) -> int:
    """FLOPs of one forward + backward (matrix products and attention; the optimizer is negligible)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch.model_inputs()).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


__all__ = [
    "NO_REFERENCE",
    "REFERENCE_PEAK_RSS_GOAL_MB",
    "TINY_VARIANTS",
    "make_batches",
    "reference_spec",
    "step_flops",
    "text_to_batch",
    "text_units_in",
    "tiny_spec",
    "train_step",
]

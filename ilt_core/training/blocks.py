"""Blocks of units (a cached ``datasets.map``) and the packing rule that puts blocks into rows.

:func:`make_blocks` runs ``Dataset.map(batched=True, num_proc=...)`` (run_clm.py's tokenize-and-group
step): each text is segmented into units (:func:`ilt_core.text.segmentation.segment`) and split into
blocks of at most ``block_size - 1`` units (the start marker takes a row's last position); only a
text's final block is *complete* (it gets the end-of-text label), as
:func:`ilt_core.evaluation.text_blocks` scores long texts. Columns: ``units`` (list of strings),
``complete`` (bool), ``length`` (int32, units). The map's fingerprint hashes the texts' fingerprint,
the settings and :data:`~ilt_core.training.texts.PREPROCESSING_VERSION`, so a second run with the same
data and settings loads the cached Arrow file and maps nothing. ``max_*_samples`` counts blocks.

:func:`pack_offsets` packs consecutive blocks greedily (in corpus order) into rows of at most
``block_size`` positions, reading only the ``length`` column: a row is a contiguous range of blocks,
so the packing is one int64 offsets array.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ilt_core.text.segmentation import segment
from ilt_core.training.texts import PREPROCESSING_VERSION

MAP_BATCH_SIZE = 10_000
#: Counts calls of the blocking map function in this process (tests check that a cached run maps nothing).
MAP_CALLS = 0


@dataclass
class BlockStats:
    """What blocking found: texts, units, blocks, and how many texts were split into several blocks."""

    texts: int = 0
    units: int = 0
    blocks: int = 0
    split_texts: int = 0
    rows: int = 0


def _blocks_of_texts(batch: dict[str, list], max_unit_bytes: int, block_size: int) -> dict[str, list]:
    """``Dataset.map`` function: a batch of texts -> their blocks (``units``, ``complete``, ``length``)."""
    global MAP_CALLS
    MAP_CALLS += 1
    texts = (segment(t, max_unit_bytes) for t in batch["text"] if t and not t.isspace())
    return blocks_of_units(texts, block_size)


def blocks_of_units(units_per_text: Iterable[list[str]], block_size: int) -> dict[str, list]:
    """Blocks of at most ``block_size - 1`` units; only a text's last block is complete."""
    out_units: list[list[str]] = []
    out_complete: list[bool] = []
    out_length: list[int] = []
    per_block = block_size - 1
    for units in units_per_text:
        for i in range(0, len(units), per_block):
            piece = units[i : i + per_block]
            out_units.append(piece)
            out_complete.append(i + per_block >= len(units))
            out_length.append(len(piece))
    return {"units": out_units, "complete": out_complete, "length": out_length}


def cache_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PREPROCESSING_VERSION, *parts], default=str).encode()).hexdigest()[:32]


def make_blocks(
    texts: Any,
    max_unit_bytes: int,
    block_size: int,
    *,
    num_workers: int | None = None,
    overwrite_cache: bool = False,
    limit: int | None = None,
    desc: str = "units and blocks",
) -> tuple[Any, bool]:
    """Segment and block ``texts`` (a ``datasets.Dataset`` with a ``text`` column) with a cached map.

    Returns the blocks dataset and whether it came from the cache. ``limit`` keeps the first
    ``limit`` blocks (only the first ``limit`` texts are mapped: a text gives at least one block).
    """
    import datasets  # heavy; only when the data is prepared

    if limit is not None:
        texts = texts.select(range(min(limit, len(texts))))
    features = datasets.Features(
        {
            "units": datasets.List(datasets.Value("string")),
            "complete": datasets.Value("bool"),
            "length": datasets.Value("int32"),
        }
    )
    fingerprint = cache_fingerprint(texts._fingerprint, "blocks", max_unit_bytes, block_size)
    folder = dataset_folder(texts)
    before = set(os.listdir(folder)) if folder else set()
    workers = num_workers if num_workers and num_workers > 1 and len(texts) >= 1000 * num_workers else None
    blocks = texts.map(
        _blocks_of_texts,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        writer_batch_size=MAP_BATCH_SIZE * 2,
        num_proc=workers,
        fn_kwargs={"max_unit_bytes": max_unit_bytes, "block_size": block_size},
        remove_columns=texts.column_names,
        features=features,
        new_fingerprint=fingerprint,
        load_from_cache_file=not overwrite_cache,
        desc=desc,
    )
    cached = bool(folder) and not (set(os.listdir(folder)) - before)
    if limit is not None and len(blocks) > limit:
        blocks = blocks.select(range(limit))
    return blocks, cached


def dataset_folder(ds: Any) -> str | None:
    files = ds.cache_files
    return os.path.dirname(files[0]["filename"]) if files else None


def pack_offsets(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Greedy in-order packing of blocks of ``lengths`` units (+1 start marker each) into rows of at
    most ``capacity`` positions. Returns int64 offsets ``(rows + 1,)``: row ``r`` is blocks
    ``offsets[r]:offsets[r+1]``; the same rows as :func:`ilt_core.text.collator.pack_rows`."""
    starts: list[int] = []
    used = capacity + 1  # the first block opens a row
    index = 0
    for begin in range(0, len(lengths), 1 << 16):  # in chunks: Python ints for 65,536 blocks at a time
        for n in (lengths[begin : begin + (1 << 16)] + 1).tolist():
            if used + n <= capacity:
                used += n
            else:
                starts.append(index)
                used = n
            index += 1
    starts.append(len(lengths))
    return np.asarray(starts, dtype=np.int64)


__all__ = [
    "MAP_CALLS",
    "BlockStats",
    "blocks_of_units",
    "dataset_folder",
    "cache_fingerprint",
    "make_blocks",
    "pack_offsets",
]

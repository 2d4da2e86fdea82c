"""Text files as parquet shards with a ``text`` column: the layout of Hugging Face FineWeb, offline.

    ilt data prepare he-news --format parquet --shards 8
    # data/he-news/parquet/train/train-00000-of-00008.parquet ... (one text per row, corpus order)
    ilt train --train_file 'data/he-news/parquet/train/*.parquet' ...

The lines are streamed (one batch of rows in memory at a time), so a corpus of any size converts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ilt_core.errors import ILTError

SCHEMA = pa.schema([("text", pa.string())])
BATCH_ROWS = 50_000
ROW_GROUP_ROWS = 100_000


def shard_name(prefix: str, index: int, shards: int) -> str:
    """``<prefix>-00003-of-00008.parquet``, the Hugging Face hub's shard names."""
    return f"{prefix}-{index:05d}-of-{shards:05d}.parquet"


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8").removesuffix("\n")
            except UnicodeDecodeError as exc:
                raise ILTError(f"{path} line {number}: not UTF-8 (byte {exc.start}: {exc.reason})") from None


def write_parquet_shards(lines_file: Path | str, folder: Path | str, prefix: str, shards: int) -> list[Path]:
    """Write the lines of ``lines_file`` (one text per line) as ``shards`` parquet files of nearly equal
    row counts, in order, under ``folder``; other ``<prefix>-*-of-*.parquet`` files there are removed
    (a glob over the folder must not mix two shardings). Returns the shard paths."""
    if not isinstance(shards, int) or shards < 1:
        raise ILTError(f"--shards {shards}: expected 1 or more parquet files")
    lines_file, folder = Path(lines_file), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(lines_file, "rb") as handle:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
    paths = [folder / shard_name(prefix, i, shards) for i in range(shards)]
    for stale in folder.glob(f"{prefix}-*-of-*.parquet"):
        if stale not in paths:
            stale.unlink()
    lines = _lines(lines_file)
    for i, path in enumerate(paths):
        rows = total * (i + 1) // shards - total * i // shards
        tmp = path.with_name(f".{path.name}.tmp")
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            while rows > 0:
                batch = list(islice(lines, min(rows, BATCH_ROWS)))
                if not batch:  # a last line without its "\n" was not counted: nothing more to read
                    break
                rows -= len(batch)
                writer.write_table(pa.table({"text": batch}, schema=SCHEMA), row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, path)
    return paths


__all__ = ["write_parquet_shards", "shard_name"]

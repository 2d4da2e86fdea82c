"""The iterable dataset of ``ilt train --streaming``: one reader's shards -> units -> blocks -> packed rows -> batches.

:class:`StreamingRows` reads a rank's shards (:mod:`ilt_core.training.shards`) from a position on,
segments and blocks the texts, packs the blocks into rows and collates each batch in the reader's
process; each batch carries the reader's position after it and what collating it counted. See
:mod:`ilt_core.training.streaming` for the rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits
from ilt_core.text.row_collator import make_collator
from ilt_core.text.segmentation import segment
from ilt_core.training.readers import TextStats
from ilt_core.training.shards import START, Position, TextStream, rank_shards, reader_shards, shard_order
from ilt_core.training.transfer import STREAM_KEY, pack_tensors

#: What a batch's statistics count (the keys of :class:`~ilt_core.text.row_collator.UnitCollator`'s ``stats``).
STAT_KEYS = ("batches", "rows", "texts", "units", "bytes", "seconds")


class StreamingRows(torch.utils.data.IterableDataset):
    """An endless stream of collated batches (dicts of model inputs) for one rank; see :mod:`ilt_core.training.streaming`.

    Each item is one batch of ``batch_size`` rows (``Batch.model_inputs()``: ``unit_index`` ``(B, L)``
    and the rest as :mod:`ilt_core.text.collator` describes) plus :data:`STREAM_KEY`, the reader's
    position and statistics. Iterate it through :class:`~ilt_core.training.stream_loader.StreamingLoader`, which removes that key.
    """

    def __init__(
        self,
        stream: TextStream,
        processor: Any,
        block_size: int,
        batch_size: int,
        *,
        packing: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shapes: Any = None,
    ) -> None:
        if stream.num_shards < 1:
            raise ILTError(f"{stream.flag} {stream.description}: no shard to stream")
        self.stream = stream
        self.processor = processor
        self.block_size = block_size
        self.batch_size = batch_size
        self.packing = packing
        self.shapes = shapes  # FixedShapes: every batch the same tensor shapes
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shards, self.stride = rank_shards(stream.num_shards, rank, world_size)
        self.requested_workers = max(0, int(num_workers or 0))
        # never more workers than shards: a worker without a shard would have nothing to read
        self.num_workers = min(self.requested_workers, len(self.shards))
        self.num_readers = max(1, self.num_workers)
        # set by StreamingLoader before each pass (copied into the workers when they start)
        self.rotation = 0
        self.start_positions: dict[int, Position] = {}

    def describe(self) -> str:
        """One line for the log: this rank's shards, readers and stride."""
        line = f"rank {self.rank}: {len(self.shards)} of {self.stream.num_shards} shards"
        if self.stride > 1:
            line += (
                f" (fewer shards than the {self.world_size} ranks: every rank reads every shard and keeps one text "
                f"in {self.stride})"
            )
        elif self.stream.num_shards % self.world_size:
            line += f" ({self.stream.num_shards} shards for {self.world_size} ranks: the first ranks hold one more)"
        workers = f"{self.num_workers} DataLoader workers" if self.num_workers else "read in the main process"
        if self.num_workers < self.requested_workers:
            workers += f" (of {self.requested_workers} asked: one per shard at most)"
        return f"{line}, {workers}"

    # ---- texts and blocks -----------------------------------------------------------------
    def _blocks(self, reader: int, start: Position, stats: TextStats) -> Iterator[tuple[TextUnits, Position]]:
        """This reader's blocks from ``start`` on, each with its position; endless (epoch after epoch)."""
        mine = reader_shards(self.shards, reader, self.num_readers)
        per_block = self.block_size - 1
        max_unit_bytes = self.processor.max_unit_bytes
        epoch = start[0]
        while True:
            found = False
            order = shard_order(mine, self.seed, epoch, reader)
            first_shard = start[1] if epoch == start[0] else 0
            for pos in range(first_shard, len(order)):
                shard = order[pos]
                at_start = (epoch, pos) == start[:2]
                skip = max(start[2] if at_start else 0, self.stream.held_out.get(shard, 0))
                k = 0  # index of the next text in this shard
                for chunk in self.stream.texts(shard, stats):
                    if k + len(chunk) <= skip:  # before the start: not even looked at
                        k += len(chunk)
                        continue
                    for text in chunk:
                        index, k = k, k + 1
                        if index < skip or index % self.stride != self.rank % self.stride:
                            continue
                        units = segment(text, max_unit_bytes)
                        first = start[3] if at_start and index == start[2] else 0
                        for b in range(first * per_block, len(units), per_block):
                            found = True
                            piece = units[b : b + per_block]
                            yield TextUnits(piece, b + per_block >= len(units)), (epoch, pos, index, b // per_block)
            if not found:
                names = ", ".join(self.stream.shard_name(s) for s in mine[:3])
                raise ILTError(f"{self.stream.flag}: the shards {names} hold no text for rank {self.rank}")
            epoch += 1

    # ---- rows and batches -----------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._batches()
        except ILTError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            # from a worker, as an item: DataLoader would re-raise it with the worker's traceback in its message
            yield {STREAM_KEY: {"error": str(exc)}}

    def _batches(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        reader = ((info.id if info is not None else 0) + self.rotation) % self.num_readers
        start = tuple(self.start_positions.get(reader, START))
        collator = make_collator(self.processor, self.block_size, self.packing, self.shapes)
        stats = TextStats(self.stream.description)
        rows: list[list[TextUnits]] = []
        row: list[TextUnits] = []
        used = 0
        reported_bad = 0
        for block, position in self._blocks(reader, start, stats):  # type: ignore[arg-type]
            n = len(block.units) + 1
            if row and (not self.packing or used + n > self.block_size):
                rows.append(row)
                row, used = [], 0
                if len(rows) == self.batch_size:
                    before = dict(collator.stats)
                    inputs = collator(rows)
                    digest = hashlib.sha256()
                    for r in rows:
                        for t in r:
                            digest.update("\x1f".join(t.units).encode("utf-8", "surrogatepass") + b"\x1e")
                    delta = {k: collator.stats[k] - before[k] for k in STAT_KEYS}
                    delta["bad_records"] = stats.bad_records + stats.bad_files - reported_bad  # a bad shard counts once
                    reported_bad = stats.bad_records + stats.bad_files
                    inputs[STREAM_KEY] = {
                        "reader": reader,
                        "position": position,  # the block that opens the next batch
                        "stats": delta,
                        "digest": digest.hexdigest(),
                        "first_bad": stats.first_bad,
                    }
                    yield pack_tensors(inputs, shared=True) if info is not None else inputs
                    rows = []
            row.append(block)
            used += n


__all__ = ["STAT_KEYS", "StreamingRows"]

"""The map-style training set: rows packed from the cached blocks, read by pread, in Trainer's order.

:func:`pack_blocks` packs a blocks dataset (:mod:`ilt_core.training.blocks`) into rows and caches the
offsets as an Arrow file beside the blocks (``rows-<fingerprint>.arrow``). A batch of
``per_device_train_batch_size`` rows re-packs into at most that many rows (greedy in-order packing is
optimal among contiguous splits). Without packing a row is one block. :class:`RowDataset` reads a
row's blocks from the Arrow files when asked (:mod:`ilt_core.training.rows`), in the order of
:class:`RowSampler` (Trainer's seeded permutation, one int32 tensor); the collator
(:mod:`ilt_core.text.row_collator`) renders and byte-encodes them per batch.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ilt_core.text.collator import TextUnits
from ilt_core.training.blocks import BlockStats, blocks_of_units, cache_fingerprint, dataset_folder, pack_offsets
from ilt_core.training.rows import BlockReader, RowOffsets


def _load_or_pack(
    blocks: Any, block_size: int, packing: bool, folder: str | None
) -> tuple[np.ndarray | RowOffsets, BlockStats]:
    """Row offsets and block stats, from ``rows-<fingerprint>.arrow`` when an earlier run wrote it.

    With a ``folder`` the offsets come back as a :class:`RowOffsets` over that file (read by pread,
    whether this call packed them or not: a first run holds what a cached run holds); without one, as
    an in-memory int64 array ``(rows + 1,)``.
    """
    fingerprint = cache_fingerprint(blocks._fingerprint, "rows", block_size, packing)
    path = Path(folder) / f"rows-{fingerprint}.arrow" if folder else None
    if path is not None and path.is_file():
        offsets = RowOffsets.open(path)
        if offsets is not None:
            return offsets, offsets.stats
    lengths = blocks.data.column("length").to_numpy()  # int32: 4 bytes a block, the only column read
    complete = blocks.data.column("complete").to_numpy(zero_copy_only=False)
    texts = int(complete.sum())
    # a text split into k blocks has k - 1 incomplete blocks, then its complete one
    split = int((complete[1:] & ~complete[:-1]).sum()) if len(complete) > 1 else 0
    if len(complete) and not complete[-1]:  # max_*_samples cut a text: its last block counts as a text
        texts += 1
    offsets = pack_offsets(lengths, block_size) if packing else np.arange(len(lengths) + 1, dtype=np.int64)
    stats = BlockStats(texts, int(lengths.sum(dtype=np.int64)), len(lengths), split, len(offsets) - 1)
    del lengths, complete
    if path is None:
        return offsets, stats
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table = pa.table({"offset": offsets}).replace_schema_metadata({"stats": json.dumps(asdict(stats))})
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    del table
    return RowOffsets.open(path) or offsets, stats


def pack_blocks(blocks: Any, block_size: int, packing: bool = True) -> RowDataset:
    """A :class:`RowDataset` over ``blocks``: rows packed from the ``length`` column (cached)."""
    offsets, stats = _load_or_pack(blocks, block_size, packing, dataset_folder(blocks))
    return RowDataset(blocks, offsets, stats)


class RowDataset(torch.utils.data.Dataset):
    """A map-style dataset of rows, each a list of :class:`TextUnits` read from the Arrow blocks.

    Holds the blocks dataset (memory-mapped, for ``datasets``' API), the rows' offsets into it
    (:class:`RowOffsets` over the cached file, or an int64 array in memory) and a :class:`BlockReader`
    that reads a row's blocks by pread: nothing per text or per row lives in the process, and reading
    rows at random leaves no file pages mapped (memory flat in the corpus size, whatever the steps).
    Without a reader (an in-memory dataset) rows are read through ``datasets``.
    """

    def __init__(self, blocks: Any, offsets: np.ndarray | RowOffsets, stats: BlockStats) -> None:
        blocks = blocks.select_columns(["units", "complete"])
        self.offsets = offsets
        self.stats = stats
        self.reader = BlockReader.of(blocks)
        # With a reader, the blocks dataset is kept closed, as its pickle (its files and slices: small):
        # an open one keeps the pages of every record batch's header that datasets read when it opened
        # the files mapped (RSS that grows with the size of the blocks).
        self._blocks: Any = blocks if self.reader is None else None
        self._reopen: bytes | None = None if self.reader is None else pickle.dumps(blocks)

    @property
    def blocks(self) -> Any:
        """The blocks dataset (``units``, ``complete``; reopened from its files when a reader reads the rows)."""
        return self._blocks if self._blocks is not None else pickle.loads(self._reopen)  # our own pickle

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def span(self, i: int) -> tuple[int, int]:
        """Row ``i``'s blocks: ``(first, stop)``."""
        if isinstance(self.offsets, RowOffsets):
            return self.offsets.span(i)
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def __getitem__(self, i: int) -> list[TextUnits]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        first, stop = self.span(i)
        if self.reader is not None:
            return self.reader.read(first, stop)
        part = self._blocks[first:stop]
        return [TextUnits(u, bool(c)) for u, c in zip(part["units"], part["complete"], strict=True)]

    @property
    def rows(self) -> Iterator[list[TextUnits]]:
        """Every row in order, read one at a time (for a pass over the data, e.g. warming a cache)."""
        return (self[i] for i in range(len(self)))

    @property
    def num_units(self) -> int:
        """Units in the dataset, start markers excluded."""
        return self.stats.units


class RowSampler(torch.utils.data.Sampler[int]):
    """Trainer's random order of the rows, held as one tensor (4 bytes a row; 8 past 2**31 rows).

    Trainer's ``RandomSampler`` (made accelerate's ``SeedableRandomSampler`` when prepared) yields
    ``torch.randperm(n, generator).tolist()`` with the generator seeded ``seed + epoch``: the same
    order here, so runs, resumed runs and every rank see the same rows in the same order, but yielded
    from the tensor in chunks instead of a list of ``n`` Python ints (a Python int and its list slot
    take several times the tensor's 4 bytes a row). ``seed`` is ``--data_seed``, else ``--seed``.
    ``torch.randperm`` draws the same permutation in int32 as in int64 (tests check it against
    accelerate's sampler), so int32 holds it wherever the row count fits.
    """

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows, self.seed, self.epoch = int(num_rows), int(seed), 0

    def __len__(self) -> int:
        return self.num_rows

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's DataLoader before each pass (and by Trainer when it resumes)."""
        self.epoch = int(epoch)

    def permutation(self) -> torch.Tensor:
        """This epoch's order: int32 (int64 past 2**31 rows) ``(num_rows,)``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        dtype = torch.int32 if self.num_rows < 2**31 else torch.int64
        return torch.randperm(self.num_rows, generator=generator, dtype=dtype)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation()
        for chunk in order.split(1 << 14):  # Python ints for 16,384 rows at a time
            yield from chunk.tolist()
        self.epoch += 1  # as SeedableRandomSampler does after a whole pass


def rows_from_units(units_per_text: Sequence[list[str]], block_size: int, packing: bool = True) -> RowDataset:
    """A :class:`RowDataset` from texts already segmented (in memory; for tests and small jobs)."""
    import datasets  # heavy; only when the data is prepared

    ds = datasets.Dataset.from_dict(blocks_of_units(units_per_text, block_size))
    offsets, stats = _load_or_pack(ds, block_size, packing, None)
    return RowDataset(ds, offsets, stats)


__all__ = ["RowDataset", "RowSampler", "pack_blocks", "rows_from_units"]

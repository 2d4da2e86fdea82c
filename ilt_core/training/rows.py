"""The row reader: blocks and row offsets read from their Arrow files by ``os.pread``, not a memory map.

A random row read from a memory-mapped file maps the pages around it into the process: the kernel's
fault-around maps 64 KiB (more with large folios) per fault, and ``madvise(MADV_RANDOM)`` does not turn
that off. Over a training run that reads rows at random, RSS then grows toward the size of the blocks
file. Rows and offsets are therefore read with ``os.pread`` at the file positions of their Arrow
buffers (found from ``datasets``' tables: :class:`BlockReader`, :class:`RowOffsets`): the bytes are
copied from the kernel's page cache (shared, reclaimable) and nothing of the file stays mapped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits
from ilt_core.training.blocks import BlockStats


class _Files:
    """Read-only file descriptors by path, opened on first use; pickles as paths (DataLoader workers)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def pread(self, path: str, size: int, position: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(fd, size, position)
        if len(data) != size:
            raise ILTError(
                f"{path}: {len(data)} bytes at byte {position}, expected {size}; was the cache file changed?"
            )
        return data

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        # os.close bound at definition: __del__ may run at interpreter exit, after the os module is gone
        for fd in self._fds.values():
            _close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._fds = {}


def _mapped_batches(path: str) -> tuple[Iterator[pa.RecordBatch], int, int]:
    """The record batches of an Arrow IPC file (stream or file format), zero-copy from a memory map,
    with the map's base address and size: a buffer's file position is its address minus the base.
    Only the batches' headers are read (their pages are unmapped when the batches are dropped)."""
    source = pa.memory_map(path)
    base = source.read_buffer(1).address if source.size() else 0
    source.seek(0)
    try:
        reader: Any = pa.ipc.open_stream(source)
        batches: Iterator[pa.RecordBatch] = iter(reader)
    except pa.ArrowInvalid:
        source.seek(0)
        file_reader = pa.ipc.open_file(source)
        batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    return batches, base, source.size()


def _offset_type(kind: pa.DataType) -> np.dtype | None:
    """The numpy type of a list's or string's offsets (int32, or int64 for the large kinds)."""
    if pa.types.is_list(kind) or pa.types.is_string(kind):
        return np.dtype("<i4")
    if pa.types.is_large_list(kind) or pa.types.is_large_string(kind):
        return np.dtype("<i8")
    return None


#: Per record batch of a blocks file: first row (in the file), rows, then (file position, first index)
#: of the list offsets, the unit strings' offsets, their bytes and the ``complete`` bit map.
_LAYOUT_FIELDS = ("row", "rows", "lists", "lists_at", "strings", "strings_at", "chars", "bits", "bits_at")


def _blocks_file_layout(path: str) -> tuple[np.ndarray, np.dtype, np.dtype] | None:
    """Where each record batch's ``units`` and ``complete`` buffers lie in ``path``: an int64 array
    ``(batches, 9)`` of :data:`_LAYOUT_FIELDS`, and the list and string offset types; None when the
    file is not laid out as expected (nulls, compressed buffers, other types)."""
    batches, base, size = _mapped_batches(path)
    rows: list[list[int]] = []
    list_type = string_type = None
    first = 0

    def place(buffer: pa.Buffer | None) -> int | None:
        if buffer is None or buffer.size == 0:
            return 0
        at = buffer.address - base
        return at if 0 <= at and at + buffer.size <= size else None  # outside the map: decompressed, a copy

    for batch in batches:
        if "units" not in batch.schema.names or "complete" not in batch.schema.names:
            return None
        units, complete = batch.column("units"), batch.column("complete")
        list_type, string_type = _offset_type(units.type), _offset_type(getattr(units.type, "value_type", pa.null()))
        if list_type is None or string_type is None or not pa.types.is_boolean(complete.type):
            return None
        if units.null_count or units.values.null_count or complete.null_count:
            return None
        buffers = units.buffers()  # validity, list offsets, strings' validity, string offsets, bytes
        at = [place(buffers[1]), place(buffers[3]), place(buffers[4]), place(complete.buffers()[1])]
        if len(buffers) != 5 or any(a is None for a in at):
            return None
        n = len(batch)
        rows.append([first, n, at[0], units.offset, at[1], units.values.offset, at[2], at[3], complete.offset])
        first += n
    if list_type is None or string_type is None:
        return np.zeros((0, len(_LAYOUT_FIELDS)), dtype=np.int64), np.dtype("<i4"), np.dtype("<i4")
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(_LAYOUT_FIELDS)), list_type, string_type


class BlockReader:
    """Blocks (their ``units`` and ``complete``) read by index from a blocks dataset's Arrow files with
    ``os.pread``: per record batch touched, one read of the lists' offsets, one of the strings' offsets,
    one of the strings' bytes and one of the ``complete`` bits, each only the row's bytes.

    Holds, per record batch of each file, the file positions of those buffers (nine int64s), and per
    segment of the dataset (a file, or a slice of one) its file and first row: nothing per row.
    Use :meth:`of`, which returns None for a dataset it cannot read this way (in memory, an indices
    mapping, a table cast or joined after loading, compressed buffers); read those through ``datasets``.
    """

    def __init__(
        self, segments: list[tuple[str, int, int]], layouts: dict[str, tuple[np.ndarray, np.dtype, np.dtype]]
    ) -> None:
        self.segments = segments  # (path, first row in the file, rows), in the dataset's order
        self.starts = np.cumsum([0] + [n for _, _, n in segments], dtype=np.int64)
        self.layouts = layouts
        self.files = _Files()

    @classmethod
    def of(cls, blocks: Any) -> BlockReader | None:
        """A reader of ``blocks`` (a ``datasets.Dataset`` with ``units`` and ``complete``), or None."""
        from datasets.table import ConcatenationTable, MemoryMappedTable  # heavy; only with data

        # datasets' internals (tested with datasets 3-5): an indices mapping, the tables' files and replayed ops;
        # where one is missing the rows are read through datasets instead (pread_rows_path() says so)
        if not hasattr(os, "pread") or not hasattr(blocks, "_indices") or blocks._indices is not None:
            return None
        table = blocks.data
        parts = [row for row in table.blocks] if isinstance(table, ConcatenationTable) else [[table]]
        segments = []
        for row in parts:
            if len(row) != 1 or not isinstance(row[0], MemoryMappedTable):  # joined by columns, or in memory
                return None
            if not isinstance(getattr(row[0], "replays", None), list) or not hasattr(row[0], "path"):
                return None
            start = 0
            for op, args, _ in row[0].replays:
                if op == "slice":
                    start += int(args[0])
                elif op not in ("replace_schema_metadata", "select", "drop", "remove_column", "rename_columns"):
                    return None  # e.g. a cast: the file's bytes are not what the dataset shows
            segments.append((str(row[0].path), start, row[0].num_rows))
        layouts = {}
        for path in {p for p, _, _ in segments}:
            layout = _blocks_file_layout(path)
            if layout is None:
                return None
            layouts[path] = layout
        for path, start, n in segments:
            table_rows = layouts[path][0]
            if start + n > (int(table_rows[-1, 0] + table_rows[-1, 1]) if len(table_rows) else 0):
                return None
        return cls(segments, layouts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> list[TextUnits]:
        """Blocks ``start:stop`` of the dataset (``0 <= start <= stop <= len``), in order."""
        out: list[TextUnits] = []
        while start < stop:
            s = int(np.searchsorted(self.starts, start, side="right")) - 1
            path, first, _ = self.segments[s]
            end = min(stop, int(self.starts[s + 1]))
            begin_in_file, end_in_file = first + start - int(self.starts[s]), first + end - int(self.starts[s])
            out.extend(self._read_file(path, begin_in_file, end_in_file))
            start = end
        return out

    def _read_file(self, path: str, start: int, stop: int) -> Iterator[TextUnits]:
        layout, list_type, string_type = self.layouts[path]
        while start < stop:
            b = int(np.searchsorted(layout[:, 0], start, side="right")) - 1
            row, rows, lists, lists_at, strings, strings_at, chars, bits, bits_at = (int(x) for x in layout[b])
            r0, r1 = start - row, min(stop, row + rows) - row
            yield from self._read_batch(path, list_type, string_type, lists, lists_at + r0, r1 - r0, strings,
                                        strings_at, chars, bits, bits_at + r0)  # fmt: skip
            start = row + r1

    def _read_batch(
        self,
        path: str,
        list_type: np.dtype,
        string_type: np.dtype,
        lists: int,
        first_list: int,
        n: int,
        strings: int,
        strings_at: int,
        chars: int,
        bits: int,
        first_bit: int,
    ) -> Iterator[TextUnits]:
        pread = self.files.pread
        lw, sw = list_type.itemsize, string_type.itemsize
        ends = np.frombuffer(pread(path, (n + 1) * lw, lists + first_list * lw), list_type)
        u0, u1 = int(ends[0]), int(ends[-1])
        bounds = np.frombuffer(pread(path, (u1 - u0 + 1) * sw, strings + (strings_at + u0) * sw), string_type)
        c0 = int(bounds[0])
        data = pread(path, int(bounds[-1]) - c0, chars + c0)
        cuts = (bounds - c0).tolist()
        units = [data[cuts[i] : cuts[i + 1]].decode("utf-8") for i in range(len(cuts) - 1)]
        byte0, byte1 = first_bit // 8, (first_bit + n - 1) // 8 + 1
        flags = np.unpackbits(np.frombuffer(pread(path, byte1 - byte0, bits + byte0), np.uint8), bitorder="little")
        flags = flags[first_bit % 8 : first_bit % 8 + n].tolist()
        ends_list = (ends - u0).tolist()
        for j in range(n):
            yield TextUnits(units[ends_list[j] : ends_list[j + 1]], bool(flags[j]))


def pread_rows_path() -> Any:
    """Whether map-style training rows can be read with ``os.pread`` (:class:`BlockReader`) with the installed
    ``datasets``: a :class:`ilt_core.plugins.registry.FastPath`."""
    import inspect

    import datasets
    from datasets.table import ConcatenationTable, MemoryMappedTable

    from ilt_core.plugins.registry import FastPath

    name = "core: map-style training rows read with os.pread from the Arrow cache (not the memory map)"
    if not hasattr(os, "pread"):
        return FastPath(name, False, "this system has no os.pread: rows read through datasets")
    missing = [f"MemoryMappedTable({n})" for n in ("path", "replays")
               if n not in inspect.signature(MemoryMappedTable.__init__).parameters]  # fmt: skip
    missing += (
        [] if "blocks" in inspect.signature(ConcatenationTable.__init__).parameters else ["ConcatenationTable(blocks)"]
    )
    missing += (
        [] if "indices_table" in inspect.signature(datasets.Dataset.__init__).parameters else ["Dataset(indices_table)"]
    )
    if missing:
        return FastPath(
            name, False, f"datasets {datasets.__version__} has no {', '.join(missing)}: rows read through datasets"
        )
    return FastPath(
        name, True, f"datasets {datasets.__version__}'s memory-mapped tables keep their file and operations"
    )


class RowOffsets:
    """The rows' int64 offsets into the blocks ``(rows + 1,)``, read two at a time by pread from the
    ``rows-*.arrow`` file that :func:`pack_blocks` caches (not memory-mapped: see the module docstring)."""

    def __init__(self, path: str, position: int, length: int, stats: BlockStats) -> None:
        self.path, self.position, self.length, self.stats = path, position, length, stats
        self.files = _Files()

    @classmethod
    def open(cls, path: str | Path) -> RowOffsets | None:
        """The offsets in ``path`` (one int64 column, the stats in its metadata); None if laid out otherwise."""
        batches, base, size = _mapped_batches(str(path))
        found = list(batches)
        if len(found) != 1 or found[0].num_columns != 1 or found[0].column(0).type != pa.int64():
            return None
        column = found[0].column(0)
        buffer = column.buffers()[1]
        position = buffer.address - base + column.offset * 8
        if column.null_count or not 0 <= position <= size - 8 * len(column):
            return None
        stats = BlockStats(**json.loads(found[0].schema.metadata[b"stats"]))
        return cls(str(path), position, len(column), stats)

    def __len__(self) -> int:
        return self.length

    def span(self, row: int) -> tuple[int, int]:
        """Row ``row``'s blocks: ``(first, stop)``."""
        if not 0 <= row < self.length - 1:
            raise IndexError(f"row {row} of {self.length - 1}")
        first, stop = np.frombuffer(self.files.pread(self.path, 16, self.position + 8 * row), "<i8").tolist()
        return first, stop

    def to_numpy(self) -> np.ndarray:
        """Every offset, read into memory (``8 * len`` bytes: for tests and small datasets)."""
        return np.frombuffer(self.files.pread(self.path, 8 * self.length, self.position), "<i8").copy()


__all__ = ["pread_rows_path", "BlockReader", "RowOffsets"]

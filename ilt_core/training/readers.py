"""Reading one source file's texts: text, JSON, CSV and parquet readers with one bad-record rule.

Text, JSON and CSV files are read line by line so that a bad record is named by its file and line
(``datasets``' own builders give no line numbers); parquet shards row group by row group. A bad record
(a line that is not UTF-8, a JSON line that does not parse, a record without the text column, an
unreadable parquet row group) is an :class:`ILTError` naming the file and line, or with
``skip_bad_records`` is skipped and counted in :class:`TextStats`. :func:`read_text_batches` yields a
file's non-blank texts as Arrow string arrays, for the Arrow cache (:mod:`ilt_core.training.texts`)
and the stream (:mod:`ilt_core.training.stream_dataset`) alike.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ilt_core.errors import ILTError
from ilt_core.training.sources import SourceFile, first_line, parquet_problem

_BATCH_CHARS = 1 << 17  # characters turned into one Arrow array at a time (bounds the Python strings held)
_READ_BYTES = 1 << 18  # bytes of lines read (and decoded) at once


@dataclass
class TextStats:
    """What reading a source found: records read, texts kept, blank texts, bad records and files."""

    source: str
    records: int = 0
    texts: int = 0
    blank: int = 0
    bad_records: int = 0
    bad_files: int = 0
    first_bad: str | None = None
    cached_files: int = 0
    seconds: float = 0.0

    def add(self, other: TextStats) -> None:
        for name in ("records", "texts", "blank", "bad_records", "bad_files", "cached_files"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.first_bad = self.first_bad or other.first_bad


class _BadRecords:
    """Raises at the first bad record, or (``skip``) counts it and keeps the first message."""

    def __init__(self, flag: str, path: Path, skip: bool, stats: TextStats) -> None:
        self.flag, self.path, self.skip, self.stats = flag, path, skip, stats

    def __call__(self, where: str, why: str) -> None:
        message = f"{self.flag} {self.path} {where}: {why}"
        if not self.skip:
            raise ILTError(f"{message}; pass --skip_bad_records to skip such records")
        self.stats.bad_records += 1
        self.stats.first_bad = self.stats.first_bad or message


def _open_binary(f: SourceFile) -> BinaryIO:
    if f.compression == ".gz":
        return gzip.open(f.path, "rb")  # type: ignore[return-value]
    if f.compression == ".bz2":
        return bz2.open(f.path, "rb")  # type: ignore[return-value]
    if f.compression == ".xz":
        return lzma.open(f.path, "rb")  # type: ignore[return-value]
    if f.compression == ".zst":
        try:  # optional: datasets reads .zst only with it too
            import zstandard
        except ImportError:
            raise ILTError(f"{f.path}: a .zst file needs the `zstandard` package (pip install zstandard)") from None
        return zstandard.open(f.path, "rb")  # type: ignore[return-value]
    return open(f.path, "rb")


def _decoded_lines(handle: Iterator[bytes], bad: _BadRecords, first: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its ending) for each line; a non-UTF-8 line is bad."""
    for number, raw in enumerate(handle, first):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad(f"line {number}", f"not UTF-8 (byte {exc.start}: {exc.reason})")
            continue
        yield number, line.rstrip("\r\n") if line.endswith("\n") else line


def _text_value(value: Any, where: str, bad: _BadRecords) -> str | None:
    """A record's text: None (blank) for null, the string, or bad for anything else."""
    if value is None or isinstance(value, str):
        return value
    bad(where, f"the text is {type(value).__name__} {str(value)[:40]!r}; expected a string")
    return None


def _read_text_file(f: SourceFile, column: str, bad: _BadRecords) -> Iterator[str | None]:
    """One text per line; other line breaks inside a line (\\r, U+2028, ...) separate texts too, as
    ``str.splitlines`` does (and as ``ilt train`` read .txt files before). A blank line gives ``""``."""
    done = 0
    with _open_binary(f) as handle:
        # many lines decoded at once (fast); a chunk that is not UTF-8 goes line by line to name the line
        while chunk := handle.readlines(_READ_BYTES):
            first, done = done + 1, done + len(chunk)
            try:
                texts = b"".join(chunk).decode("utf-8").splitlines()
            except UnicodeDecodeError:
                texts = [t for _, line in _decoded_lines(iter(chunk), bad, first) for t in line.splitlines() or [""]]
            del chunk  # hold one chunk at a time: memory flat in the file's size
            yield from texts
            del texts
            bad.stats.records = done


def _read_json_file(f: SourceFile, column: str, bad: _BadRecords) -> Iterator[str | None]:
    """JSON Lines (or a ``.json`` file holding one list of objects): each object's ``column``."""
    with _open_binary(f) as handle:
        is_list = handle.read(1 << 16).lstrip()[:1] == b"["
    with _open_binary(f) as handle:
        if is_list:  # one JSON list: read whole (not line-addressable; a large corpus should be JSON Lines)
            try:
                records = json.loads(handle.read().decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad(f"byte {exc.start}", f"not UTF-8 ({exc.reason})")
                return
            except json.JSONDecodeError as exc:
                bad(f"line {exc.lineno}", f"not valid JSON ({exc.msg})")
                return
            for i, record in enumerate(records, 1):
                bad.stats.records += 1
                yield _json_text(record, column, f"record {i}", bad)
            return
        for number, line in _decoded_lines(handle, bad):
            if not line.strip():
                continue
            bad.stats.records += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(f"line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield _json_text(record, column, f"line {number}", bad)


def _json_text(record: Any, column: str, where: str, bad: _BadRecords) -> str | None:
    if not isinstance(record, dict):
        bad(where, f"expected a JSON object with a {column!r} field, found {type(record).__name__}")
        return None
    if column not in record:
        fields = ", ".join(map(repr, list(record)[:8])) or "none"
        bad(where, f"no field {column!r} (--text_column_name); its fields are {fields}")
        return None
    return _text_value(record[column], where, bad)


def _read_csv_file(f: SourceFile, column: str, bad: _BadRecords) -> Iterator[str | None]:
    """The ``column`` of each row of a CSV / TSV file with a header row."""
    delimiter = "\t" if f.path.name.lower().removesuffix(f.compression or "").endswith(".tsv") else ","
    csv.field_size_limit(2**31 - 1)  # a web document is often longer than csv's default 128 KiB field
    current = 0

    def lines(handle: BinaryIO) -> Iterator[str]:
        nonlocal current
        for current, line in _decoded_lines(handle, bad):  # noqa: B007 (current names the record's line)
            yield line + "\n"

    with _open_binary(f) as handle:
        reader = csv.reader(lines(handle), delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            index = header.index(column) if column in header else None
            for row in reader:
                bad.stats.records += 1
                if index is None:
                    columns = ", ".join(map(repr, header))
                    bad(f"line {current}", f"no column {column!r} (--text_column_name); its columns are {columns}")
                elif index >= len(row):
                    bad(f"line {current}", f"{len(row)} fields, no value for column {column!r}")
                else:
                    yield row[index]
        except csv.Error as exc:
            bad(f"line {current}", f"not valid CSV ({exc})")


def _parquet_batches(f: SourceFile, column: str, bad: _BadRecords, stats: TextStats) -> Iterator[pa.Array]:
    """The ``column`` of a parquet shard, row group by row group, blank texts dropped."""
    problem = parquet_problem(f.path, column)
    if problem is not None:  # only reached with skip (the footers were checked before)
        stats.bad_files += 1
        stats.first_bad = stats.first_bad or f"{bad.flag} {f.path}: {problem}"
        return
    shard = pq.ParquetFile(f.path)
    for group in range(shard.num_row_groups):
        rows = shard.metadata.row_group(group).num_rows
        try:
            table = shard.read_row_group(group, columns=[column])
        except (pa.ArrowException, OSError) as exc:
            if not bad.skip:
                raise ILTError(
                    f"{bad.flag} {f.path}: row group {group} of {shard.num_row_groups} (rows "
                    f"{stats.records}..{stats.records + rows - 1}) does not read ({first_line(exc)}); "
                    f"pass --skip_bad_records to skip it"
                ) from None
            stats.bad_records += rows
            stats.first_bad = stats.first_bad or f"{bad.flag} {f.path}: row group {group} does not read"
            stats.records += rows
            continue
        stats.records += rows
        for chunk in table.column(0).chunks:
            chunk = chunk.cast(pa.string())
            kept = _non_blank(chunk)
            stats.blank += len(chunk) - len(kept)
            stats.texts += len(kept)
            yield kept


def _non_blank(chunk: pa.Array) -> pa.Array:
    """The strings of ``chunk`` (a string array) that are neither null nor whitespace only."""
    keep = pc.and_kleene(pc.is_valid(chunk), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(chunk)), 0))
    return chunk.filter(pc.fill_null(keep, False))


def warm_text_reading() -> None:
    """Load what reading parquet texts loads on first use (pyarrow.compute imports pandas), so that
    DataLoader workers forked after this call inherit it instead of each importing it again."""
    _non_blank(pa.array([" ", "a"], type=pa.string()))


def _text_batches(f: SourceFile, column: str, flag: str, skip: bool, stats: TextStats) -> Iterator[pa.Array]:
    """The non-blank texts of one file as Arrow string arrays (see :func:`load_texts`)."""
    bad = _BadRecords(flag, f.path, skip, stats)
    if f.format == "parquet":
        yield from _parquet_batches(f, column, bad, stats)
        return
    reader: Callable[[SourceFile, str, _BadRecords], Iterator[str | None]] = {
        "text": _read_text_file,
        "json": _read_json_file,
        "csv": _read_csv_file,
    }[f.format]
    texts: list[str] = []
    chars = 0
    for text in reader(f, column, bad):
        if text is None or not text.strip():
            stats.blank += 1
            continue
        texts.append(text)
        chars += len(text)
        if chars >= _BATCH_CHARS:
            stats.texts += len(texts)
            yield pa.array(texts, pa.string())
            texts, chars = [], 0
    if texts:
        stats.texts += len(texts)
        yield pa.array(texts, pa.string())


#: The per-file reader, public for the streaming path (:mod:`ilt_core.training.streaming`): the same bad-record rules.
read_text_batches = _text_batches


__all__ = ["TextStats", "read_text_batches", "warm_text_reading"]

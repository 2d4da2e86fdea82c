"""Training data for ``ilt train``: sources -> Arrow texts -> blocks of units -> packed rows -> batches.

Everything before the collator lives in Arrow files on disk (memory-mapped, as ``datasets`` keeps
them) and is cached there, so that memory and a second run's start-up do not grow with the corpus:

1. **Sources.** ``--train_file`` / ``--validation_file`` name a file, a glob (``'shards/*.parquet'``)
   or a folder of shards, in one format: ``.txt`` (one text per line), ``.jsonl`` / ``.json``,
   ``.csv`` / ``.tsv`` (the ``--text_column_name`` field, default ``text``) or ``.parquet`` (that
   column), each optionally compressed (``.gz``, ``.bz2``, ``.xz``; ``.zst`` with ``zstandard``).
   :func:`resolve_source` checks them before anything is read: every file exists, a glob matches,
   every parquet shard's footer reads and names the text column. ``--dataset_name`` goes through
   ``datasets.load_dataset`` as in run_clm.py.
2. **Texts.** :func:`load_texts` turns each file into one Arrow file of non-blank texts
   (``<cache>/ilt-texts/texts-<key>.arrow``, the key hashing the path, size, mtime and column):
   text, JSON and CSV files are read line by line so that a bad record is named by its file and
   line (``datasets``' own builders give no line numbers); parquet shards row group by row group.
   A bad record (a line that is not UTF-8, a JSON line that does not parse, a record without the
   text column, an unreadable parquet row group) is an :class:`ILTError` naming the file and line,
   or with ``skip_bad_records`` is skipped and counted. The shards' Arrow files are concatenated
   (no copy) into one ``datasets.Dataset``.
3. **Blocks.** :func:`make_blocks` runs ``Dataset.map(batched=True, num_proc=...)`` (run_clm.py's
   tokenize-and-group step): each text is segmented into units (:func:`ilt_core.text.segmentation.segment`)
   and split into blocks of at most ``block_size - 1`` units (the start marker takes a row's last
   position); only a text's final block is *complete* (it gets the end-of-text label), as
   :func:`ilt_core.evaluation.text_blocks` scores long texts. Columns: ``units`` (list of strings),
   ``complete`` (bool), ``length`` (int32, units). The map's fingerprint hashes the texts'
   fingerprint, the settings and :data:`PREPROCESSING_VERSION`, so a second run with the same data
   and settings loads the cached Arrow file and maps nothing. ``max_*_samples`` counts blocks.
4. **Rows.** :func:`pack_blocks` packs consecutive blocks greedily (in corpus order) into rows of
   at most ``block_size`` positions, reading only the ``length`` column; a row is a contiguous range
   of blocks, so the packing is one int64 offsets array (cached as an Arrow file beside the blocks).
   A batch of ``per_device_train_batch_size`` rows re-packs into at most that many rows (greedy
   in-order packing is optimal among contiguous splits). Without packing a row is one block.
5. **Batches.** :class:`RowDataset` reads a row's blocks from the Arrow files when asked, by
   ``os.pread`` of just the row's bytes (:class:`BlockReader`, :class:`RowOffsets`: a memory map read
   at random rows would keep mapping file pages, RSS growing toward the files' size), in the order of
   :class:`RowSampler` (Trainer's seeded permutation, one int32 tensor);
   :class:`UnitCollator` renders and byte-encodes them per batch through the processor (whose
   byte-capped render cache makes a repeated word free) into ``Batch.model_inputs()``.
"""

from __future__ import annotations

import bz2
import csv
import glob as globlib
import gzip
import hashlib
import json
import lzma
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits
from ilt_core.text.segmentation import segment

#: Bump when reading, segmenting or blocking changes what the cached Arrow files hold.
PREPROCESSING_VERSION = 1
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
FORMATS = {"text": TEXT_SUFFIXES, "json": JSON_SUFFIXES, "csv": CSV_SUFFIXES, "parquet": PARQUET_SUFFIXES}
_TEXT_SCHEMA = pa.schema([("text", pa.string())])
_BATCH_CHARS = 1 << 17  # characters turned into one Arrow array at a time (bounds the Python strings held)
#: Bytes of text per Arrow record batch written, and blocks per record batch of the map's output. Few,
#: large record batches: opening a memory-mapped Arrow file reads every batch's header, and each read
#: maps the pages around it (the kernel's fault-around, 64 KiB), so RSS grows with the number of batches.
RECORD_BATCH_BYTES = 16 << 20
MAP_BATCH_SIZE = 10_000
_READ_BYTES = 1 << 18  # bytes of lines read (and decoded) at once
_GLOB_CHARS = set("*?[")
#: Counts calls of the blocking map function in this process (tests check that a cached run maps nothing).
MAP_CALLS = 0


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One data file: its path, format (``text``, ``json``, ``csv``, ``parquet``) and compression."""

    path: Path
    format: str
    compression: str | None = None


@dataclass
class TextSource:
    """One split's texts before reading: checked files, or a ``datasets`` dataset (hub)."""

    flag: str
    description: str
    column: str = "text"
    files: list[SourceFile] = field(default_factory=list)
    dataset: Any = None  # a datasets.Dataset for --dataset_name


def _file_format(path: Path, flag: str, strict: bool) -> SourceFile | None:
    """The format of ``path`` from its suffixes; None (strict: an error) when not a data file."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES else None
    suffix = suffixes[-1] if suffixes else ""
    for fmt, known in FORMATS.items():
        if suffix in known:
            if fmt == "parquet" and compression:
                raise ILTError(f"{flag} {path}: a compressed parquet file; parquet compresses its own pages")
            return SourceFile(path, fmt, compression)
    if strict:  # a single named file of another suffix: one text per line, as before
        return SourceFile(path, "text", compression)
    return None


def _known_suffixes() -> str:
    return ", ".join(s for known in FORMATS.values() for s in known)


def resolve_files(spec: str, flag: str) -> list[SourceFile]:
    """The files ``spec`` names: a file, a glob or a folder (every data file under it, sorted).

    Errors name ``flag`` and the path or pattern; all files must be of one format.
    """
    path = Path(spec).expanduser()
    if _GLOB_CHARS & set(spec):
        matches = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise ILTError(f"{flag} {spec}: the pattern matches no file")
        files = [f for f in (_file_format(p, flag, strict=False) for p in matches) if f is not None]
        if not files:
            names = ", ".join(p.name for p in matches[:3])
            raise ILTError(f"{flag} {spec}: matches no data file ({names}, ...); expected {_known_suffixes()}")
    elif path.is_dir():
        found = sorted(
            p for p in path.rglob("*") if p.is_file() and not any(q.startswith(".") for q in p.relative_to(path).parts)
        )
        files = [f for f in (_file_format(p, flag, strict=False) for p in found) if f is not None]
        if not files:
            raise ILTError(f"{flag} {path}: a folder without data files; expected files ending {_known_suffixes()}")
    elif path.is_file():
        files = [_file_format(path, flag, strict=True)]  # type: ignore[list-item]
    elif path.exists():
        raise ILTError(f"{flag} {path}: not a file or folder")
    else:
        raise ILTError(f"{flag} {path}: no such file")
    formats = sorted({f.format for f in files})
    if len(formats) > 1:
        raise ILTError(f"{flag} {spec}: mixes formats ({', '.join(formats)}); pass files of one format")
    return files


def check_parquet_footers(files: Sequence[SourceFile], column: str, flag: str, skip_bad: bool) -> list[str]:
    """Read every parquet shard's footer (schema, row groups) before anything trains.

    A shard that is not parquet, is cut short, or has no ``column`` of strings is an error naming
    it; with ``skip_bad`` it is skipped later and its message returned here.
    """
    problems = []
    for f in files:
        if f.format != "parquet":
            continue
        problem = _parquet_problem(f.path, column)
        if problem is None:
            continue
        message = f"{flag} {f.path}: {problem}"
        if not skip_bad:
            raise ILTError(f"{message}; pass --skip_bad_records to skip it")
        problems.append(message)
    return problems


def _parquet_problem(path: Path, column: str) -> str | None:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable parquet file ({_first_line(exc)})"
    if column not in schema.names:
        return f"no column {column!r} (--text_column_name); its columns are {', '.join(map(repr, schema.names))}"
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return f"column {column!r} holds {kind}; expected strings"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def resolve_source(spec: str, flag: str, text_column: str | None, skip_bad: bool = False) -> TextSource:
    """A checked :class:`TextSource` for ``--train_file`` / ``--validation_file`` (see the module docstring)."""
    files = resolve_files(spec, flag)
    check_parquet_footers(files, text_column or "text", flag, skip_bad)
    fmt = files[0].format
    what = f"{len(files)} {fmt} files" if len(files) > 1 else str(files[0].path)
    return TextSource(flag, f"{spec} ({what})" if len(files) > 1 else what, text_column or "text", files)


# ---------------------------------------------------------------------------------------------
# Texts: one Arrow file per source file, cached
# ---------------------------------------------------------------------------------------------


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
    problem = _parquet_problem(f.path, column)
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
                    f"{stats.records}..{stats.records + rows - 1}) does not read ({_first_line(exc)}); "
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
    """Load what reading parquet texts loads on first use (pyarrow.compute imports pandas, ~0.2 s), so that
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


def _file_key(f: SourceFile, column: str) -> str:
    st = f.path.stat()
    parts = [PREPROCESSING_VERSION, str(f.path.resolve()), st.st_size, st.st_mtime_ns, f.format, column]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _convert_file(args: tuple[SourceFile, str, str, bool, str]) -> TextStats:
    """Write one file's texts as ``texts-<key>.arrow`` (+ a ``.json`` of its stats), unless cached."""
    f, column, flag, skip, folder = args
    key = _file_key(f, column)
    target = Path(folder) / f"texts-{key}.arrow"
    sidecar = target.with_suffix(".json")
    if sidecar.is_file() and target.is_file():
        stats = TextStats(str(f.path), **json.loads(sidecar.read_text(encoding="utf-8")))
        if (stats.bad_records or stats.bad_files) and not skip:  # cached by a run that skipped them
            raise ILTError(f"{stats.first_bad}; pass --skip_bad_records to skip such records")
        stats.cached_files = 1
        return stats
    stats = TextStats(str(f.path))
    start = time.perf_counter()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, _TEXT_SCHEMA) as writer:
            pending: list[pa.Array] = []
            for array in _text_batches(f, column, flag, skip, stats):
                pending.append(array)
                if sum(a.nbytes for a in pending) >= RECORD_BATCH_BYTES:
                    writer.write_batch(pa.record_batch([pa.concat_arrays(pending)], schema=_TEXT_SCHEMA))
                    pending = []
            if pending and sum(len(a) for a in pending):
                writer.write_batch(pa.record_batch([pa.concat_arrays(pending)], schema=_TEXT_SCHEMA))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    stats.seconds = time.perf_counter() - start
    saved = {k: v for k, v in asdict(stats).items() if k not in ("source", "cached_files")}
    sidecar.write_text(json.dumps(saved), encoding="utf-8")  # last: it vouches for a complete Arrow file
    return stats


def cache_folder(cache_dir: str | Path | None) -> Path:
    """Where the Arrow files go: ``<cache_dir or datasets' cache>/ilt-texts``."""
    if cache_dir is None:
        import datasets  # heavy; only when the data is prepared

        cache_dir = datasets.config.HF_DATASETS_CACHE
    folder = Path(cache_dir).expanduser() / "ilt-texts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _pool_context() -> Any:
    # fork: the workers need nothing but this module's functions (spawn would import torch again)
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def load_texts(
    source: TextSource,
    cache_dir: str | Path | None = None,
    *,
    skip_bad_records: bool = False,
    num_workers: int | None = None,
) -> tuple[Any, TextStats]:
    """The source's non-blank texts as one Arrow-backed ``datasets.Dataset`` (column ``text``).

    Files are converted once (``num_workers`` at a time) and later runs reuse the Arrow files; a
    hub dataset is returned as it is (its column renamed ``text``).
    """
    import datasets  # heavy; only when the data is prepared
    from datasets.table import MemoryMappedTable

    total = TextStats(source.description)
    if source.dataset is not None:
        ds = source.dataset
        if source.column != "text":
            ds = ds.rename_column(source.column, "text")
        total.records = total.texts = len(ds)
        return ds.select_columns(["text"]), total
    folder = cache_folder(cache_dir)
    jobs = [(f, source.column, source.flag, skip_bad_records, str(folder)) for f in source.files]
    start = time.perf_counter()
    if num_workers and num_workers > 1 and len(jobs) > 1:
        with _pool_context().Pool(min(num_workers, len(jobs))) as pool:
            results = pool.map(_convert_file, jobs, chunksize=1)
    else:
        results = [_convert_file(job) for job in jobs]
    for r in results:
        total.add(r)
    total.seconds = time.perf_counter() - start
    parts = []
    for f in source.files:
        key = _file_key(f, source.column)
        path = folder / f"texts-{key}.arrow"
        table = MemoryMappedTable.from_file(str(path))
        if table.num_rows:
            parts.append(datasets.Dataset(table, fingerprint=key))
    if not parts:
        what = f"holds only blank texts ({total.blank})" if total.blank else "holds no text"
        if total.bad_records or total.bad_files:
            what += f" besides {total.bad_records} bad records and {total.bad_files} bad files"
        raise ILTError(f"{source.flag} {source.description} {what}: expected at least one line of text")
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return ds, total


def hold_out(texts: Any, percent: int) -> tuple[Any, Any]:
    """(train, validation): the first ``percent`` % of the texts held out (run_clm's rule), no copy."""
    n = len(texts)
    cut = max(1, n * percent // 100) if n > 1 else 0
    return texts.select(range(cut, n)), texts.select(range(cut))


# ---------------------------------------------------------------------------------------------
# Blocks (a cached datasets.map) and rows (offsets from the blocks' lengths)
# ---------------------------------------------------------------------------------------------


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
    return _blocks_of_units(texts, block_size)


def _blocks_of_units(units_per_text: Iterable[list[str]], block_size: int) -> dict[str, list]:
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


def _fingerprint(*parts: Any) -> str:
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
    fingerprint = _fingerprint(texts._fingerprint, "blocks", max_unit_bytes, block_size)
    folder = _dataset_folder(texts)
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


def _dataset_folder(ds: Any) -> str | None:
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


def _load_or_pack(
    blocks: Any, block_size: int, packing: bool, folder: str | None
) -> tuple[np.ndarray | RowOffsets, BlockStats]:
    """Row offsets and block stats, from ``rows-<fingerprint>.arrow`` when an earlier run wrote it.

    With a ``folder`` the offsets come back as a :class:`RowOffsets` over that file (read by pread,
    whether this call packed them or not: a first run holds what a cached run holds); without one, as
    an in-memory int64 array ``(rows + 1,)``.
    """
    fingerprint = _fingerprint(blocks._fingerprint, "rows", block_size, packing)
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
    offsets, stats = _load_or_pack(blocks, block_size, packing, _dataset_folder(blocks))
    return RowDataset(blocks, offsets, stats)


# ---------------------------------------------------------------------------------------------
# Reading rows: pread, not a memory map
# ---------------------------------------------------------------------------------------------
#
# A random row read from a memory-mapped file maps the pages around it into the process: the kernel's
# fault-around maps 64 KiB (more with large folios) per fault, and madvise(MADV_RANDOM) does not turn
# that off (measured: 3,000 random 100-byte reads of a cached 1 GB file through Python's mmap added
# 182 MiB of file-backed RSS with or without MADV_RANDOM, through os.pread none). Over a training run
# that reads rows at random, RSS then grows toward the size of the blocks file. Rows and offsets are
# therefore read with os.pread at the file positions of their Arrow buffers: the bytes are copied from
# the kernel's page cache (shared, reclaimable) and nothing of the file stays mapped.


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
    ``rows-*.arrow`` file that :func:`pack_blocks` caches (not memory-mapped: see the note above)."""

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
        # With a reader, the blocks dataset is kept closed, as its pickle (its files and slices, ~2 KB):
        # an open one keeps the pages of every record batch's header that datasets read when it opened
        # the files mapped (~26 MiB of RSS for 1.4 GB of blocks).
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
    from the tensor in chunks instead of a list of ``n`` Python ints (about 36 bytes a row: 160 MB
    for the 4.2 million rows of a 1 GB corpus). ``seed`` is ``--data_seed``, else ``--seed``.
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

    ds = datasets.Dataset.from_dict(_blocks_of_units(units_per_text, block_size))
    offsets, stats = _load_or_pack(ds, block_size, packing, None)
    return RowDataset(ds, offsets, stats)


# ---------------------------------------------------------------------------------------------
# Hub datasets
# ---------------------------------------------------------------------------------------------


def read_hub_dataset(
    name: str,
    config: str | None,
    text_column: str | None,
    *,
    validation_split_percentage: int = 5,
    streaming: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> tuple[TextSource, TextSource | None]:
    """Train and validation sources of a hub dataset, as run_clm.py reads them (``datasets.load_dataset``).

    Without a ``validation`` split, the first ``validation_split_percentage`` % of ``train`` becomes
    one (run_clm's ``train[:5%]`` / ``train[5%:]``). ``streaming`` reads only the first
    ``max_*_samples`` records (required then).
    """
    import datasets  # heavy; only when the data is prepared

    if streaming and not max_train_samples:
        raise ILTError("--streaming: also pass --max_train_samples N (ilt train holds its training blocks in Arrow)")
    kwargs: dict[str, Any] = {"streaming": streaming, "cache_dir": cache_dir}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        raw = datasets.load_dataset(name, config, **kwargs)
    except Exception as exc:  # the hub, the network, a wrong name or config: one line, with the cause
        raise ILTError(
            f"--dataset_name {name} --dataset_config_name {config}: could not load it ({_first_line(exc)}); "
            f"without a hub, pass --train_file / --validation_file or --data_recipe"
        ) from None
    if "train" not in raw:
        raise ILTError(f"--dataset_name {name}: no 'train' split (its splits: {', '.join(raw)})")
    train_split, validation_split = raw["train"], raw.get("validation")
    columns = list(train_split.column_names or [])
    column = text_column or ("text" if "text" in columns else (columns[0] if columns else "text"))
    if columns and column not in columns:
        raise ILTError(
            f"--text_column_name {column!r}: not a column of {name}; its columns are {', '.join(map(repr, columns))}"
        )

    def materialize(split: Any, n: int | None) -> Any:
        if not streaming:
            return split.select_columns([column])
        rows = [r[column] for r in split.take(n)] if n else [r[column] for r in split]
        return datasets.Dataset.from_dict({column: rows})

    train = materialize(train_split, max_train_samples)
    validation = materialize(validation_split, max_eval_samples) if validation_split is not None else None
    where = f"{name}/{config or ''}"
    if validation is None and not streaming:
        train, validation = hold_out(train, validation_split_percentage)
    train_source = TextSource("--dataset_name", f"{where}:train", column, dataset=train)
    if validation is None:
        return train_source, None
    return train_source, TextSource("--dataset_name", f"{where}:validation", column, dataset=validation)


# ---------------------------------------------------------------------------------------------
# The collator
# ---------------------------------------------------------------------------------------------


def make_collator(processor: Any, block_size: int, packing: bool = True) -> UnitCollator:
    """The training collator of ``processor`` (map-style and streamed rows alike).

    Its batches carry the word images as uint8 gray levels ``(G, 1, H, W)`` (``processor.with_pixels``):
    a quarter of the bytes of floats to send from a DataLoader worker and to an accelerator; the
    model makes them the same floats (:func:`ilt_core.text.render_cache.pixels_as_float`).
    """
    return UnitCollator(processor.with_pixels("uint8"), block_size, packing)


@dataclass
class UnitCollator:
    """``collate_fn`` for Trainer: rows of blocks -> ``Batch.model_inputs()`` (a dict of kwargs).

    Rendering and byte encoding happen here, per batch, through ``processor`` (its render cache makes
    repeated words free). ``block_size`` is the row length in positions (start markers included).
    ``stats`` counts batches, rows, texts, units (start markers excluded), UTF-8 bytes and the seconds
    spent collating, for throughput figures (``benchmarks/bench_training.py``).
    """

    processor: Any
    block_size: int
    packing: bool = True
    stats: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("batches", "rows", "texts", "units", "bytes", "seconds"), 0)
    )
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def data_fingerprint(self) -> str:
        """SHA-256 over every text collated so far, in order (which data a process trained on)."""
        return self._digest.hexdigest()

    def __call__(self, rows: Sequence[Sequence[TextUnits]]) -> dict[str, Any]:
        start = time.perf_counter()
        texts = [t for row in rows for t in row]
        batch = self.processor.collate(texts, packing=self.packing, max_units=self.block_size)
        s = self.stats
        s["seconds"] += time.perf_counter() - start
        s["batches"] += 1
        s["rows"] += batch.unit_index.shape[0]
        s["texts"] += len(texts)
        s["units"] += sum(len(t.units) for t in texts)
        s["bytes"] += int(batch.num_bytes.sum())
        for t in texts:
            self._digest.update("\x1f".join(t.units).encode("utf-8", "surrogatepass") + b"\x1e")
        return batch.model_inputs()


__all__ = [
    "BlockReader",
    "BlockStats",
    "RowDataset",
    "RowOffsets",
    "RowSampler",
    "SourceFile",
    "TextSource",
    "TextStats",
    "UnitCollator",
    "check_parquet_footers",
    "hold_out",
    "load_texts",
    "make_collator",
    "make_blocks",
    "pack_blocks",
    "pack_offsets",
    "read_hub_dataset",
    "read_text_batches",
    "resolve_files",
    "resolve_source",
    "rows_from_units",
]

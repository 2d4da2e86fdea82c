"""The Arrow cache of texts: one Arrow file of non-blank texts per source file, read once.

:func:`load_texts` turns each file into ``<cache>/ilt-texts/texts-<key>.arrow`` (the key hashing the
path, size, mtime and column) through :mod:`ilt_core.training.readers`, ``num_workers`` files at a
time; later runs reuse the files. The shards' Arrow files are concatenated (no copy) into one
memory-mapped ``datasets.Dataset``, so that memory and a second run's start-up do not grow with the
corpus.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from ilt_core.errors import ILTError
from ilt_core.training.readers import TextStats, read_text_batches
from ilt_core.training.sources import SourceFile, TextSource

#: Bump when reading, segmenting or blocking changes what the cached Arrow files hold.
PREPROCESSING_VERSION = 1
_TEXT_SCHEMA = pa.schema([("text", pa.string())])
#: Bytes of text per Arrow record batch written, and blocks per record batch of the map's output. Few,
#: large record batches: opening a memory-mapped Arrow file reads every batch's header, and each read
#: maps the pages around it (the kernel's fault-around, 64 KiB), so RSS grows with the number of batches.
RECORD_BATCH_BYTES = 16 << 20


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
            for array in read_text_batches(f, column, flag, skip, stats):
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


__all__ = ["PREPROCESSING_VERSION", "cache_folder", "load_texts"]

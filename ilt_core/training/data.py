"""Training data for ``ilt train``: texts -> units -> blocks -> (packed) rows -> collated batches.

The steps, each done once before training starts (so a bad input fails before the first step):

1. **Texts.** One text per line of a ``.txt`` file, or one ``text_column`` value per record of a
   ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file, or a hub dataset (``datasets.load_dataset``).
   Blank texts (empty or whitespace only) are skipped and counted.
2. **Units.** ``segment(text)`` (:mod:`ilt_core.text.segmentation`), optionally in
   ``preprocessing_num_workers`` processes.
3. **Blocks.** A text of more than ``block_size - 1`` units is split into consecutive blocks of at
   most ``block_size - 1`` units (the row's start marker takes the last position); only a text's
   final block is *complete* (it gets the end-of-text label), exactly as
   :func:`ilt_core.evaluation.text_blocks` scores long texts. ``max_*_samples`` counts blocks.
4. **Rows.** With packing, consecutive blocks are packed greedily (in corpus order) into rows of at
   most ``block_size`` positions (each block takes ``len(units) + 1``: its start marker); a dataset
   item is one such row, so a batch of ``per_device_train_batch_size`` items re-packs into at most
   that many rows (greedy in-order packing of a sequence is optimal among contiguous splits, so the
   collator never needs more rows than the items it got). Without packing an item is one block.
5. **Batches.** :class:`UnitCollator` renders and byte-encodes lazily, per batch, through the
   processor (whose render cache makes a repeated word free) and returns
   ``Batch.model_inputs()`` as a dict, the kwargs of ``ILTModel.forward``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.evaluation import text_blocks
from ilt_core.text.collator import TextUnits, pack_rows
from ilt_core.text.segmentation import segment

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class TextStats:
    """What reading a source found: texts kept, blank texts skipped, where it came from."""

    source: str
    texts: int = 0
    blank: int = 0


@dataclass
class BlockStats:
    """What blocking found: texts, units, blocks, and how many texts were split into several blocks."""

    texts: int = 0
    units: int = 0
    blocks: int = 0
    split_texts: int = 0
    longest_text_units: int = 0


def _keep(texts: Iterable[Any], stats: TextStats, where: str) -> list[str]:
    kept = []
    for t in texts:
        if t is None:
            stats.blank += 1
            continue
        if not isinstance(t, str):
            raise ILTError(f"{where}: expected text (a string), found {type(t).__name__} {str(t)[:40]!r}")
        if t.strip():
            kept.append(t)
        else:
            stats.blank += 1
    stats.texts = len(kept)
    return kept


def read_text_file(
    path: str | Path, text_column: str | None = None, flag: str = "--train_file", limit: int | None = None
) -> tuple[list[str], TextStats]:
    """Texts of a local file; blank ones skipped. Errors name ``flag``, the file and what was expected.

    ``.txt`` (and any unknown suffix): one text per line. ``.jsonl`` (or ``.json`` holding one object
    per line, or one list of objects): the ``text_column`` field (default ``text``). ``.csv`` /
    ``.tsv``: the ``text_column`` column (default ``text``) of a file with a header row.
    ``limit`` stops after that many non-blank texts (``--max_train_samples`` never needs more).
    """
    path = Path(path)
    if not path.exists():
        raise ILTError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise ILTError(f"{flag} {path}: not a file (expected a .txt, .jsonl, .json or .csv file)")
    stats = TextStats(str(path))
    suffix = path.suffix.lower()
    where = f"{flag} {path}"
    try:
        if suffix in JSON_SUFFIXES:
            texts = _read_json(path, text_column or "text", where)
        elif suffix in CSV_SUFFIXES:
            texts = _read_csv(path, text_column or "text", where, "\t" if suffix == ".tsv" else ",")
        else:
            texts = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ILTError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if limit is not None:
        texts = _first_nonblank(texts, limit)
    kept = _keep(texts, stats, where)
    if not kept:
        what = "is empty" if not stats.blank else f"holds only blank texts ({stats.blank})"
        raise ILTError(f"{where} {what}: expected at least one line of text")
    return kept, stats


def _first_nonblank(texts: Iterable[Any], limit: int) -> list[Any]:
    out, n = [], 0
    for t in texts:
        out.append(t)
        n += isinstance(t, str) and bool(t.strip())
        if n >= limit:
            break
    return out


def _read_json(path: Path, column: str, where: str) -> list[Any]:
    raw = path.read_text(encoding="utf-8")
    records: list[Any]
    stripped = raw.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ILTError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        records = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ILTError(f"{where}: line {i} is not a JSON object ({exc.msg})") from None
    if not records:
        return []
    first = records[0]
    if not isinstance(first, dict):
        raise ILTError(f"{where}: expected JSON objects with a {column!r} field, found {type(first).__name__}")
    if column not in first:
        raise ILTError(
            f"--text_column_name {column!r}: not a field of {path}; its fields are {', '.join(map(repr, first))}"
        )
    return [r.get(column) if isinstance(r, dict) else None for r in records]


def _read_csv(path: Path, column: str, where: str, delimiter: str) -> list[Any]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None:
            return []
        if column not in reader.fieldnames:
            raise ILTError(
                f"--text_column_name {column!r}: not a column of {path}; its columns are "
                f"{', '.join(map(repr, reader.fieldnames))}"
            )
        return [row.get(column) for row in reader]


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
) -> tuple[list[str], list[str] | None, TextStats, TextStats | None]:
    """Train and validation texts of a hub dataset, as run_clm.py reads them (``datasets.load_dataset``).

    Without a ``validation`` split, the first ``validation_split_percentage`` % of ``train`` becomes
    one (run_clm's ``train[:5%]`` / ``train[5%:]``). ``streaming`` reads only the first
    ``max_*_samples`` records (required then: every kept text is held in memory).
    """
    try:
        import datasets
    except ImportError as exc:  # datasets is a dependency of ilt-core; this is a broken install
        raise ILTError(f"--dataset_name {name}: needs the `datasets` package ({exc})") from None
    if streaming and not max_train_samples:
        raise ILTError("--streaming: also pass --max_train_samples N (ilt train holds its training blocks in memory)")
    kwargs: dict[str, Any] = {"streaming": streaming}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        raw = datasets.load_dataset(name, config, **kwargs)
    except Exception as exc:  # the hub, the network, a wrong name or config: one line, with the cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ILTError(
            f"--dataset_name {name} --dataset_config_name {config}: could not load it ({first}); "
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

    def take(split: Any, n: int | None) -> list[Any]:
        if streaming:
            return [r[column] for r in split.take(n)] if n else [r[column] for r in split]
        if n is not None:
            split = split.select(range(min(n, len(split))))
        return list(split[column])

    if validation_split is None and not streaming:
        n = len(train_split)
        cut = max(1, n * validation_split_percentage // 100)
        validation_split = train_split.select(range(cut))
        train_split = train_split.select(range(cut, n))
    train_stats = TextStats(f"{name}/{config or ''}:train")
    train = _keep(take(train_split, max_train_samples), train_stats, f"--dataset_name {name} (train)")
    if not train:
        raise ILTError(f"--dataset_name {name}: the train split holds no text in column {column!r}")
    if validation_split is None:
        return train, None, train_stats, None
    eval_stats = TextStats(f"{name}/{config or ''}:validation")
    validation = _keep(take(validation_split, max_eval_samples), eval_stats, f"--dataset_name {name} (validation)")
    return train, validation, train_stats, eval_stats


def segment_texts(texts: Sequence[str], max_unit_bytes: int, num_workers: int | None = None) -> list[list[str]]:
    """Each text's units; with ``num_workers > 1`` segmentation runs in that many processes."""
    fn = partial(segment, max_unit_bytes=max_unit_bytes)
    if not num_workers or num_workers <= 1 or len(texts) < 1000:
        return [fn(t) for t in texts]
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        return pool.map(fn, texts, chunksize=max(64, len(texts) // (num_workers * 8)))


def make_blocks(units_per_text: Sequence[list[str]], block_size: int) -> tuple[list[TextUnits], BlockStats]:
    """Blocks of at most ``block_size - 1`` units (the start marker fills a row's last position).

    A longer text becomes several consecutive blocks; only its last block is marked complete.
    """
    stats = BlockStats()
    blocks: list[TextUnits] = []
    for units in units_per_text:
        if not units:
            continue
        pieces = text_blocks(units, block_size - 1)
        stats.texts += 1
        stats.units += len(units)
        stats.split_texts += len(pieces) > 1
        stats.longest_text_units = max(stats.longest_text_units, len(units))
        blocks.extend(pieces)
    stats.blocks = len(blocks)
    return blocks, stats


def make_rows(blocks: Sequence[TextUnits], block_size: int, packing: bool) -> list[list[TextUnits]]:
    """Dataset items: with packing, consecutive blocks greedily packed into rows of ``block_size``
    positions; without, one block per item."""
    if not packing:
        return [[b] for b in blocks]
    return [[blocks[i] for i in row] for row in pack_rows([len(b.units) + 1 for b in blocks], block_size)]


class RowDataset(torch.utils.data.Dataset):
    """A map-style dataset of rows (each a list of :class:`TextUnits`); see the module docstring."""

    def __init__(self, rows: list[list[TextUnits]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[TextUnits]:
        return self.rows[i]

    @property
    def num_units(self) -> int:
        """Units in the dataset, start markers excluded."""
        return sum(len(b.units) for row in self.rows for b in row)


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
    "BlockStats",
    "RowDataset",
    "TextStats",
    "UnitCollator",
    "make_blocks",
    "make_rows",
    "read_hub_dataset",
    "read_text_file",
    "segment_texts",
]

"""Training text sources: the files ``--train_file`` / ``--validation_file`` name, checked, or a hub dataset.

``--train_file`` / ``--validation_file`` name a file, a glob (``'shards/*.parquet'``) or a folder of
shards, in one format: ``.txt`` (one text per line), ``.jsonl`` / ``.json``, ``.csv`` / ``.tsv`` (the
``--text_column_name`` field, default ``text``) or ``.parquet`` (that column), each optionally compressed
(``.gz``, ``.bz2``, ``.xz``; ``.zst`` with ``zstandard``). :func:`resolve_source` checks them before
anything is read: every file exists, a glob matches, every parquet shard's footer reads and names the
text column. ``--dataset_name`` goes through ``datasets.load_dataset`` as in run_clm.py
(:func:`read_hub_dataset`). Reading the files is :mod:`ilt_core.training.readers`' job.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ilt_core.errors import ILTError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
FORMATS = {"text": TEXT_SUFFIXES, "json": JSON_SUFFIXES, "csv": CSV_SUFFIXES, "parquet": PARQUET_SUFFIXES}
_GLOB_CHARS = set("*?[")


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
        problem = parquet_problem(f.path, column)
        if problem is None:
            continue
        message = f"{flag} {f.path}: {problem}"
        if not skip_bad:
            raise ILTError(f"{message}; pass --skip_bad_records to skip it")
        problems.append(message)
    return problems


def parquet_problem(path: Path, column: str) -> str | None:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable parquet file ({first_line(exc)})"
    if column not in schema.names:
        return f"no column {column!r} (--text_column_name); its columns are {', '.join(map(repr, schema.names))}"
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return f"column {column!r} holds {kind}; expected strings"
    return None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def resolve_source(spec: str, flag: str, text_column: str | None, skip_bad: bool = False) -> TextSource:
    """A checked :class:`TextSource` for ``--train_file`` / ``--validation_file`` (see the module docstring)."""
    files = resolve_files(spec, flag)
    check_parquet_footers(files, text_column or "text", flag, skip_bad)
    fmt = files[0].format
    what = f"{len(files)} {fmt} files" if len(files) > 1 else str(files[0].path)
    return TextSource(flag, f"{spec} ({what})" if len(files) > 1 else what, text_column or "text", files)


def load_hub_splits(
    name: str,
    config: str | None,
    text_column: str | None,
    streaming: bool,
    cache_dir: str | None,
    trust_remote_code: bool,
) -> tuple[Any, str]:
    """``datasets.load_dataset(name, config)`` with a ``train`` split checked, and the text column: ``(splits, column)``.

    The column is ``text_column``, else ``text`` when there is one, else the first. A dataset that does not load
    (the hub, the network, a wrong name or config), has no ``train`` split or lacks the column is an
    :class:`ILTError` of one line.
    """
    import datasets  # heavy; only when the data is prepared

    kwargs: dict[str, Any] = {"streaming": streaming, "cache_dir": cache_dir}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        raw = datasets.load_dataset(name, config, **kwargs)
    except Exception as exc:  # the hub, the network, a wrong name or config: one line, with the cause
        raise ILTError(
            f"--dataset_name {name} --dataset_config_name {config}: could not load it ({first_line(exc)}); "
            f"without a hub, pass --train_file / --validation_file or --data_recipe"
        ) from None
    if "train" not in raw:
        raise ILTError(f"--dataset_name {name}: no 'train' split (its splits: {', '.join(raw)})")
    columns = list(raw["train"].column_names or [])
    column = text_column or ("text" if "text" in columns or not columns else columns[0])
    if columns and column not in columns:
        raise ILTError(
            f"--text_column_name {column!r}: not a column of {name}; its columns are {', '.join(map(repr, columns))}"
        )
    return raw, column


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
    raw, column = load_hub_splits(name, config, text_column, streaming, cache_dir, trust_remote_code)
    train_split, validation_split = raw["train"], raw.get("validation")

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


def hold_out(texts: Any, percent: int) -> tuple[Any, Any]:
    """(train, validation): the first ``percent`` % of the texts held out (run_clm's rule), no copy."""
    n = len(texts)
    cut = max(1, n * percent // 100) if n > 1 else 0
    return texts.select(range(cut, n)), texts.select(range(cut))


__all__ = [
    "FORMATS",
    "SourceFile",
    "TextSource",
    "check_parquet_footers",
    "first_line",
    "hold_out",
    "load_hub_splits",
    "parquet_problem",
    "read_hub_dataset",
    "resolve_files",
    "resolve_source",
]

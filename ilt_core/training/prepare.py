"""The run's map-style data: the sources the arguments name, checked, then read, blocked and packed (cached).

:func:`resolve_sources` checks the data arguments and finds the one source of texts they name (files,
a data recipe or a hub dataset) before a model is built; :func:`build_datasets` reads the texts into
the Arrow cache (:mod:`ilt_core.training.texts`), blocks them (:mod:`ilt_core.training.blocks`) and
packs the blocks into row datasets (:mod:`ilt_core.training.dataset`). Every step is cached on disk,
so a second run with the same data and settings maps nothing. ``--streaming`` goes through
:mod:`ilt_core.training.streaming` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import get_registry
from ilt_core.training.arguments import DataTrainingArguments, ILTArguments
from ilt_core.training.blocks import make_blocks
from ilt_core.training.dataset import RowDataset, pack_blocks
from ilt_core.training.readers import TextStats
from ilt_core.training.sources import TextSource, hold_out, read_hub_dataset, resolve_source
from ilt_core.training.texts import load_texts


@dataclass
class Sources:
    """Where the train / validation texts come from, checked (files exist, globs match, parquet
    footers read) before a model is built; ``hold_out`` is the percentage of the training texts
    that becomes the validation set when there is no other (0: none); ``train_needed`` is False when
    the training texts are read only for that (``--do_eval`` alone)."""

    train: TextSource | None
    validation: TextSource | None
    hold_out: int = 0
    train_needed: bool = True
    summary: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    """The datasets (:class:`~ilt_core.training.dataset.RowDataset`), what preparing them found, and
    figures for the run's metrics (``train_bad_records``, ``train_preprocessing_seconds``, ...)."""

    train: RowDataset | None
    validation: RowDataset | None
    summary: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_sources(data: DataTrainingArguments, need_train: bool, need_eval: bool) -> Sources:
    """Check the arguments and find the one source of texts they name (see :mod:`ilt_core.training.sources`)."""
    sources = [s for s in ("dataset_name", "train_file", "data_recipe") if getattr(data, s)]
    if len(sources) > 1:
        raise ILTError(f"--{sources[0]} and --{sources[1]}: pass one source of training texts")
    if not sources and not data.validation_file:
        raise ILTError("no training data: pass --train_file FILE, --data_recipe NAME or --dataset_name NAME")
    if data.validation_split_percentage < 0 or data.validation_split_percentage >= 100:
        raise ILTError(f"--validation_split_percentage {data.validation_split_percentage}: expected 0..99")
    for flag in ("max_train_samples", "max_eval_samples"):
        value = getattr(data, flag)
        if value is not None and value < 1:
            raise ILTError(f"--{flag} {value}: expected a positive number of blocks")

    train: TextSource | None = None
    validation: TextSource | None = None
    if data.dataset_name:
        train, validation = read_hub_dataset(
            data.dataset_name,
            data.dataset_config_name,
            data.text_column_name,
            validation_split_percentage=data.validation_split_percentage,
            streaming=data.streaming,
            max_train_samples=data.max_train_samples,
            max_eval_samples=data.max_eval_samples,
            trust_remote_code=data.trust_remote_code,
            cache_dir=data.cache_dir,
        )
    else:
        train_path: str | None = data.train_file
        validation_path: str | None = data.validation_file
        if data.data_recipe:
            files = get_registry().data_recipe(data.data_recipe).prepare(progress=True)
            train_path = str(files["train"])
            validation_path = validation_path or str(files["validation"])
        held_out = need_eval and not validation_path and data.validation_split_percentage > 0
        if train_path and (need_train or held_out):
            train = resolve_source(train_path, "--train_file", data.text_column_name, data.skip_bad_records)
        if validation_path and need_eval:
            validation = resolve_source(
                validation_path, "--validation_file", data.text_column_name, data.skip_bad_records
            )
    hold = data.validation_split_percentage if need_eval and validation is None and train is not None else 0
    if need_train and train is None:
        raise ILTError("no training texts: --train_file / --data_recipe / --dataset_name gave none")
    if need_eval and validation is None and not hold:
        raise ILTError("--do_eval: no validation texts (pass --validation_file or --validation_split_percentage > 0)")
    return Sources(train, validation, hold, train_needed=need_train)


def _text_note(name: str, stats: TextStats) -> str:
    note = f"{name}: {stats.source}: {stats.texts} texts ({stats.blank} blank skipped"
    if stats.bad_records or stats.bad_files:
        note += f"; skipped {stats.bad_records} bad records and {stats.bad_files} bad files, first: {stats.first_bad}"
    read = f"{stats.cached_files} files from the cache" if stats.cached_files else f"read in {stats.seconds:.1f} s"
    return f"{note}; {read})"


def build_datasets(
    sources: Sources, max_unit_bytes: int, block_size: int, data: DataTrainingArguments, ilt: ILTArguments
) -> PreparedData:
    """Read, segment, block and pack the texts into row datasets (see :mod:`ilt_core.training.dataset`);
    every step is cached on disk, so a second run with the same data and settings maps nothing."""
    notes = list(sources.summary)
    metrics: dict[str, float] = {}

    def texts_of(source: TextSource, name: str) -> Any:
        texts, stats = load_texts(
            source,
            data.cache_dir,
            skip_bad_records=data.skip_bad_records,
            num_workers=data.preprocessing_num_workers,
        )
        notes.append(_text_note(name, stats))
        metrics[f"{name}_bad_records"] = stats.bad_records
        metrics[f"{name}_bad_files"] = stats.bad_files
        metrics[f"{name}_reading_seconds"] = round(stats.seconds, 3)
        return texts

    train_texts = texts_of(sources.train, "train") if sources.train is not None else None
    eval_texts = texts_of(sources.validation, "eval") if sources.validation is not None else None
    if sources.hold_out and train_texts is not None:
        train_texts, eval_texts = hold_out(train_texts, sources.hold_out)
        if len(eval_texts):
            notes.append(f"validation: the first {sources.hold_out}% of the training texts held out")
        else:  # a single text: nothing to hold out, no evaluation
            eval_texts = None
            notes.append("validation: one training text, none held out; no evaluation")

    def build(texts: Any, limit: int | None, name: str) -> RowDataset:
        start = time.perf_counter()
        blocks, cached = make_blocks(
            texts,
            max_unit_bytes,
            block_size,
            num_workers=data.preprocessing_num_workers,
            overwrite_cache=data.overwrite_cache,
            limit=limit,
            desc=f"{name}: units and blocks",
        )
        dataset = pack_blocks(blocks, block_size, ilt.packing)
        seconds = time.perf_counter() - start
        stats = dataset.stats
        split = f", {stats.split_texts} long texts split into blocks" if stats.split_texts else ""
        how = "from the cache" if cached else f"in {seconds:.1f} s, {stats.units / max(seconds, 1e-9):,.0f} units/s"
        notes.append(
            f"{name}: {stats.texts} texts, {stats.units} units -> {stats.blocks} blocks of <= {block_size - 1} units"
            f"{split} -> {len(dataset)} {'packed rows' if ilt.packing else 'rows'} of <= {block_size} positions "
            f"({how})"
        )
        metrics[f"{name}_units"] = stats.units
        metrics[f"{name}_preprocessing_seconds"] = round(seconds, 3)
        metrics[f"{name}_preprocessing_cached"] = int(cached)
        return dataset

    needed = sources.train is not None and sources.train_needed
    train = build(train_texts, data.max_train_samples, "train") if needed else None
    validation = build(eval_texts, data.max_eval_samples, "eval") if eval_texts is not None else None
    return PreparedData(train, validation, notes, metrics)


__all__ = ["PreparedData", "Sources", "build_datasets", "resolve_sources"]

"""Shard planning for ``ilt train --streaming``: the training texts as shards, and who reads which.

:func:`plan_stream` checks the ``--streaming`` arguments and names the shards (:class:`TextStream`): the
files of ``--train_file`` or a hub dataset's shards. :func:`rank_shards`, :func:`reader_shards` and
:func:`shard_order` say which shards a rank and each of its readers read, in which order; a
:data:`Position` names a place in a reader's stream. See :mod:`ilt_core.training.streaming` for the
rules.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ilt_core.errors import ILTError
from ilt_core.training.readers import TextStats, read_text_batches
from ilt_core.training.sources import SourceFile, TextSource, load_hub_splits, resolve_source


@dataclass
class TextStream:
    """The training texts as shards: checked files, or a streamed hub dataset with ``num_shards`` shards.

    ``held_out`` maps a shard index to how many of its first texts went to validation (skipped by training).
    """

    description: str
    column: str = "text"
    flag: str = "--train_file"
    files: list[SourceFile] = field(default_factory=list)
    hub: Any = None  # a datasets.IterableDataset
    held_out: dict[int, int] = field(default_factory=dict)
    skip_bad_records: bool = False

    @property
    def num_shards(self) -> int:
        return len(self.files) if self.hub is None else int(self.hub.num_shards)

    def shard_name(self, index: int) -> str:
        return str(self.files[index].path) if self.hub is None else f"{self.description} shard {index}"

    def texts(self, index: int, stats: TextStats) -> Iterator[Sequence[str]]:
        """Shard ``index``'s non-blank texts, in chunks (lists or Arrow arrays of strings), in order."""
        if self.hub is None:
            f = self.files[index]
            for array in read_text_batches(f, self.column, self.flag, self.skip_bad_records, stats):
                yield array.to_pylist()
            return
        shard = self.hub.shard(num_shards=self.num_shards, index=index, contiguous=True)
        # .iter(): no re-sharding by the DataLoader worker (plain iteration inside a worker would)
        for batch in shard.iter(batch_size=1024):
            texts = [t for t in batch[self.column] if isinstance(t, str) and t.strip()]
            stats.texts += len(texts)
            yield texts


@dataclass
class StreamPlan:
    """What ``--streaming`` reads: the training stream, and where validation comes from."""

    train: TextStream | None
    validation_file: TextSource | None = None
    hub_validation: Any = None  # a hub validation split (datasets.IterableDataset)
    holdout_texts: int = 0  # the first N texts of the training stream, held out
    summary: list[str] = field(default_factory=list)


def plan_stream(data: Any, need_train: bool, need_eval: bool, max_steps: int) -> StreamPlan:
    """Check the ``--streaming`` arguments and sources (before a model is built); see :mod:`ilt_core.training.streaming`."""
    if need_train and (max_steps is None or max_steps <= 0):
        raise ILTError("--streaming: pass --max_steps N (a stream has no length to count epochs by, as in run_clm.py)")
    if data.max_train_samples is not None:
        raise ILTError(
            f"--max_train_samples {data.max_train_samples}: not with --streaming (the stream cycles over its shards "
            f"until --max_steps); drop it, or leave out --streaming to train on the first N blocks"
        )
    if data.max_eval_samples is not None and data.max_eval_samples < 1:
        raise ILTError(f"--max_eval_samples {data.max_eval_samples}: expected a positive number of texts")
    sources = [s for s in ("dataset_name", "train_file", "data_recipe") if getattr(data, s)]
    if len(sources) > 1:
        raise ILTError(f"--{sources[0]} and --{sources[1]}: pass one source of training texts")
    plan = StreamPlan(train=None)
    if data.dataset_name:
        plan.train, plan.hub_validation = _hub_stream(data)
    else:
        train_path, validation_path = data.train_file, data.validation_file
        if data.data_recipe:
            from ilt_core.plugins.registry import get_registry

            files = get_registry().data_recipe(data.data_recipe).prepare(progress=True)
            train_path = str(files["train"])
            validation_path = validation_path or str(files["validation"])
        if not train_path:
            raise ILTError(
                "--streaming: no training data; pass --train_file FILE, --data_recipe NAME or --dataset_name"
            )
        # every parquet footer is read here; with --skip_bad_records a bad shard is counted and yields nothing
        source = resolve_source(train_path, "--train_file", data.text_column_name, data.skip_bad_records)
        plan.train = TextStream(source.description, source.column, "--train_file", source.files)
        if validation_path and need_eval:
            plan.validation_file = resolve_source(
                validation_path, "--validation_file", data.text_column_name, data.skip_bad_records
            )
    plan.train.skip_bad_records = data.skip_bad_records
    if need_eval and plan.validation_file is None:
        if data.max_eval_samples:
            plan.holdout_texts = data.max_eval_samples if plan.hub_validation is None else 0
        else:
            plan.hub_validation = None
    what = f"{plan.train.num_shards} shard{'s' * (plan.train.num_shards != 1)}"
    plan.summary.append(f"train: streaming {plan.train.description} ({what}), no preprocessing")
    return plan


def _hub_stream(data: Any) -> tuple[TextStream, Any]:
    name, config = data.dataset_name, data.dataset_config_name
    raw, column = load_hub_splits(name, config, data.text_column_name, True, data.cache_dir, data.trust_remote_code)
    where = f"{name}/{config or ''}"
    stream = TextStream(f"{where}:train", column, "--dataset_name", hub=raw["train"].select_columns([column]))
    validation = raw["validation"].select_columns([column]) if "validation" in raw else None
    return stream, validation


# ---------------------------------------------------------------------------------------------
# Who reads what
# ---------------------------------------------------------------------------------------------


def rank_shards(num_shards: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """The shards rank ``rank`` of ``world_size`` reads, and the text stride it keeps (1: all its texts).

    ``shards[rank::world_size]`` when there are at least as many shards as ranks (uneven when not a
    multiple); otherwise every shard, keeping every ``world_size``-th text (see :mod:`ilt_core.training.streaming`).
    """
    if num_shards >= world_size:
        return list(range(rank, num_shards, world_size)), 1
    return list(range(num_shards)), world_size


def reader_shards(shards: Sequence[int], reader: int, num_readers: int) -> list[int]:
    """The shards one of a rank's ``num_readers`` readers (DataLoader workers) reads."""
    return list(shards[reader::num_readers])


def shard_order(shards: Sequence[int], seed: int, epoch: int, reader: int) -> list[int]:
    """The order a reader visits its shards in one epoch: drawn from the seed, the epoch and the reader."""
    order = list(shards)
    random.Random(f"ilt-stream:{seed}:{epoch}:{reader}").shuffle(order)
    return order


Position = tuple[int, int, int, int]  # (epoch, index in the epoch's shard order, text in the shard, block in the text)
START: Position = (0, 0, 0, 0)


__all__ = [
    "START",
    "Position",
    "StreamPlan",
    "TextStream",
    "plan_stream",
    "rank_shards",
    "reader_shards",
    "shard_order",
]

"""Streaming training data for ``ilt train --streaming``: shards -> texts -> blocks -> packed rows -> batches, on the fly.

Nothing is preprocessed or cached: each reader opens its shards in turn and makes units, blocks,
packed rows and collated batches (word images, byte ids) as training asks for them, so start-up time
and memory do not depend on the corpus size. The modules: :mod:`~ilt_core.training.shards` (which
shards, in which order), :mod:`~ilt_core.training.stream_dataset` (the iterable dataset),
:mod:`~ilt_core.training.transfer` (a batch's trip from a worker), :mod:`~ilt_core.training.stream_loader`
(the DataLoader, positions for resuming) and this one (the run's streamed data and its validation rows).

- **Shards.** A shard is one file of ``--train_file`` (a file, a glob, a folder; read by the same
  per-file readers and bad-record rules as the map-style path, :func:`ilt_core.training.readers.read_text_batches`)
  or one shard of a hub dataset streamed through ``datasets.load_dataset(..., streaming=True)``
  (``IterableDataset.shard``; each of its data files is a shard).
- **One shard set per process.** With ``S`` shards and ``R`` ranks, rank ``r`` reads shards
  ``r, r + R, ...`` (the assignment of ``datasets.distributed.split_dataset_by_node``'s ``"shards"``
  strategy): no rank reads another's shards. When ``S`` is not a multiple of ``R``, the first
  ``S % R`` ranks hold one shard more; every rank's stream cycles (epoch after epoch), so all ranks
  produce batches until ``--max_steps`` and step together, and a rank with fewer shards starts its
  next pass sooner (its texts repeat sooner). With fewer shards than ranks, every rank reads every
  shard and keeps the texts ``i`` with ``i % R == r`` (that function's ``"examples"`` strategy): the
  ranks still see disjoint texts, but each reads the whole corpus; the log says so.
  (``split_dataset_by_node`` itself is not called: ``datasets`` applies its node split inside
  iteration, after any further shard operation, and re-shards by the DataLoader worker's id, which
  would leave no way to restart a given worker's stream at a saved position.)
- **Workers.** The rank's shards are split again among ``--dataloader_num_workers`` processes
  (reader ``l`` takes the rank's shards ``l, l + A, ...``); each renders its own batches with its
  own render cache, capped at ``--render_cache_bytes``. Two or more workers forked by the loader
  also share the images they draw (:class:`~ilt_core.text.shared_images.SharedImages`, one more
  ``--render_cache_bytes`` of shared memory): a word one worker drew, the others read rather than
  draw again (each shard repeats the common words). A rank never starts more workers than it
  has shards: a single file gets one worker. With no workers the main process reads. A worker's
  batch travels to the main process as one byte buffer (:func:`~ilt_core.training.transfer.pack_tensors`), word images in it as
  uint8 gray levels (:func:`ilt_core.text.row_collator.make_collator`), so that the main process, which
  also runs the model, spends next to nothing per batch on receiving it.
- **Order.** Each reader visits its shards in an order drawn from ``--seed``, the epoch and the
  reader (no example buffer): the stream is the same on every run with the same seed, shards,
  ranks and workers. Texts keep their order inside a shard.
- **Rows.** A text is segmented into units and split into blocks of at most ``block_size - 1``
  units (only the last complete), as the map-style path does; blocks are packed greedily, in stream
  order, into rows of at most ``block_size`` positions, and ``per_device_train_batch_size`` rows
  make a batch, collated in the reader's process.
- **Position and exact resume.** Every batch carries its reader's position after it: ``(epoch,
  shard in the epoch's order, text in the shard, block in the text)`` of the first block not yet
  used. The main process (:class:`~ilt_core.training.stream_loader.StreamingLoader`) keeps, per reader, the position after the last
  batch it handed to Trainer, and how many batches it handed out; Trainer's checkpoints save that
  (``data_position-rank<R>.json``). A resumed run starts each reader at its position, skipping the
  texts before it without segmenting or rendering them (a shard's earlier texts are read and
  dropped; earlier shards are not opened), and starts the round robin over the workers at the
  reader that was next, so it trains on exactly the batches the uninterrupted run would have.
  Resuming with another number of ranks or workers cannot continue the same stream: it restarts
  the stream at the next epoch (a warning says so).
- **Statistics.** Each batch also carries what collating it counted (texts, units, bytes, seconds,
  bad records skipped) and a SHA-256 of its texts; the main process adds them into the run's
  :class:`~ilt_core.text.row_collator.UnitCollator` (what the replica check and the metrics read), so
  nothing counted in a worker is lost.
- **Validation.** ``--validation_file`` (read, cached and packed as in the map-style path), a hub
  dataset's ``validation`` split (its first ``--max_eval_samples`` texts), or else the first
  ``--max_eval_samples`` texts of the training stream (in file order), which training then skips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ilt_core.text.segmentation import segment
from ilt_core.training.blocks import make_blocks
from ilt_core.training.dataset import RowDataset, pack_blocks, rows_from_units
from ilt_core.training.readers import TextStats
from ilt_core.training.shards import StreamPlan, TextStream
from ilt_core.training.stream_dataset import StreamingRows
from ilt_core.training.texts import load_texts


@dataclass
class PreparedStream:
    """The training stream (None without training), the validation rows, log lines and metrics."""

    train: StreamingRows | None
    validation: RowDataset | None
    summary: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def first_texts(stream: TextStream, n: int) -> tuple[list[str], dict[int, int]]:
    """The first ``n`` texts of the stream in file order, and how many each shard gave."""
    texts: list[str] = []
    taken: dict[int, int] = {}
    stats = TextStats(stream.description)
    for shard in range(stream.num_shards):
        for chunk in stream.texts(shard, stats):
            part = list(chunk[: n - len(texts)])
            texts += part
            taken[shard] = taken.get(shard, 0) + len(part)
            if len(texts) >= n:
                return texts, taken
    return texts, taken


def prepare_stream(
    plan: StreamPlan,
    processor: Any,
    block_size: int,
    data: Any,
    ilt: Any,
    training_args: Any,
    need_train: bool,
    shapes: Any = None,
) -> PreparedStream:
    """The training stream for this rank and the validation rows (see the module docstring)."""
    notes = list(plan.summary)
    metrics: dict[str, float] = {}
    validation = None
    if plan.validation_file is not None:
        start = time.perf_counter()
        texts, stats = load_texts(
            plan.validation_file,
            data.cache_dir,
            skip_bad_records=data.skip_bad_records,
            num_workers=data.preprocessing_num_workers,
        )
        blocks, _ = make_blocks(
            texts,
            processor.max_unit_bytes,
            block_size,
            num_workers=data.preprocessing_num_workers,
            overwrite_cache=data.overwrite_cache,
            limit=data.max_eval_samples,
            desc="eval: units and blocks",
        )
        validation = pack_blocks(blocks, block_size, ilt.packing)
        notes.append(
            f"validation: {plan.validation_file.description} (--validation_file): {validation.stats.texts} texts, "
            f"{len(validation)} rows ({time.perf_counter() - start:.1f} s)"
        )
        metrics["eval_bad_records"] = stats.bad_records
    elif plan.hub_validation is not None and data.max_eval_samples:
        texts = [t for t in (r[plan.train.column] for r in plan.hub_validation.take(data.max_eval_samples)) if t]
        validation = _rows(texts, processor, block_size, ilt.packing)
        notes.append(f"validation: the first {len(texts)} texts of the hub dataset's validation split")
    elif plan.holdout_texts and plan.train is not None:
        texts, taken = first_texts(plan.train, plan.holdout_texts)
        plan.train.held_out = taken
        if texts:
            validation = _rows(texts, processor, block_size, ilt.packing)
            notes.append(
                f"validation: the first {len(texts)} texts of the training stream (--max_eval_samples), "
                f"held out of training"
            )
    else:
        notes.append("validation: none (with --streaming, pass --validation_file or --max_eval_samples N)")
    train = None
    if need_train and plan.train is not None:
        train = StreamingRows(
            plan.train,
            processor,
            block_size,
            training_args.per_device_train_batch_size,
            packing=ilt.packing,
            seed=training_args.seed,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            num_workers=training_args.dataloader_num_workers,
            shapes=shapes,
        )
        notes.append(f"train: {train.describe()}")
    return PreparedStream(train, validation, notes, metrics)


def _rows(texts: list[str], processor: Any, block_size: int, packing: bool) -> RowDataset:
    return rows_from_units([segment(t, processor.max_unit_bytes) for t in texts], block_size, packing)


__all__ = ["PreparedStream", "first_texts", "prepare_stream"]

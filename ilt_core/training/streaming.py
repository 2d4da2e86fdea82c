"""Streaming training data for ``ilt train --streaming``: shards -> texts -> blocks -> packed rows -> batches, on the fly.

Nothing is preprocessed or cached: each reader opens its shards in turn and makes units, blocks,
packed rows and collated batches (word images, byte ids) as training asks for them, so start-up time
and memory do not depend on the corpus size.

- **Shards.** A shard is one file of ``--train_file`` (a file, a glob, a folder; read by the same
  per-file readers and bad-record rules as the map-style path, :func:`ilt_core.training.data.read_text_batches`)
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
  batch travels to the main process as one byte buffer (:func:`pack_tensors`), word images in it as
  uint8 gray levels (:func:`ilt_core.training.data.make_collator`), so that the main process, which
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
  used. The main process (:class:`StreamingLoader`) keeps, per reader, the position after the last
  batch it handed to Trainer, and how many batches it handed out; Trainer's checkpoints save that
  (``data_position-rank<R>.json``). A resumed run starts each reader at its position, skipping the
  texts before it without segmenting or rendering them (a shard's earlier texts are read and
  dropped; earlier shards are not opened), and starts the round robin over the workers at the
  reader that was next, so it trains on exactly the batches the uninterrupted run would have.
  Resuming with another number of ranks or workers cannot continue the same stream: it restarts
  the stream at the next epoch (a warning says so).
- **Statistics.** Each batch also carries what collating it counted (texts, units, bytes, seconds,
  bad records skipped) and a SHA-256 of its texts; the main process adds them into the run's
  :class:`~ilt_core.training.data.UnitCollator` (what the replica check and the metrics read), so
  nothing counted in a worker is lost.
- **Validation.** ``--validation_file`` (read, cached and packed as in the map-style path), a hub
  dataset's ``validation`` split (its first ``--max_eval_samples`` texts), or else the first
  ``--max_eval_samples`` texts of the training stream (in file order), which training then skips.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits
from ilt_core.text.segmentation import segment
from ilt_core.text.shared_images import SharedImages
from ilt_core.training import data as td

#: Name of the per-rank data position file in a checkpoint folder (``{rank}`` filled in).
POSITION_FILE = "data_position-rank{rank}.json"
#: Key of the stream's bookkeeping in a batch (popped by :class:`StreamingLoader` before Trainer sees it).
STREAM_KEY = "ilt_stream"
#: The smallest ``--render_cache_bytes`` for which workers share a store of images (below, each keeps its own).
SHARED_MIN_BYTES = 2**20
_STAT_KEYS = ("batches", "rows", "texts", "units", "bytes", "seconds")


# ---------------------------------------------------------------------------------------------
# Sources as shards
# ---------------------------------------------------------------------------------------------


@dataclass
class TextStream:
    """The training texts as shards: checked files, or a streamed hub dataset with ``num_shards`` shards.

    ``held_out`` maps a shard index to how many of its first texts went to validation (skipped by training).
    """

    description: str
    column: str = "text"
    flag: str = "--train_file"
    files: list[td.SourceFile] = field(default_factory=list)
    hub: Any = None  # a datasets.IterableDataset
    held_out: dict[int, int] = field(default_factory=dict)
    skip_bad_records: bool = False

    @property
    def num_shards(self) -> int:
        return len(self.files) if self.hub is None else int(self.hub.num_shards)

    def shard_name(self, index: int) -> str:
        return str(self.files[index].path) if self.hub is None else f"{self.description} shard {index}"

    def texts(self, index: int, stats: td.TextStats) -> Iterator[Sequence[str]]:
        """Shard ``index``'s non-blank texts, in chunks (lists or Arrow arrays of strings), in order."""
        if self.hub is None:
            f = self.files[index]
            for array in td.read_text_batches(f, self.column, self.flag, self.skip_bad_records, stats):
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
    validation_file: td.TextSource | None = None
    hub_validation: Any = None  # a hub validation split (datasets.IterableDataset)
    holdout_texts: int = 0  # the first N texts of the training stream, held out
    summary: list[str] = field(default_factory=list)


def plan_stream(data: Any, need_train: bool, need_eval: bool, max_steps: int) -> StreamPlan:
    """Check the ``--streaming`` arguments and sources (before a model is built); see the module docstring."""
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
        source = td.resolve_source(train_path, "--train_file", data.text_column_name, data.skip_bad_records)
        plan.train = TextStream(source.description, source.column, "--train_file", source.files)
        if validation_path and need_eval:
            plan.validation_file = td.resolve_source(
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
    import datasets  # heavy; only when the data is prepared

    kwargs: dict[str, Any] = {"streaming": True, "cache_dir": data.cache_dir}
    if data.trust_remote_code:
        kwargs["trust_remote_code"] = True
    name, config = data.dataset_name, data.dataset_config_name
    try:
        raw = datasets.load_dataset(name, config, **kwargs)
    except Exception as exc:  # the hub, the network, a wrong name or config: one line, with the cause
        raise ILTError(
            f"--dataset_name {name} --dataset_config_name {config}: could not load it ({td._first_line(exc)}); "
            f"without a hub, pass --train_file / --validation_file or --data_recipe"
        ) from None
    if "train" not in raw:
        raise ILTError(f"--dataset_name {name}: no 'train' split (its splits: {', '.join(raw)})")
    train = raw["train"]
    columns = list(train.column_names or [])
    column = data.text_column_name or ("text" if "text" in columns or not columns else columns[0])
    if columns and column not in columns:
        raise ILTError(
            f"--text_column_name {column!r}: not a column of {name}; its columns are {', '.join(map(repr, columns))}"
        )
    where = f"{name}/{config or ''}"
    stream = TextStream(f"{where}:train", column, "--dataset_name", hub=train.select_columns([column]))
    validation = raw["validation"].select_columns([column]) if "validation" in raw else None
    return stream, validation


# ---------------------------------------------------------------------------------------------
# Who reads what
# ---------------------------------------------------------------------------------------------


def rank_shards(num_shards: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """The shards rank ``rank`` of ``world_size`` reads, and the text stride it keeps (1: all its texts).

    ``shards[rank::world_size]`` when there are at least as many shards as ranks (uneven when not a
    multiple); otherwise every shard, keeping every ``world_size``-th text (see the module docstring).
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


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class StreamingRows(torch.utils.data.IterableDataset):
    """An endless stream of collated batches (dicts of model inputs) for one rank; see the module docstring.

    Each item is one batch of ``batch_size`` rows (``Batch.model_inputs()``: ``unit_index`` ``(B, L)``
    and the rest as :mod:`ilt_core.text.collator` describes) plus :data:`STREAM_KEY`, the reader's
    position and statistics. Iterate it through :class:`StreamingLoader`, which removes that key.
    """

    def __init__(
        self,
        stream: TextStream,
        processor: Any,
        block_size: int,
        batch_size: int,
        *,
        packing: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        if stream.num_shards < 1:
            raise ILTError(f"{stream.flag} {stream.description}: no shard to stream")
        self.stream = stream
        self.processor = processor
        self.block_size = block_size
        self.batch_size = batch_size
        self.packing = packing
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shards, self.stride = rank_shards(stream.num_shards, rank, world_size)
        self.requested_workers = max(0, int(num_workers or 0))
        # never more workers than shards: a worker without a shard would have nothing to read
        self.num_workers = min(self.requested_workers, len(self.shards))
        self.num_readers = max(1, self.num_workers)
        # set by StreamingLoader before each pass (copied into the workers when they start)
        self.rotation = 0
        self.start_positions: dict[int, Position] = {}

    def describe(self) -> str:
        """One line for the log: this rank's shards, readers and stride."""
        line = f"rank {self.rank}: {len(self.shards)} of {self.stream.num_shards} shards"
        if self.stride > 1:
            line += (
                f" (fewer shards than the {self.world_size} ranks: every rank reads every shard and keeps one text "
                f"in {self.stride})"
            )
        elif self.stream.num_shards % self.world_size:
            line += f" ({self.stream.num_shards} shards for {self.world_size} ranks: the first ranks hold one more)"
        workers = f"{self.num_workers} DataLoader workers" if self.num_workers else "read in the main process"
        if self.num_workers < self.requested_workers:
            workers += f" (of {self.requested_workers} asked: one per shard at most)"
        return f"{line}, {workers}"

    # ---- texts and blocks -----------------------------------------------------------------
    def _blocks(self, reader: int, start: Position, stats: td.TextStats) -> Iterator[tuple[TextUnits, Position]]:
        """This reader's blocks from ``start`` on, each with its position; endless (epoch after epoch)."""
        mine = reader_shards(self.shards, reader, self.num_readers)
        per_block = self.block_size - 1
        max_unit_bytes = self.processor.max_unit_bytes
        epoch = start[0]
        while True:
            found = False
            order = shard_order(mine, self.seed, epoch, reader)
            first_shard = start[1] if epoch == start[0] else 0
            for pos in range(first_shard, len(order)):
                shard = order[pos]
                at_start = (epoch, pos) == start[:2]
                skip = max(start[2] if at_start else 0, self.stream.held_out.get(shard, 0))
                k = 0  # index of the next text in this shard
                for chunk in self.stream.texts(shard, stats):
                    if k + len(chunk) <= skip:  # before the start: not even looked at
                        k += len(chunk)
                        continue
                    for text in chunk:
                        index, k = k, k + 1
                        if index < skip or index % self.stride != self.rank % self.stride:
                            continue
                        units = segment(text, max_unit_bytes)
                        first = start[3] if at_start and index == start[2] else 0
                        for b in range(first * per_block, len(units), per_block):
                            found = True
                            piece = units[b : b + per_block]
                            yield TextUnits(piece, b + per_block >= len(units)), (epoch, pos, index, b // per_block)
            if not found:
                names = ", ".join(self.stream.shard_name(s) for s in mine[:3])
                raise ILTError(f"{self.stream.flag}: the shards {names} hold no text for rank {self.rank}")
            epoch += 1

    # ---- rows and batches -----------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._batches()
        except ILTError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            # from a worker, as an item: DataLoader would re-raise it with the worker's traceback in its message
            yield {STREAM_KEY: {"error": str(exc)}}

    def _batches(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        reader = ((info.id if info is not None else 0) + self.rotation) % self.num_readers
        start = tuple(self.start_positions.get(reader, START))
        collator = td.make_collator(self.processor, self.block_size, self.packing)
        stats = td.TextStats(self.stream.description)
        rows: list[list[TextUnits]] = []
        row: list[TextUnits] = []
        used = 0
        reported_bad = 0
        for block, position in self._blocks(reader, start, stats):  # type: ignore[arg-type]
            n = len(block.units) + 1
            if row and (not self.packing or used + n > self.block_size):
                rows.append(row)
                row, used = [], 0
                if len(rows) == self.batch_size:
                    before = dict(collator.stats)
                    inputs = collator(rows)
                    digest = hashlib.sha256()
                    for r in rows:
                        for t in r:
                            digest.update("\x1f".join(t.units).encode("utf-8", "surrogatepass") + b"\x1e")
                    delta = {k: collator.stats[k] - before[k] for k in _STAT_KEYS}
                    delta["bad_records"] = stats.bad_records + stats.bad_files - reported_bad  # a bad shard counts once
                    reported_bad = stats.bad_records + stats.bad_files
                    inputs[STREAM_KEY] = {
                        "reader": reader,
                        "position": position,  # the block that opens the next batch
                        "stats": delta,
                        "digest": digest.hexdigest(),
                        "first_bad": stats.first_bad,
                    }
                    yield pack_tensors(inputs, shared=True) if info is not None else inputs
                    rows = []
            row.append(block)
            used += n


_PACKED = "ilt_packed_tensors"
#: A worker's batch of at most this many bytes (one packed buffer) travels inside the pickle, through
#: the DataLoader's pipe; a larger one in one shared-memory segment. A segment's file descriptor is
#: fetched by the main process over a socket from the worker's resource-sharer thread, with an
#: authentication round trip: about 1 ms and a wake-up of the worker per batch here, which took the
#: main process 40% of its time with 2 workers, more than copying a few hundred KiB through the pipe
#: (0.08 ms of the main thread for 256 KiB; the copy costs more than the round trip from ~1 MiB on).
INBAND_MAX_BYTES = 512 * 2**10


def pack_tensors(batch: dict[str, Any], shared: bool = False) -> dict[str, Any]:
    """``batch`` with every tensor moved into one flat byte buffer, for the trip from a worker.

    A DataLoader worker sends each tensor as its own shared-memory segment with a file descriptor:
    about 0.25 ms a tensor here, so the ~20 tensors of a batch (more with many image widths) cost more
    than collating it. One buffer costs one: a numpy ``uint8`` array, pickled in-band (no segment
    at all) up to :data:`INBAND_MAX_BYTES`, a ``torch.uint8`` tensor above. An expanded dimension
    (stride 0, e.g. float word images' gray channel viewed 3 times) travels once.
    :func:`unpack_tensors` gives views into the buffer back. ``shared`` (a worker's batch): a buffer
    above the in-band size is made in shared memory and packed there, so the trip copies nothing more
    (a private buffer is copied into a new segment when pickled: 2-3 ms of a worker a 4 MB batch).
    """
    tensors: list[torch.Tensor] = []

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return _Slot(len(tensors) - 1)
        if isinstance(value, dict):
            return {k: v if k == STREAM_KEY else walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)([walk(v) for v in value])
        return value

    tree = walk(batch)
    layout, parts, offset = [], [], 0
    for t in tensors:
        base = t
        for dim in range(t.dim()):
            if t.stride(dim) == 0 and t.shape[dim] > 1:
                base = base.narrow(dim, 0, 1)
        raw = _as_numpy(base.contiguous()).reshape(-1).view(np.uint8)
        expanded = tuple(t.shape) if base is not t else None
        layout.append((offset, raw.size, _NUMPY_DTYPES.get(t.dtype), t.dtype, tuple(base.shape), expanded))
        parts.append((offset, raw))
        offset += raw.size + (-raw.size % 8)  # every tensor starts 8-byte aligned (int64 / float64 views)
    sent: Any
    if offset <= INBAND_MAX_BYTES:
        sent = buffer = np.empty(offset, dtype=np.uint8)
    else:
        sent = _shared_bytes(offset) if shared else torch.empty(offset, dtype=torch.uint8)
        buffer = sent.numpy()
    for o, raw in parts:
        buffer[o : o + raw.size] = raw
    return {_PACKED: (sent, layout), "tree": tree}


def _shared_bytes(n: int) -> torch.Tensor:
    """A ``uint8`` tensor of ``n`` bytes in a new shared-memory segment (its pages are not copied when pickled)."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n))


class _Slot:
    """Where a packed tensor sat in the batch: the index of its entry in the layout."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.index,))


def unpack_tensors(packed: dict[str, Any], pin_memory: bool = False) -> dict[str, Any]:
    """The batch :func:`pack_tensors` packed: its tensors as views into the one buffer (no copy).

    ``pin_memory``: the buffer is first copied into pinned memory (one copy for the whole batch).
    This runs in the main process for every batch, where each microsecond is taken from the model:
    views are cut with numpy (a few times cheaper per tensor than torch's slicing) and wrapped with
    ``torch.from_numpy``.
    """
    buffer, layout = packed[_PACKED]
    if pin_memory:
        buffer = (buffer if isinstance(buffer, torch.Tensor) else torch.from_numpy(buffer)).pin_memory()
    array = buffer.numpy() if isinstance(buffer, torch.Tensor) else buffer
    tensors = []
    for o, n, np_dtype, dtype, base, expanded in layout:
        if np_dtype is None:  # no numpy twin (bfloat16): a torch view
            t = torch.from_numpy(array[o : o + n]).view(dtype).view(base)
        else:
            t = torch.from_numpy(array[o : o + n].view(np_dtype).reshape(base))
        tensors.append(t if expanded is None else t.expand(expanded))
    return _rebuild(packed["tree"], tensors)


def _rebuild(value: Any, tensors: list[torch.Tensor]) -> Any:
    kind = type(value)
    if kind is _Slot:
        return tensors[value.index]
    if kind is dict:
        return {k: v if k == STREAM_KEY else _rebuild(v, tensors) for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind([_rebuild(v, tensors) for v in value])
    return value


_NUMPY_DTYPES = {
    dtype: np.dtype(name)
    for dtype, name in (
        (torch.bool, "bool"),
        (torch.uint8, "uint8"),
        (torch.int8, "int8"),
        (torch.int16, "int16"),
        (torch.int32, "int32"),
        (torch.int64, "int64"),
        (torch.float16, "float16"),
        (torch.float32, "float32"),
        (torch.float64, "float64"),
    )
}


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor's bytes as a numpy array (a view; bfloat16 through its raw bytes)."""
    if t.dtype in _NUMPY_DTYPES:
        return t.detach().numpy()
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _identity(batch: Any) -> Any:
    return batch  # a worker's batch is unpacked in the main process (StreamingLoader.__iter__), not here


class StreamingLoader(torch.utils.data.DataLoader):
    """The training DataLoader of a :class:`StreamingRows`: its workers make whole batches.

    Not passed through ``accelerator.prepare``: each rank already reads its own shards, so no batch
    is dispatched from rank 0 and no rank drops another's share (Trainer's ``IterableDatasetShard``).
    Keeps what resuming needs (:meth:`state_dict`) and adds each batch's statistics into ``sink``
    (the run's :class:`~ilt_core.training.data.UnitCollator`).
    """

    def __init__(self, dataset: StreamingRows, sink: Any, **kwargs: Any) -> None:
        workers = dataset.num_workers
        if not workers:
            kwargs.pop("prefetch_factor", None)
            kwargs.pop("multiprocessing_context", None)
        kwargs.pop("persistent_workers", None)  # the start positions change between passes
        # pinned here, as one buffer per batch (see __iter__), not tensor by tensor in a pinning thread
        self.pin_batches = bool(kwargs.pop("pin_memory", False))
        # each pass draws its workers' base seed from this generator, not from torch's random state: a resumed run
        # restores that state before the pass starts, and one draw more there would shift every dropout after it
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.seed))
        super().__init__(dataset, batch_size=None, collate_fn=_identity, num_workers=workers, **kwargs)
        self.sink = sink
        self.batches = 0
        self.positions: dict[int, Position] = {}
        self.bad_records = 0
        self.first_bad: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        dataset: StreamingRows = self.dataset  # type: ignore[assignment]
        # the next batch comes from reader batches % readers: the first worker plays that reader
        dataset.rotation = self.batches % dataset.num_readers
        dataset.start_positions = dict(self.positions)
        store = None
        if self.num_workers:
            td.warm_text_reading()  # once here, not once in every worker
            store = self._shared_images(dataset)
            # the workers are forked here: with every object of this process frozen out of the cyclic
            # garbage collector's reach, their collections do not touch (and so copy) this process's heap,
            # page after page (what the Python docs advise before a fork); this process unfreezes at once
            gc.freeze()
            try:
                batches = super().__iter__()
            finally:
                gc.unfreeze()
                if store is not None:  # the workers have it; this process renders on its own
                    dataset.processor.cache.share(None)
        else:
            batches = super().__iter__()
        for batch in batches:
            if _PACKED in batch:  # from a worker
                batch = unpack_tensors(batch, self.pin_batches)
            elif self.pin_batches:  # made here: one copy into pinned memory too
                batch = unpack_tensors(pack_tensors(batch), pin_memory=True)
            info = batch.pop(STREAM_KEY)
            if "error" in info:  # a bad record, named by its file and line, met in a worker
                raise ILTError(info["error"])
            self.positions[int(info["reader"])] = tuple(info["position"])  # type: ignore[assignment]
            self.batches += 1
            stats = info["stats"]
            for key in _STAT_KEYS:
                self.sink.stats[key] += stats[key]
            self.sink._digest.update(bytes.fromhex(info["digest"]))
            self.bad_records += int(stats["bad_records"])
            self.first_bad = self.first_bad or info["first_bad"]
            yield batch

    def _shared_images(self, dataset: StreamingRows) -> SharedImages | None:
        """A store of word images for the workers about to be forked (attached to the processor's cache).

        Only for 2 or more workers started by ``fork`` (the mapping is inherited, not sent), with a
        render cache that keeps anything: the store is one more ``--render_cache_bytes``, shared.
        """
        cache = dataset.processor.cache
        context = self.multiprocessing_context
        method = context if isinstance(context, str) else (context or multiprocessing).get_start_method()
        if self.num_workers < 2 or cache is None or method != "fork" or cache.max_bytes < SHARED_MIN_BYTES:
            return None
        store = SharedImages(cache.max_bytes, self.num_workers, cache.renderer.cache_key())
        cache.share(store)
        return store

    def __len__(self) -> int:
        raise TypeError("a stream has no length")  # Trainer then counts by --max_steps

    # ---- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        dataset: StreamingRows = self.dataset  # type: ignore[assignment]
        return {
            "batches": self.batches,
            "positions": {str(k): list(v) for k, v in sorted(self.positions.items())},
            "rank": dataset.rank,
            "world_size": dataset.world_size,
            "num_readers": dataset.num_readers,
            "num_shards": dataset.stream.num_shards,
            "seed": dataset.seed,
            "block_size": dataset.block_size,
            "batch_size": dataset.batch_size,
            "packing": dataset.packing,
        }

    def load_state_dict(self, state: dict[str, Any], where: str) -> str:
        """Continue after ``state`` (a :meth:`state_dict`); returns a line for the log."""
        dataset: StreamingRows = self.dataset  # type: ignore[assignment]
        mine = self.state_dict()
        keys = ("world_size", "num_readers", "num_shards", "seed", "block_size", "batch_size", "packing")
        differ = [f"{k} {state.get(k)} -> {mine[k]}" for k in keys if state.get(k) != mine[k]]
        self.batches = int(state.get("batches", 0))
        positions = {int(k): tuple(int(x) for x in v) for k, v in state.get("positions", {}).items()}
        if differ:
            # another layout reads other shards per reader: the saved positions mean nothing here
            epoch = max((p[0] for p in positions.values()), default=0) + 1
            self.positions = dict.fromkeys(range(dataset.num_readers), (epoch, 0, 0, 0))  # type: ignore[arg-type]
            message = (
                f"{where}: saved by a stream of another layout ({', '.join(differ)}); "
                f"the stream restarts at epoch {epoch} instead of continuing exactly"
            )
            warnings.warn(message, stacklevel=2)
            return message
        self.positions = positions  # type: ignore[assignment]
        return f"data: continuing the stream after {self.batches} batches ({where})"


def position_path(checkpoint: str | Path, rank: int) -> Path:
    return Path(checkpoint) / POSITION_FILE.format(rank=rank)


# ---------------------------------------------------------------------------------------------
# Preparing the run's data
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedStream:
    """The training stream (None without training), the validation rows, log lines and metrics."""

    train: StreamingRows | None
    validation: td.RowDataset | None
    summary: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def first_texts(stream: TextStream, n: int) -> tuple[list[str], dict[int, int]]:
    """The first ``n`` texts of the stream in file order, and how many each shard gave."""
    texts: list[str] = []
    taken: dict[int, int] = {}
    stats = td.TextStats(stream.description)
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
) -> PreparedStream:
    """The training stream for this rank and the validation rows (see the module docstring)."""
    notes = list(plan.summary)
    metrics: dict[str, float] = {}
    validation = None
    if plan.validation_file is not None:
        start = time.perf_counter()
        texts, stats = td.load_texts(
            plan.validation_file,
            data.cache_dir,
            skip_bad_records=data.skip_bad_records,
            num_workers=data.preprocessing_num_workers,
        )
        blocks, _ = td.make_blocks(
            texts,
            processor.max_unit_bytes,
            block_size,
            num_workers=data.preprocessing_num_workers,
            overwrite_cache=data.overwrite_cache,
            limit=data.max_eval_samples,
            desc="eval: units and blocks",
        )
        validation = td.pack_blocks(blocks, block_size, ilt.packing)
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
        )
        notes.append(f"train: {train.describe()}")
    return PreparedStream(train, validation, notes, metrics)


def _rows(texts: list[str], processor: Any, block_size: int, packing: bool) -> td.RowDataset:
    return td.rows_from_units([segment(t, processor.max_unit_bytes) for t in texts], block_size, packing)


__all__ = [
    "POSITION_FILE",
    "PreparedStream",
    "StreamPlan",
    "StreamingLoader",
    "StreamingRows",
    "TextStream",
    "first_texts",
    "plan_stream",
    "position_path",
    "prepare_stream",
    "rank_shards",
    "reader_shards",
    "shard_order",
]

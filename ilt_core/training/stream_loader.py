"""The DataLoader of ``ilt train --streaming``: workers make whole batches; the main process keeps positions.

:class:`StreamingLoader` unpacks each worker's batch (:mod:`ilt_core.training.transfer`), adds its
statistics into the run's collator, keeps every reader's position for an exact resume
(``data_position-rank<R>.json`` in a checkpoint, :func:`position_path`) and gives its forked workers a
shared store of word images. See :mod:`ilt_core.training.streaming` for the rules.
"""

from __future__ import annotations

import gc
import multiprocessing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.text.shared_images import SharedImages
from ilt_core.training.readers import warm_text_reading
from ilt_core.training.shards import Position
from ilt_core.training.stream_dataset import STAT_KEYS, StreamingRows
from ilt_core.training.transfer import PACKED_KEY, STREAM_KEY, pack_tensors, unpack_tensors

#: Name of the per-rank data position file in a checkpoint folder (``{rank}`` filled in).
POSITION_FILE = "data_position-rank{rank}.json"
#: The smallest ``--render_cache_bytes`` for which workers share a store of images (below, each keeps its own).
SHARED_MIN_BYTES = 2**20


def _identity(batch: Any) -> Any:
    return batch  # a worker's batch is unpacked in the main process (StreamingLoader.__iter__), not here


class StreamingLoader(torch.utils.data.DataLoader):
    """The training DataLoader of a :class:`StreamingRows`: its workers make whole batches.

    Not passed through ``accelerator.prepare``: each rank already reads its own shards, so no batch
    is dispatched from rank 0 and no rank drops another's share (Trainer's ``IterableDatasetShard``).
    Keeps what resuming needs (:meth:`state_dict`) and adds each batch's statistics into ``sink``
    (the run's :class:`~ilt_core.text.row_collator.UnitCollator`).
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
            warm_text_reading()  # once here, not once in every worker
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
            if PACKED_KEY in batch:  # from a worker
                batch = unpack_tensors(batch, self.pin_batches)
            elif self.pin_batches:  # made here: one copy into pinned memory too
                batch = unpack_tensors(pack_tensors(batch), pin_memory=True)
            info = batch.pop(STREAM_KEY)
            if "error" in info:  # a bad record, named by its file and line, met in a worker
                raise ILTError(info["error"])
            self.positions[int(info["reader"])] = tuple(info["position"])  # type: ignore[assignment]
            self.batches += 1
            stats = info["stats"]
            for key in STAT_KEYS:
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


__all__ = ["POSITION_FILE", "SHARED_MIN_BYTES", "StreamingLoader", "position_path"]

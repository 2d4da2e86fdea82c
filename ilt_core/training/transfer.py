"""A batch's trip from a DataLoader worker to the main process: its tensors packed into one byte buffer.

:func:`pack_tensors` moves every tensor of a batch into one flat buffer (in-band in the pickle when
small, one shared-memory segment when large); :func:`unpack_tensors` gives views into it back, in the
main process. The value under :data:`STREAM_KEY` (the stream's bookkeeping) travels as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Key of the stream's bookkeeping in a batch (popped by :class:`~ilt_core.training.stream_loader.StreamingLoader` before Trainer sees it).
STREAM_KEY = "ilt_stream"
PACKED_KEY = "ilt_packed_tensors"
#: A worker's batch of at most this many bytes (one packed buffer) travels inside the pickle, through
#: the DataLoader's pipe; a larger one in one shared-memory segment. A segment's file descriptor is
#: fetched by the main process over a socket from the worker's resource-sharer thread, with an
#: authentication round trip and a wake-up of the worker per batch, which costs the main process more
#: than copying a few hundred KiB through the pipe; the copy costs more than the round trip only for
#: batches of a MiB or so.
INBAND_MAX_BYTES = 512 * 2**10


def pack_tensors(batch: dict[str, Any], shared: bool = False) -> dict[str, Any]:
    """``batch`` with every tensor moved into one flat byte buffer, for the trip from a worker.

    A DataLoader worker sends each tensor as its own shared-memory segment with a file descriptor, a
    round trip per tensor, so the ~20 tensors of a batch (more with many image widths) can cost more
    than collating it. One buffer costs one: a numpy ``uint8`` array, pickled in-band (no segment
    at all) up to :data:`INBAND_MAX_BYTES`, a ``torch.uint8`` tensor above. An expanded dimension
    (stride 0, e.g. float word images' gray channel viewed 3 times) travels once.
    :func:`unpack_tensors` gives views into the buffer back. ``shared`` (a worker's batch): a buffer
    above the in-band size is made in shared memory and packed there, so the trip copies nothing more
    (a private buffer is copied into a new segment when pickled).
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
    return {PACKED_KEY: (sent, layout), "tree": tree}


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
    buffer, layout = packed[PACKED_KEY]
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


__all__ = ["INBAND_MAX_BYTES", "PACKED_KEY", "STREAM_KEY", "pack_tensors", "unpack_tensors"]

"""Count what a GPU would launch and wait for, on any device: aten ops and host synchronisations.

:class:`DispatchCount` is a ``TorchDispatchMode``: every non-view aten op that reaches it is one kernel launch on a
GPU; ``_local_scalar_dense`` (``item``, ``int``, ``bool`` of a tensor), ``nonzero``, ``equal``, ``masked_select``,
``unique`` and indexing with a boolean mask read a device value back on the host. On the CPU it is the stand-in for
CUDA's sync debug mode. Run with the CPU-only fast paths off, so the path counted is the one a GPU runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",
        "aten.nonzero.default",
        "aten.equal.default",
        "aten.is_nonzero.default",
        "aten.masked_select.default",
        "aten._unique2.default",
        "aten.unique_consecutive.default",
        "aten.unique_dim.default",
        "aten.repeat_interleave.Tensor",
    }
)
_INDEX_OPS = frozenset(
    {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default", "aten._index_put_impl_.default"}
)
# allocation without a kernel, and views' bookkeeping
_NOT_LAUNCHES = frozenset(
    {
        "aten.detach.default",
        "aten.alias.default",
        "aten.lift_fresh.default",
        "aten.empty.memory_format",
        "aten.empty_strided.default",
        "aten.empty_like.default",
    }
)


def _boolean_index(args: Any) -> bool:
    for a in args:
        if isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in a):
            return True
    return False


class DispatchCount(TorchDispatchMode):
    """``with DispatchCount() as c: ...`` -> ``c.ops`` launches, ``c.syncs`` host syncs, ``c.sync_ops`` by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.sync_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if not func.is_view and name not in _NOT_LAUNCHES:
            self.ops += 1
            if name in SYNC_OPS or (name in _INDEX_OPS and _boolean_index(args)):
                self.syncs += 1
                self.sync_ops[name] += 1
        return func(*args, **(kwargs or {}))


__all__ = ["SYNC_OPS", "DispatchCount"]

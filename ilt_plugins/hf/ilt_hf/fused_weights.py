"""Weights rearranged for a hand-written inference step, rebuilt only when a parameter of the model changes.

The fast inference paths (:mod:`ilt_hf.fast_greedy`, :mod:`ilt_hf.fast_vit`) concatenate projections (q/k/v,
gate/up) so that one matrix product replaces several calls. Training moves the parameters in place, so the
concatenations are keyed by every parameter's storage and version counter and rebuilt when any of them changes.
"""

from __future__ import annotations

import threading
from typing import Any

from torch import nn

#: One build at a time: threads generating with one model at once find the weights built by the first.
_BUILDING = threading.Lock()


class FusedWeights:
    """Holder of fused weights: subclasses fill ``self.layers`` (and anything else) in :meth:`build`."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.layers: list[tuple[Any, ...]] = []

    def build(self, model: nn.Module) -> None:
        raise NotImplementedError

    def refresh(self, model: nn.Module) -> None:
        """Rebuild from ``model`` unless no parameter changed since the last build."""
        key = tuple((p.data_ptr(), p._version) for p in model.parameters())
        if key != self.key:
            with _BUILDING:
                if key != self.key:  # another thread may have built them meanwhile
                    self.build(model)
                    self.key = key

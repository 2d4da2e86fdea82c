"""Weights rearranged for a hand-written inference step, rebuilt only when a parameter of the model changes.

The fast inference paths (:mod:`ilt_hf.fused_llama`, :mod:`ilt_hf.fast_vit`) concatenate projections (q/k/v,
gate/up) so that one matrix product replaces several calls. Training moves the parameters in place, so the
concatenations are keyed by every parameter's storage and version counter and rebuilt when any of them changes.
A fused optimizer (torch's ``AdamW(fused=True)``, Trainer's default ``adamw_torch_fused``) moves them in place
without bumping the version counters: so a wrapper's change of mode between training and inference (``train()`` /
``eval()``, :meth:`ilt_hf.backbone.HFWrapper.train`) also invalidates them (:meth:`~FusedWeights.invalidate`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch import nn

#: One build at a time: threads generating with one model at once find the weights built by the first.
_BUILDING = threading.Lock()


class FusedWeights:
    """Holder of fused weights: subclasses fill ``self.layers`` (and anything else) in :meth:`build`."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.layers: list[tuple[Any, ...]] = []
        self.epoch = 0  # bumped by invalidate(): part of the key, so a rebuild always gives a new key

    def build(self, model: nn.Module) -> None:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # all of it derives from the model's parameters and is rebuilt at first use: a copy or a pickle of the model
        # carries none of it (kept byte loops hold locks and CUDA graphs, which cannot be copied)
        return {"key": None, "layers": [], "epoch": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def invalidate(self) -> None:
        """Rebuild at the next :meth:`refresh` even if no parameter's version counter moved (a CUDA graph captured
        on these weights sees a new key and is captured again)."""
        self.epoch += 1

    def refresh(self, model: nn.Module) -> None:
        """Rebuild from ``model`` unless no parameter changed since the last build (nor :meth:`invalidate`)."""
        key = (self.epoch, tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if key != self.key:
            with _BUILDING:
                if key != self.key:  # another thread may have built them meanwhile
                    self.build(model)
                    self.key = key


def switch_fused(
    owner: Any, attr: str, enabled: bool, supported: Callable[[nn.Module], bool], make: Callable[[], FusedWeights]
) -> bool:
    """A component's fused inference step (its part of ``set_fast_paths``) on or off: its fused weights, held in
    ``owner.<attr>``.

    Off keeps them aside (``owner._fused_off``) for when the fused path is switched back on; on makes them
    (``make()``) only for a ``owner.model`` that ``supported`` says the fused path reproduces. Returns whether the
    fused path is in use.
    """
    current = getattr(owner, attr)
    if not enabled:
        owner._fused_off = current or getattr(owner, "_fused_off", None)
        setattr(owner, attr, None)
    elif current is None and supported(owner.model):
        setattr(owner, attr, getattr(owner, "_fused_off", None) or make())
    return getattr(owner, attr) is not None

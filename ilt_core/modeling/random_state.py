"""torch's random state kept for the caller: building a model with its own seed, or loading one (whose components
draw numbers while they are built that the loaded weights then replace), leaves the caller's draws unchanged."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def random_state_kept() -> Iterator[None]:
    """torch's random state (the CPU's, and each initialised CUDA device's) given back when the block ends."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        yield


def keeps_random_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` leaves torch's random state as it found it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with random_state_kept():
            return fn(*args, **kwargs)

    return wrapper

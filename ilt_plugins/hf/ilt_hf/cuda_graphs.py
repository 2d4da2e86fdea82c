"""Capturing a fused inference step as a CUDA graph: what the byte loop (``byte_loop``) and the latent's static
step (``fast_neox``) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["capture"]

T = TypeVar("T")


def capture(run: Callable[[], T], device: torch.device, warmup: int = 1) -> tuple[Any, T]:
    """Call ``run`` ``warmup`` times on a side stream (kernels chosen and memory set up before a capture, as CUDA
    graphs need; these calls really run), then capture one call of it as a CUDA graph, which runs nothing.

    Returns the graph (``graph.replay()`` runs the captured call on the same buffers) and what the captured call
    returned: its output buffers, written at every replay.
    """
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return graph, out

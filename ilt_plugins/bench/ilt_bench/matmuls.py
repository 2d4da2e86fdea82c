"""Matrix products of a step: recorded by shape, and each shape timed alone with torch and with numpy.

:class:`MatmulRecorder` counts the ``aten.mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` products dispatched inside it;
:func:`time_shape` times one product of a shape in its fastest operand layout (``benchmarks/bench_bounds.py``,
``bench_generation.py --reference``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ilt_bench import common

Shape = tuple[int, int, int, int]  # (batch, M, K, N): batch products of (M, K) @ (K, N)


class MatmulRecorder(TorchDispatchMode):
    """Counts the matrix products dispatched inside it, by shape ``(batch, M, K, N)``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[Shape] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        aten = torch.ops.aten
        if func in (aten.mm.default, aten.addmm.default):
            a, b = (args[0], args[1]) if func is aten.mm.default else (args[1], args[2])
            self.counts[(1, a.shape[0], a.shape[1], b.shape[1])] += 1
        elif func in (aten.bmm.default, aten.baddbmm.default):
            a, b = (args[0], args[1]) if func is aten.bmm.default else (args[1], args[2])
            self.counts[(a.shape[0], a.shape[1], a.shape[2], b.shape[2])] += 1
        return func(*args, **(kwargs or {}))


def layouts(batch: int, m: int, k: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random float32 operands ``(M, K) @ (K, N)`` in every memory layout a product meets: each side stored as is
    or transposed (a linear layer's forward reads its weight transposed, its backward reads activations so)."""
    if batch > 1:
        return [(torch.randn(batch, m, k), torch.randn(batch, k, n))]
    pairs = []
    for a_t in (False, True):
        for b_t in (False, True):
            a = torch.randn(k, m).t() if a_t else torch.randn(m, k)
            b = torch.randn(n, k).t() if b_t else torch.randn(k, n)
            pairs.append((a, b))
    return pairs


def time_shape(shape: Shape, repeats: int) -> dict[str, float]:
    """Seconds of one product of ``shape`` with torch and with numpy, each in its fastest operand layout."""
    batch, m, k, n = shape
    # big products need fewer repeats to be timed well; small ones need more to get past the noise
    reps = max(1, min(repeats * 10, int(repeats * 2e8 / max(2 * batch * m * k * n, 1))))
    best = {"torch_s": float("inf"), "numpy_s": float("inf")}
    for a, b in layouts(batch, m, k, n):
        a_np, b_np = a.numpy(), b.numpy()
        best["torch_s"] = min(best["torch_s"], common.fastest(lambda a=a, b=b: torch.matmul(a, b), reps))
        best["numpy_s"] = min(best["numpy_s"], common.fastest(lambda a=a_np, b=b_np: a @ b, reps))
    return best


__all__ = ["MatmulRecorder", "Shape", "layouts", "time_shape"]

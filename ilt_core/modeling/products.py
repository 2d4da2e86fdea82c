"""The linear layers' matrix products through numpy's OpenBLAS, on a CPU in float32 (training and inference).

Why: on some CPUs the OpenBLAS that ships inside numpy's wheels runs a training step's products faster than the
BLAS torch's wheels call (``benchmarks/bench_bounds.py`` times every product of the reference setup's step both
ways; its figures are in ``benchmarks/REPORT.md``). :func:`set_cpu_products` swaps each plain ``nn.Linear`` of a model for
:class:`NumpyLinear`, the same module (same parameters, state dict and ``isinstance``) whose forward and backward
products go through ``numpy.matmul`` when the call allows it (:func:`numpy_call_allowed`): CPU float32 tensors,
no autocast, no tensor subclass, no dispatch or function mode (``FlopCounterMode`` and the bounds' recorder count
torch's products). A graph being compiled calls :func:`numpy_mm` instead, a custom operator the compiler keeps
opaque (:func:`compiled_call_allowed`). Everything else takes ``nn.Linear``'s own path.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ilt_core.plugins.registry import FastPath

#: ``ModelSpec.cpu_products`` values: ``numpy`` (OpenBLAS where allowed) or ``torch`` (torch's own BLAS only).
CPU_PRODUCTS = ("numpy", "torch")

# torch's count of active dispatch modes (a private call: tested with torch 2.x). Without it the numpy path cannot
# tell that a mode (FlopCounterMode, a recorder) must see torch's products: it stays off, and fast_path() says so.
_dispatch_stack_len: Callable[[], int] | None = getattr(torch._C, "_len_torch_dispatch_stack", None)


@functools.cache
def _openblas_threads() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """numpy's OpenBLAS ``(set_num_threads, get_num_threads)``, found among the loaded libraries; None if absent."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and line.rstrip().endswith(".so")}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def openblas_threads() -> int | None:
    """numpy's OpenBLAS thread count (None: numpy does not use OpenBLAS, or it is not loaded yet)."""
    found = _openblas_threads()
    return found[1]() if found is not None else None


def set_openblas_threads(n: int) -> int | None:
    """Set numpy's OpenBLAS thread count, for the whole process; returns the count before (None: no OpenBLAS).

    For a process's start-up, never inside a library call: the ``ilt`` command sets 1, so that each product runs
    on the calling thread and :func:`numpy_matmul` splits large ones over torch's threads itself (OpenBLAS's own
    threads spin for a while after each product, ``OPENBLAS_THREAD_TIMEOUT``, taking a core from the torch
    operations that follow). ``OPENBLAS_NUM_THREADS=1`` or ``threadpoolctl`` do the same from outside.
    """
    found = _openblas_threads()
    if found is None:
        return None
    before = found[1]()
    if before != n:
        found[0](n)
    return before


#: Products of fewer multiply-adds run on the calling thread alone (a split into threads costs a hand-over).
SPLIT_MIN_MULTIPLY_ADDS = 4_000_000
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)


def _helpers(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` threads, made again when torch's thread count changes or in a forked child (whose copy of
    the parent's pool has no threads: work handed to it would wait forever)."""
    global _pool, _pool_key
    key = (os.getpid(), n)
    if _pool is None or _pool_key != key:
        if _pool is not None and _pool_key[0] == key[0]:
            _pool.shutdown(wait=True)
        _pool, _pool_key = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ilt-products"), key
    return _pool


def numpy_call_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``F.linear(x, weight)`` may run in numpy: see the module docstring."""
    if torch.compiler.is_compiling():  # a compiled graph keeps torch's own product
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and type(x) is torch.Tensor
        and type(weight) in (torch.Tensor, nn.Parameter)
        and not torch.is_autocast_enabled("cpu")
        and _dispatch_stack_len is not None
        and _dispatch_stack_len() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )


def numpy_matmul(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``a (M, K) @ b (K, N)`` through ``numpy.matmul`` -> a new float32 tensor ``(M, N)``.

    A transposed view is passed to BLAS as transposed (no copy). Where OpenBLAS runs on one thread
    (:func:`set_openblas_threads`), large products are split by output rows over torch's intra-op thread count: one
    part on this thread, the others on pool threads, each a one-thread BLAS call; where it has threads of its own,
    it splits them itself. Neither thread count is changed here.
    """
    a_np = a.detach().numpy()
    b_np = b if isinstance(b, np.ndarray) else b.detach().numpy()
    rows = a_np.shape[0]
    out = np.empty((rows, b_np.shape[1]), dtype=np.float32)
    n = min(torch.get_num_threads(), rows // 16)
    if n < 2 or rows * a_np.shape[1] * b_np.shape[1] < SPLIT_MIN_MULTIPLY_ADDS or (openblas_threads() or 1) > 1:
        np.matmul(a_np, b_np, out=out)
        return torch.from_numpy(out)
    cuts = [rows * i // n for i in range(n + 1)]
    pool = _helpers(n - 1)
    parts = [pool.submit(np.matmul, a_np[s:e], b_np, out=out[s:e]) for s, e in zip(cuts[1:-1], cuts[2:], strict=True)]
    np.matmul(a_np[: cuts[1]], b_np, out=out[: cuts[1]])
    for part in parts:
        part.result()
    return torch.from_numpy(out)


def column_sums(a: torch.Tensor) -> torch.Tensor:
    """``a (M, N)`` float32 summed over its rows -> a new ``(N,)``, as a BLAS product of a row of ones: a bias's
    gradient in one pass at the product's speed (torch's ``sum(0)`` of a tall matrix takes several times as long on
    a CPU)."""
    a_np = a.detach().numpy()
    return torch.from_numpy(np.ones(a_np.shape[0], dtype=np.float32) @ a_np)


class _NumpyLinearFunction(torch.autograd.Function):
    """``x (..., in) @ weight.T (in, out) + bias (out,)`` with its three products in numpy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.detach().reshape(-1, x.shape[-1]).contiguous()  # (M, in)
        out = numpy_matmul(x2, weight.detach().numpy().T)  # (M, out)
        # reshaped in numpy: a torch view would be an autograd view, which an in-place op on the output (SwinV2's
        # ReLU in its position-bias MLP) refuses
        out = torch.from_numpy(out.numpy().reshape(*x.shape[:-1], weight.shape[0]))
        if bias is not None:
            out.add_(bias.detach())
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).contiguous()  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = numpy_matmul(g2, weight.detach().numpy()).view(ctx.x_shape)  # (M, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            grad_w = numpy_matmul(g2.t(), x2.numpy())  # (out, M) @ (M, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = column_sums(g2)
        return grad_x, grad_w, grad_b


@torch.library.custom_op("ilt::numpy_mm", mutates_args=())
def numpy_mm(a: torch.Tensor, b: torch.Tensor, transpose_a: bool = False, transpose_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(b)`` float32 CPU through :func:`numpy_matmul` (``op`` transposes where asked: ``a`` stored
    ``(K, M)``, ``b`` ``(N, K)``), as one operator that ``torch.compile`` keeps opaque: a compiled graph calls it where
    the eager layer would call numpy. The flags let BLAS read a transposed operand as stored (a transposed view
    handed to a custom operator would be copied first); the gradient is two more calls."""
    return numpy_matmul(a.t() if transpose_a else a, b.t() if transpose_b else b)


@numpy_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, transpose_a: bool = False, transpose_b: bool = False) -> torch.Tensor:
    return a.new_empty(a.shape[1 if transpose_a else 0], b.shape[0 if transpose_b else 1])


def _numpy_mm_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    a, b, ctx.transpose_a, ctx.transpose_b = inputs
    ctx.save_for_backward(a, b)


def _numpy_mm_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    # C = op(A) op(B): dop(A) = G op(B)^T, dop(B) = op(A)^T G; each gradient is laid out as its input is stored
    a, b = ctx.saved_tensors
    ta, tb = ctx.transpose_a, ctx.transpose_b
    grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_a = numpy_mm(b, grad, tb, True) if ta else numpy_mm(grad, b, False, not tb)
    if ctx.needs_input_grad[1]:
        grad_b = numpy_mm(grad, a, True, ta) if tb else numpy_mm(a, grad, not ta, False)
    return grad_a, grad_b, None, None


numpy_mm.register_autograd(_numpy_mm_backward, setup_context=_numpy_mm_setup)


def compiled_call_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when a graph being compiled may call :func:`numpy_mm` for ``F.linear(x, weight)``: CPU float32
    operands, no autocast (read while tracing, as the graph's other choices are)."""
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
    )


def linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, like: nn.Module | None = None
) -> torch.Tensor:
    """``F.linear(input, weight, bias)`` as the layer ``like`` computes its own (through numpy when ``like`` is a
    :class:`NumpyLinear` and :func:`numpy_call_allowed`, or in a graph being compiled :func:`compiled_call_allowed`):
    for a product of weights a model concatenates or derives from its layers'."""
    if isinstance(like, NumpyLinear):
        if torch.compiler.is_compiling():
            if compiled_call_allowed(input, weight):
                out = numpy_mm(input.reshape(-1, input.shape[-1]), weight, transpose_b=True)
                out = out.view(*input.shape[:-1], weight.shape[0])
                return out + bias if bias is not None else out
        elif numpy_call_allowed(input, weight):
            return _NumpyLinearFunction.apply(input, weight, bias)
    return F.linear(input, weight, bias)


class NumpyLinear(nn.Linear):
    """``nn.Linear`` whose products run in numpy's OpenBLAS when :func:`numpy_call_allowed` (else ``F.linear``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias, like=self)


def fast_path() -> FastPath:
    """Whether ``cpu_products: numpy`` can take numpy's path with the installed torch and numpy."""
    name = "core: linear layers' products in numpy (cpu_products: numpy, CPU float32)"
    if _dispatch_stack_len is None:
        return FastPath(
            name, False, f"torch {torch.__version__} has no torch._C._len_torch_dispatch_stack: torch's products"
        )
    threads = openblas_threads()
    blas = f"OpenBLAS, {threads} thread(s)" if threads is not None else "numpy's BLAS is not OpenBLAS"
    return FastPath(name, True, f"numpy {np.__version__} ({blas}), torch {torch.__version__}")


def set_cpu_products(model: nn.Module, products: str) -> int:
    """Route the plain ``nn.Linear`` layers of ``model`` through numpy (``"numpy"``) or back to torch
    (``"torch"``) by swapping their class in place; returns how many layers were switched."""
    if products not in CPU_PRODUCTS:
        raise ValueError(f"cpu_products: expected one of {', '.join(CPU_PRODUCTS)}, got {products!r}")
    source, target = (nn.Linear, NumpyLinear) if products == "numpy" else (NumpyLinear, nn.Linear)
    switched = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            switched += 1
    return switched

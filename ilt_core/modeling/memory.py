"""Where the C library puts a CPU training step's large tensors: a process-wide setting of ``ilt train``.

torch's CPU tensors come from the C library's ``malloc``. glibc serves a block above a threshold with its own
``mmap`` and unmaps it at ``free``; it raises that threshold to the size of each such block freed, up to 32 MiB.
A training step allocates and frees large activations over and over, so by default it pays both ways:

- blocks above 32 MiB (such as the bytes decoder's ``(M * K, intermediate)`` activations at the reference setup's
  batch of 8 x 64 words) are mapped afresh at every allocation: every page faults and is zeroed by the kernel, and
  a step spends a share of its CPU time in the kernel;
- smaller ones come from the heap, which keeps what is freed in its middle: peak RSS holds every activation a step
  ever freed, fragmented, not only the live ones.

``ilt train --cpu_malloc`` picks one of three settings for its process, once, at start-up (results never change):

- ``reuse`` (:func:`keep_freed_memory`, for speed; ``ilt train``'s default): nothing is mapped by itself and the
  heap is never trimmed, so a step reuses the pages of the last one: no page faults after the first step, peak RSS
  a little higher;
- ``default``: the C library's own settings, untouched (building, calling or training a model never changes the
  allocator by itself: only ``ilt train``, its ``run_training``, or a call of :func:`set_cpu_malloc` does);
- ``return`` (:func:`return_freed_memory`, for memory, e.g. with activation checkpointing): blocks above 1 MiB are
  mapped by themselves and unmapped when freed, so RSS follows the live tensors, at the price of the page faults.

:func:`set_cpu_malloc` applies one and returns what undoes it; :func:`restore_defaults` puts glibc's documented
defaults back (glibc has no call that reads its settings, and once any is set its threshold no longer adapts).
Only glibc has these settings: elsewhere (musl, macOS, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

#: ``ilt train --cpu_malloc`` values.
CPU_MALLOC = ("default", "reuse", "return")

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: glibc's defaults (mallopt(3)): how many blocks may be mapped by themselves at once, the size above which a block
#: is (its starting value: the threshold then adapts), and the free bytes at the heap's top that trigger a trim
DEFAULT_MMAP_MAX = 65536
DEFAULT_MMAP_THRESHOLD = 128 * 1024
DEFAULT_TRIM_THRESHOLD = 128 * 1024
#: ``return``: blocks above this many bytes are mapped for themselves and unmapped when freed (a 64 x 32 x 256
#: float32 activation is 2 MiB; smaller blocks stay in the heap, where reuse is cheap)
RETURN_THRESHOLD = 1 << 20
#: ``reuse``: the heap is trimmed only when this much is free at its top: never, in practice
NEVER_TRIM = 1 << 62


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def _mallopt(*settings: tuple[int, int]) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return all([bool(libc.mallopt(param, min(int(value), 2**31 - 1))) for param, value in settings])


def return_freed_memory(threshold: int = RETURN_THRESHOLD) -> bool:
    """``return``: the C library maps every block above ``threshold`` bytes by itself and unmaps it when freed.

    Process-wide. Returns False, changing nothing, where the C library is not glibc.
    """
    return _mallopt(
        (M_MMAP_MAX, DEFAULT_MMAP_MAX), (M_MMAP_THRESHOLD, threshold), (M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    )


def keep_freed_memory() -> bool:
    """``reuse``: the C library maps no block by itself and never trims the heap, so freed pages are reused.

    Process-wide. Returns False, changing nothing, where the C library is not glibc.
    """
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))


def restore_defaults() -> bool:
    """glibc's documented defaults back (the mapping threshold fixed at its starting value from now on)."""
    return _mallopt(
        (M_MMAP_MAX, DEFAULT_MMAP_MAX),
        (M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD),
    )


def set_cpu_malloc(policy: str) -> Callable[[], object]:
    """Apply ``policy`` (one of :data:`CPU_MALLOC`) to this process; returns the call that undoes it.

    ``default`` changes nothing (and its undo does nothing). A ``ValueError`` names an unknown policy.
    """
    if policy not in CPU_MALLOC:
        raise ValueError(f"--cpu_malloc {policy!r}: expected one of {', '.join(CPU_MALLOC)}")
    if policy == "default":
        return lambda: None
    applied = keep_freed_memory() if policy == "reuse" else return_freed_memory()
    return restore_defaults if applied else (lambda: None)

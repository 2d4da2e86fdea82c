"""Process memory of a training step: where the C library puts large tensors, set for speed or for memory.

torch's CPU tensors come from the C library's ``malloc``. glibc serves a block above a threshold with its own
``mmap`` and unmaps it at ``free``; it raises that threshold to the size of each such block freed, up to 32 MiB.
A training step allocates and frees large activations over and over, so by default it pays both ways:

- blocks above 32 MiB (such as the bytes decoder's ``(M * K, intermediate)`` activations at the reference setup's
  batch of 8 x 64 words) are mapped afresh at every allocation: every page faults and is zeroed by the kernel, and
  a step spends a share of its CPU time in the kernel;
- smaller ones come from the heap, which keeps what is freed in its middle: peak RSS holds every activation a step
  ever freed, fragmented, not only the live ones.

So a training process picks one of two settings (process-wide, glibc only; results never change):

- :func:`keep_freed_memory` (for speed: the default of a training forward, see ``ILTModel.forward``): nothing is
  mapped by itself and the heap is never trimmed, so a step reuses the pages of the last one: no page faults after
  the first step, for a slightly higher peak RSS.
- :func:`return_freed_memory` (for memory: with activation checkpointing): blocks above 1 MiB are mapped by
  themselves and unmapped when freed, so RSS follows the live tensors, at the price of the page faults.

The first one asked for stays: a process that enabled checkpointing keeps returning memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: glibc's default of M_MMAP_MAX (how many blocks may be mapped by themselves at once)
DEFAULT_MMAP_MAX = 65536
#: blocks above this many bytes are mapped for themselves and unmapped when freed (a 64 x 32 x 256 float32
#: activation is 2 MiB; smaller blocks stay in the heap, where reuse is cheap)
DEFAULT_THRESHOLD = 1 << 20
#: glibc's default: the heap is trimmed when this much is free at its top (memory-saving setting)
DEFAULT_TRIM_THRESHOLD = 128 * 1024
#: the heap is trimmed only when this much is free at its top: never, in practice
NEVER_TRIM = 1 << 62

_chosen: list[str] = []  # the policy set in this process, if any


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def _mallopt(libc: ctypes.CDLL, param: int, value: int) -> bool:
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(param, min(int(value), 2**31 - 1)))


def keep_defaults() -> None:
    """Leave the C library's settings as they are in this process: :func:`keep_freed_memory` then changes nothing
    (to compare the settings against glibc's own)."""
    _chosen[:] = ["defaults"]


def return_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """For memory: the C library maps every block above ``threshold`` bytes by itself and unmaps it when freed.

    Process-wide; it overrides :func:`keep_freed_memory` and stays for the process's life. Returns False, changing
    nothing, where the C library is not glibc (musl, macOS, Windows).
    """
    libc = _libc()
    if libc is None:
        return False
    _chosen[:] = ["return"]
    done = _mallopt(libc, M_MMAP_MAX, DEFAULT_MMAP_MAX) and _mallopt(libc, M_MMAP_THRESHOLD, threshold)
    return done and _mallopt(libc, M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)


def keep_freed_memory() -> bool:
    """For speed: the C library maps no block by itself and never trims the heap, so freed pages are reused.

    Process-wide and once: it does nothing after :func:`return_freed_memory` (or a first call). Returns whether this
    setting is in force; False where the C library is not glibc.
    """
    libc = _libc()
    if libc is None or _chosen == ["return"]:
        return False
    if not _chosen:
        _chosen[:] = ["keep"]
        _mallopt(libc, M_MMAP_MAX, 0)
        _mallopt(libc, M_TRIM_THRESHOLD, NEVER_TRIM)
    return True

"""Process memory: let activations freed during a training step leave the process.

torch's CPU tensors come from the C library's ``malloc``. glibc serves a large block with its own ``mmap`` and
returns it to the system at ``free``, but only above a threshold that it raises to the size of each such block
freed (up to 32 MiB): after the first step, most activation tensors come from the heap instead, and the heap keeps
what is freed in its middle. Peak RSS then holds every activation a step ever freed, fragmented, not just the live
ones: with activation checkpointing on the reference setup (batch 8 x 64 words) it stayed at 2.4 GB where the live
tensors never passed 1.6 GB. Fixing the threshold keeps large blocks mapped and unmapped one by one.

The trade: every large tensor is fresh pages, so a step takes page faults (a few hundred thousand on that setup):
what the memory-saving configuration gives for memory. Elsewhere the C library's default stands.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h)
M_MMAP_THRESHOLD = -3
#: blocks above this many bytes are mapped for themselves and unmapped when freed (a 64 x 32 x 256 float32
#: activation is 2 MiB; smaller blocks stay in the heap, where reuse is cheap)
DEFAULT_THRESHOLD = 1 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def return_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Make the C library map every block above ``threshold`` bytes by itself and unmap it when freed.

    Process-wide, and it stays for the process's life (it only changes where large blocks live, never results).
    Returns False, changing nothing, where the C library is not glibc (musl, macOS, Windows).
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(int(threshold))))

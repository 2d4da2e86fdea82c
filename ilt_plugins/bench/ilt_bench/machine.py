"""What a benchmark figure depends on: this machine, the package versions, and the process's memory.

The one place for these helpers: ``ilt bench`` (:mod:`ilt_bench.harness`, :mod:`ilt_bench.run`) and
the speed scripts under ``benchmarks/`` record the same facts the same way. Memory is in bytes.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions shape the figures (recorded in every report).
PACKAGES = (
    "ilt-core",
    "ilt-hf",
    "ilt-timm",
    "ilt-clip",
    "ilt-freetype",
    "torch",
    "transformers",
    "tokenizers",
    "timm",
    "open_clip_torch",
    "numpy",
    "matplotlib",
)


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (those present) and Python's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """CPU model and cores, memory, load, torch threads, OpenMP wait policy, device (and GPU name), time.

    ``threads``: the torch threads the run uses (default: torch's current setting).
    """
    import torch  # heavy: only when a report is written

    try:
        load_1m: float = os.getloadavg()[0]
    except OSError:
        load_1m = float("nan")
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1m": load_1m,
        "device": device,
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return info


# ---- memory of this process ---------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` field given in kB, in bytes; None where there is no such file."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started or the last :func:`reset_peak_rss`."""
    value = _status_bytes("VmHWM")
    if value is not None:
        return value
    import resource  # not Linux: ru_maxrss (never reset; kB on Linux, bytes on macOS)

    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(raw if sys.platform == "darwin" else raw * 1024)


def rss_parts_mib() -> dict[str, float]:
    """Resident memory now, by kind: anonymous (the heap, tensors), file-backed (mapped files and libraries) and
    shared memory, in MiB (``/proc/self/status``; 0 where there is no such file)."""
    return {kind: round((_status_bytes(f"Rss{kind}") or 0) / 2**20, 1) for kind in ("Anon", "File", "Shmem")}


def rss_bytes() -> int:
    """Current resident memory of this process (0 where ``/proc`` is missing)."""
    return _status_bytes("VmRSS") or 0

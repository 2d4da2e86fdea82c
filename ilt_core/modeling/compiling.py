"""How ILT compiles its training step: the arguments of ``torch.compile`` for the device it trains on.

``ilt train --torch_compile`` (Trainer's flag, through accelerate's dynamo plugin) and the benchmarks compile with
these, so what a benchmark times is what a user's run compiles.
"""

from __future__ import annotations

from typing import Any

import torch

#: inductor's options on a CPU: dropout draws its masks with torch's own generator, so the compiled step draws the
#: eager step's masks from the same seed (inductor's own CPU random numbers, a Philox counter per element, differ):
#: compiling changes the speed of a CPU run, not its random numbers.
CPU_OPTIONS: dict[str, Any] = {"fallback_random": True}


def compile_options(device: torch.device | str) -> dict[str, Any] | None:
    """Inductor's options for a step on ``device``: :data:`CPU_OPTIONS` on a CPU, None (inductor's defaults)
    elsewhere: on a GPU inductor's generated random numbers fuse into the kernels that use them."""
    return dict(CPU_OPTIONS) if torch.device(device).type == "cpu" else None


def compile_arguments(device: torch.device | str) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for the whole training step on ``device``: one graph
    (``fullgraph=True``: a graph break raises) of static shapes (``dynamic=False``: fixed-shape batches), with
    :func:`compile_options`.

        step = torch.compile(model, **compile_arguments("cpu"))
    """
    options = compile_options(device)
    return {"fullgraph": True, "dynamic": False, **({"options": options} if options else {})}


__all__ = ["CPU_OPTIONS", "compile_arguments", "compile_options"]

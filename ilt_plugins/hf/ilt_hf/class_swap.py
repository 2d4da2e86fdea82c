"""Switching layers of a built transformers model to a subclass with another ``forward``, in place.

The switched layer keeps its parameters, buffers, state dict and ``isinstance``; only ``type(layer)`` changes, to a
subclass named ``Fast<Class>`` that is registered in the module giving the new forward, so that pickling a switched
model finds it (``fast_norm.py``, ``fast_rope.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from typing import Any

from torch import nn

__all__ = ["fast_class", "swap_classes"]


@cache
def fast_class(cls: type, forward: Callable[..., Any], module_name: str) -> type:
    """The subclass ``Fast<cls>`` of ``cls`` with ``forward``, registered as an attribute of ``module_name``."""
    name = f"Fast{cls.__name__}"
    fast = type(name, (cls,), {"forward": forward, "__module__": module_name, "__qualname__": name})
    setattr(sys.modules[module_name], name, fast)
    return fast


def swap_classes(
    model: nn.Module, forward: Callable[..., Any], module_name: str, wants: Callable[[nn.Module], bool]
) -> int:
    """Switch every layer of ``model`` that ``wants`` (and is not switched yet) to :func:`fast_class`; returns how
    many were switched."""
    switched = 0
    for layer in model.modules():
        if type(layer).__module__ != module_name and wants(layer):
            layer.__class__ = fast_class(type(layer), forward, module_name)
            switched += 1
    return switched

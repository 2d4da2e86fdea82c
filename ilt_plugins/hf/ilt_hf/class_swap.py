"""Switching layers of a built transformers model to a subclass with another ``forward``, in place.

The switched layer keeps its parameters, buffers, state dict and ``isinstance``; only ``type(layer)`` changes, to a
subclass named ``Fast<Class>`` that is registered in the module giving the new forward (``fast_norm.py``,
``fast_rope.py``). A switched layer pickles as "make ``Fast<Class>`` from the class and the forward, then fill it":
a fresh process that never switched a layer unpickles it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from typing import Any

from torch import nn

__all__ = ["fast_class", "swap_classes", "unswap_classes"]


@cache
def fast_class(cls: type, forward: Callable[..., Any], module_name: str) -> type:
    """The subclass ``Fast<cls>`` of ``cls`` with ``forward``, registered as an attribute of ``module_name``."""
    name = f"Fast{cls.__name__}"

    def __reduce_ex__(self: nn.Module, protocol: Any) -> tuple:
        # object's reduction names the class by its qualified name, which a fresh process has not made yet
        reduced = super(fast, self).__reduce_ex__(protocol)
        return (_new_switched, (cls, forward, module_name), *reduced[2:])

    namespace = {"forward": forward, "__module__": module_name, "__qualname__": name, "__reduce_ex__": __reduce_ex__}
    fast = type(name, (cls,), namespace)
    setattr(sys.modules[module_name], name, fast)
    return fast


def _new_switched(cls: type, forward: Callable[..., Any], module_name: str) -> nn.Module:
    """An empty instance of ``Fast<cls>`` (unpickling fills it), the class made first where it is not yet."""
    fast = fast_class(cls, forward, module_name)
    return fast.__new__(fast)


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


def unswap_classes(model: nn.Module, module_name: str) -> int:
    """Put every layer of ``model`` switched by ``module_name`` back to its own class; returns how many."""
    restored = 0
    for layer in model.modules():
        if type(layer).__module__ == module_name:
            layer.__class__ = type(layer).__mro__[1]
            restored += 1
    return restored

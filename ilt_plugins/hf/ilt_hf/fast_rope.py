"""Rotary position embeddings in fewer passes over memory, for CPU float32 training.

transformers' ``apply_rotary_pos_emb`` computes ``q * cos + rotate_half(q) * sin`` for queries and keys: a negated
half, a concatenation, two products and a sum forward, and autograd replays as many steps backward, each a pass over
a ``(B, H, S, D)`` tensor. In a bytes decoder (words x 33 positions) those passes cost more than their arithmetic
on a CPU. :class:`RotaryFunction` computes the same rotation as one product and two ``addcmul_`` on the halves,
forward and backward (the rotation's transpose), and saves only ``cos`` and ``sin``.

:func:`swap_rotary_attention` switches a model's attention layers to it by swapping their class in place (same
parameters, state dict and ``isinstance``): the switched class runs transformers' own ``forward`` code, rebound to
a namespace where ``apply_rotary_pos_emb`` is :func:`fast_apply_rotary_pos_emb`, which takes the path above for CPU
float32 tensors rotated over their whole width (outside ``torch.compile``) and the module's own function otherwise
(GPT-NeoX's partial rotary, other dtypes, GPUs). Only classes whose module's ``apply_rotary_pos_emb`` gives this
rotation (checked on random inputs once per class) are switched, and only calls without a KV cache take the rebound
code (generation keeps transformers' forward as it is). Results equal transformers' to float rounding
(``tests/test_fast_rope.py``).
"""

from __future__ import annotations

import inspect
import sys
import types
from functools import cache, partial
from typing import Any

import torch
from torch import nn

from ilt_hf.class_swap import swap_classes

__all__ = ["RotaryFunction", "fast_apply_rotary_pos_emb", "swap_rotary_attention"]


class RotaryFunction(torch.autograd.Function):
    """``x * cos + rotate_half(x) * sin`` for ``x (..., D)`` and ``cos``, ``sin`` broadcast to it (no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        out = x * cos
        # rotate_half(x) = [-x_hi, x_lo]
        out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1)
        out[..., h:].addcmul_(x[..., :h], sin[..., h:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        h = grad.shape[-1] // 2
        # the transpose of the rotation: out_lo = x_lo c_lo - x_hi s_lo, out_hi = x_hi c_hi + x_lo s_hi
        grad_x = grad * cos
        grad_x[..., h:].addcmul_(grad[..., :h], sin[..., :h], value=-1)
        grad_x[..., :h].addcmul_(grad[..., h:], sin[..., h:])
        return grad_x, None, None


def _fast_ok(*tensors: torch.Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not any(t.requires_grad for t in tensors[2:])
        and tensors[0].shape[-1] % 2 == 0
        and not torch.compiler.is_compiling()
    )


def fast_apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    unsqueeze_dim: int = 1,
    *,
    original: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` (Llama's), through :class:`RotaryFunction` for CPU float32 tensors
    rotated over their whole width; anything else (a partial rotary, other dtypes) goes to ``original`` (default:
    Llama's function)."""
    if cos.shape[-1] != q.shape[-1] or not _fast_ok(q, k, cos, sin):
        if original is None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as original
        return original(q, k, cos, sin, unsqueeze_dim)
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return RotaryFunction.apply(q, cos, sin), RotaryFunction.apply(k, cos, sin)


def _same_rotary(function: Any) -> bool:
    """True when ``function(q, k, cos, sin)`` gives :class:`RotaryFunction`'s result on random float64 inputs
    (what a partial, interleaved or otherwise different rotary would not)."""
    # on the CPU whatever the default device (a model built under torch.device("meta") counts parameters)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=g, device="cpu") for _ in range(2))
    cos, sin = (torch.randn(2, 5, 8, dtype=torch.float64, generator=g, device="cpu") for _ in range(2))
    try:
        with torch.no_grad():
            got = function(q, k, cos, sin)
    except Exception:  # another signature: not this rotary
        return False
    want = (RotaryFunction.apply(q, cos[:, None], sin[:, None]), RotaryFunction.apply(k, cos[:, None], sin[:, None]))
    return (
        isinstance(got, tuple)
        and len(got) == 2
        and all(
            isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b)
            for a, b in zip(got, want, strict=False)
        )
    )


@cache
def _rebound_forward(cls: type) -> Any:
    """``cls.forward``'s undecorated code with ``apply_rotary_pos_emb`` resolved to ours, or None."""
    forward = cls.__dict__.get("forward")
    if forward is None:
        return None
    inner = inspect.unwrap(forward)
    if not isinstance(inner, types.FunctionType) or "apply_rotary_pos_emb" not in inner.__code__.co_names:
        return None
    module = sys.modules.get(inner.__module__)
    if module is None:
        return None
    original = getattr(module, "apply_rotary_pos_emb", None)
    if not _same_rotary(original):
        return None
    fast = partial(fast_apply_rotary_pos_emb, original=original)
    namespace = {**vars(module), "apply_rotary_pos_emb": fast}
    return types.FunctionType(inner.__code__, namespace, inner.__name__, inner.__defaults__, inner.__closure__)


def _forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # a KV cache (generation), anything passed by position past the embeddings, or a graph being compiled:
    # transformers' forward, as is
    if (
        not torch.compiler.is_compiling()
        and len(args) <= 2
        and kwargs.get("cache") is None
        and kwargs.get("past_key_values") is None
    ):
        return _rebound_forward(type(self).__mro__[1])(self, *args, **kwargs)
    return super(type(self), self).forward(*args, **kwargs)


def _wants(layer: nn.Module) -> bool:
    cls = type(layer)
    return cls.__name__.endswith("Attention") and _rebound_forward(cls) is not None


def swap_rotary_attention(model: nn.Module) -> int:
    """Switch every attention layer of ``model`` that applies Llama's rotary embedding; returns how many."""
    return swap_classes(model, _forward, __name__, _wants)

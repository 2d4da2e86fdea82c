"""RMSNorm in fewer passes over memory, for CPU float32 training.

transformers' ``LlamaRMSNorm`` (and every RMSNorm copied from it: Mistral, Qwen2, ...) runs as six elementwise
steps forward (``to``, ``pow``, ``mean``, ``add``/``rsqrt``, two products) and autograd keeps their intermediates and
replays about ten steps backward, each a full pass over a ``(..., D)`` tensor. A bytes decoder normalises
``(words x 33, D)`` rows five times a step, so on a CPU (where such passes are bound by memory bandwidth) these
norms cost more than their arithmetic. :class:`RMSNormFunction` computes the same function with a single reduction
for the scale (``vector_norm``, no squared temporary), two passes forward and five backward, and saves only the
input and the per-row scale.

:func:`swap_rms_norms` switches a model's RMSNorm layers to it by swapping their class in place (same parameters,
state dict and ``isinstance``). A layer is switched only when its class's ``forward`` is, token for token, Llama's
(so Gemma's ``1 + weight`` norm and any other variant keep theirs). The switched layer steps aside (runs
transformers' forward) for anything but CPU float32 tensors, and while ``torch.compile`` traces. Its results equal
transformers' to float rounding (``tests/test_fast_norm.py``).
"""

from __future__ import annotations

import inspect
import logging
import textwrap
import types
from functools import cache
from typing import Any

import torch
from torch import nn

from ilt_hf.class_swap import swap_classes

__all__ = ["RMSNormFunction", "llama_norm_maths_match", "rms_norm_is_llamas", "swap_rms_norms"]

logger = logging.getLogger(__name__)


class RMSNormFunction(torch.autograd.Function):
    """``y = weight * x / sqrt(mean(x**2, -1) + eps)`` for ``x (..., D)``, ``weight (D,)``; float32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        d = x.shape[-1]
        # 1 / rms (..., 1): one reduction pass, no (..., D) temporary
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).div_(d**0.5).square_().add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        xhat = x * rstd  # (..., D), the normalised input
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * xhat).reshape(-1, d).sum(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            dxhat = grad * weight
            # d/dx of x * rstd(x): rstd * (dxhat - xhat * mean(dxhat * xhat))
            mean = torch.linalg.vecdot(dxhat, xhat).unsqueeze_(-1).div_(d)
            grad_x = dxhat.sub_(xhat.mul_(mean)).mul_(rstd)
        return grad_x, grad_w, None


def _forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (
        hidden_states.device.type == "cpu"
        and hidden_states.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.compiler.is_compiling()
    ):
        return RMSNormFunction.apply(hidden_states, weight, float(self.variance_epsilon))
    return super(type(self), self).forward(hidden_states)


def _source(function: Any) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None


@cache
def _llama_forward_source() -> str | None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return _source(LlamaRMSNorm.forward)


@cache
def llama_norm_maths_match() -> bool:
    """True when the installed ``LlamaRMSNorm`` computes what :class:`RMSNormFunction` does (checked on random
    float32 rows once per process): a release that changes its maths turns the swap off (a logged line)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    # the forward on plain CPU tensors, no module: a model being built may have every new parameter on "meta"
    weight = torch.rand(16, generator=g, device="cpu") + 0.5
    x = torch.randn(3, 16, generator=g, device="cpu") * 3
    norm = types.SimpleNamespace(weight=weight, variance_epsilon=1e-5)
    with torch.no_grad():
        got = LlamaRMSNorm.forward(norm, x)  # type: ignore[arg-type]
        same = torch.allclose(got, RMSNormFunction.apply(x, weight, 1e-5), rtol=1e-5, atol=1e-6)
    if not same:
        logger.warning("ilt_hf.fast_norm: transformers' LlamaRMSNorm computes another function than this swap was "
                       "written for (transformers 5.x): its own forward runs")  # fmt: skip
    return same


@cache
def rms_norm_is_llamas(cls: type) -> bool:
    """True when ``cls.forward`` is transformers' ``LlamaRMSNorm.forward``, source for source, and Llama's maths are
    still :class:`RMSNormFunction`'s (:func:`llama_norm_maths_match`)."""
    llama = _llama_forward_source()
    return (
        llama is not None
        and "forward" in cls.__dict__
        and _source(cls.__dict__["forward"]) == llama
        and llama_norm_maths_match()
    )


def _wants(layer: nn.Module) -> bool:
    cls = type(layer)
    return (
        cls.__name__.endswith("RMSNorm")
        and rms_norm_is_llamas(cls)
        and isinstance(getattr(layer, "weight", None), torch.Tensor)
        and hasattr(layer, "variance_epsilon")
    )


def swap_rms_norms(model: nn.Module) -> int:
    """Switch every RMSNorm of ``model`` whose forward is Llama's to :class:`RMSNormFunction`; returns how many."""
    return swap_classes(model, _forward, __name__, _wants)

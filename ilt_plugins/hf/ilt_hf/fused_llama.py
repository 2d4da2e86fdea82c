"""The fused Llama byte step: its weights and its maths, for greedy decoding without ``transformers.generate``.

Llama-family decoders (``model_type`` llama, no biases, plain RoPE, SiLU MLP; e.g. tiny-lm) run a hand-written step
with q/k/v and gate/up fused into one matrix each (:class:`FusedLlamaWeights`) and ``F.rms_norm``: about half the
calls of the transformers layer. On a CPU in float32 its products with few rows go through numpy (OpenBLAS's
single-threaded small-matrix kernels, faster than MKL's for so few rows on some CPUs;
:data:`NUMPY_MAX_MULTIPLY_ADDS`); larger ones, and any other device or dtype, through torch. The loop that runs the
step is :mod:`ilt_hf.byte_loop`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ilt_core.modeling.products import numpy_matmul
from ilt_hf.fused_weights import FusedWeights

__all__ = [
    "Dims",
    "FusedLlamaWeights",
    "attend_prefix",
    "attend_static",
    "fused_llama_supported",
    "numpy_layers",
    "rope",
    "torch_layers",
]


def fused_llama_supported(config: Any) -> bool:
    """True when the config is a plain Llama the fused step reproduces exactly."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    return (
        getattr(config, "model_type", None) == "llama"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", None) == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and rope_type == "default"
    )


#: Products of at most this many multiply-adds (rows x inner x columns) with float32 CPU operands go through numpy
#: (OpenBLAS) instead of torch (MKL), when :data:`NUMPY_PRODUCTS` is on. A byte step's products have a few rows
#: (4 x 256 by 256 x 768 at the reference setup), and on some CPUs MKL's kernels for so few rows are slower than
#: OpenBLAS's small-matrix kernels (``benchmarks/bench_generation.py --decoder`` compares them); OpenBLAS takes that
#: single-threaded small-matrix path up to 100^3 multiply-adds and starts its own threads above it.
NUMPY_MAX_MULTIPLY_ADDS = 1_000_000
#: Whether the fused Llama loop sends its small CPU products to numpy (see :data:`NUMPY_MAX_MULTIPLY_ADDS`).
NUMPY_PRODUCTS = True


class FusedLlamaWeights(FusedWeights):
    """Per layer: input norm, q/k/v in one matrix, o (transposed), post-attention norm, gate/up in one matrix,
    down (transposed): the transposed ones are the second operand of an ``addmm`` that adds the residual.

    For float32 CPU weights also ``numpy_layers`` (per layer q/k/v, o, gate, up, down as C-ordered ``(in, out)``
    numpy arrays) and ``numpy_head`` ``(D, V)``: copies (the decoder's size again) for the numpy products, made only
    for a decoder whose one-row products fit :data:`NUMPY_MAX_MULTIPLY_ADDS` (a larger one never uses them).
    """

    def build(self, lm: Any) -> None:
        # byte loops kept for reuse hold these weights (a captured graph, their addresses): dropped with them
        self.loops: OrderedDict[tuple, Any] = OrderedDict()  # byte_loop.ByteLoop by shape
        self.numpy_layers: list[tuple[np.ndarray, ...]] = []
        self.numpy_head: np.ndarray | None = None
        head = lm.get_output_embeddings().weight
        cfg = lm.config
        width = int(cfg.hidden_size)
        one_row = width * max(int(cfg.intermediate_size), 3 * width)  # about the largest product of one row
        if head.device.type == "cpu" and head.dtype == torch.float32 and one_row <= NUMPY_MAX_MULTIPLY_ADDS:

            def as_numpy(w: torch.Tensor) -> np.ndarray:
                return w.detach().t().contiguous().numpy()  # (in, out), C-ordered: OpenBLAS's fast layout

            for layer in lm.model.layers:
                a, m = layer.self_attn, layer.mlp
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                self.numpy_layers.append(
                    (as_numpy(qkv), as_numpy(a.o_proj.weight), as_numpy(m.gate_proj.weight))
                    + (as_numpy(m.up_proj.weight), as_numpy(m.down_proj.weight))
                )
            self.numpy_head = as_numpy(head)
        layers = []
        for layer in lm.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
            layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    qkv,
                    a.o_proj.weight.detach().t(),  # (H * hd, D): x + att @ this in one addmm
                    layer.post_attention_layernorm.weight.detach(),
                    gate_up,
                    m.down_proj.weight.detach().t(),  # (I, D)
                )
            )
        self.layers = layers


@dataclass(frozen=True)
class Dims:
    """The sizes a byte step reads: width, heads, key/value heads, head size, q and k widths, MLP width, norm eps."""

    D: int
    H: int
    Hkv: int
    hd: int
    Q: int
    K: int
    inter: int
    eps: float
    gqa: bool


def rope(qk: torch.Tensor, c: torch.Tensor, s: torch.Tensor, d: Dims) -> torch.Tensor:
    """RoPE on q and k side by side ``(..., Q + K)``: a multiply, the halves swapped, one ``addcmul``."""
    swapped = qk.unflatten(-1, (d.H + d.Hkv, 2, d.hd // 2)).flip(-2).flatten(-3)  # per head [x2, x1]
    return torch.addcmul(qk * c, swapped, s)


def attend_prefix(
    y: torch.Tensor,
    i: int,
    n: int,
    L: int,
    start: int,
    c: torch.Tensor,
    s: torch.Tensor,
    keys: list,
    values: list,
    d: Dims,
) -> torch.Tensor:
    """The prefix: RoPE on q and k of ``y`` ``(n * L, Q + 2K)``, its keys/values into columns ``start .. start + L``
    of layer ``i``'s cache, causal attention over the columns filled so far: ``(n * L, Q)``."""
    Q, K, hd, end = d.Q, d.K, d.hd, start + L
    y = y.view(n, L, -1)
    qk = rope(y[..., : Q + K], c, s, d)  # (n, L, Q + K)
    keys[i][:, :, start:end] = qk[..., Q:].view(n, L, d.Hkv, hd).transpose(1, 2)
    values[i][:, :, start:end] = y[..., Q + K : Q + K + K].view(n, L, d.Hkv, hd).transpose(1, 2)
    q = qk[..., :Q].view(n, L, d.H, hd).transpose(1, 2)
    att = F.scaled_dot_product_attention(
        q, keys[i][:, :, :end], values[i][:, :, :end], is_causal=L > 1, enable_gqa=d.gqa
    )
    return att.transpose(1, 2).reshape(n * L, Q)


def attend_static(
    y: torch.Tensor,
    i: int,
    pos: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    visible: torch.Tensor,
    keys: list,
    values: list,
    d: Dims,
) -> torch.Tensor:
    """One byte per row, shapes independent of the position: ``y`` ``(N, Q + 2K)``; its key/value written at column
    ``pos`` ``(1,)`` (a device tensor) of layer ``i``'s whole cache, attention over every column with ``visible``
    ``(1, 1, 1, total)`` (columns up to ``pos``): ``(N, Q)``."""
    Q, K, hd, N = d.Q, d.K, d.hd, y.shape[0]
    qk = rope(y[:, : Q + K], c, s, d)  # (N, Q + K)
    keys[i].index_copy_(2, pos, qk[:, Q:].view(N, d.Hkv, 1, hd))
    values[i].index_copy_(2, pos, y[:, Q + K : Q + K + K].view(N, d.Hkv, 1, hd))
    q = qk[:, :Q].view(N, d.H, 1, hd)
    att = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=visible, enable_gqa=d.gqa)
    return att.view(N, Q)


def torch_layers(x: torch.Tensor, fused: Any, attend: Any, d: Dims) -> torch.Tensor:
    """Every layer for tokens ``x`` ``(rows, D)`` with torch's products; ``attend(y, layer)`` -> ``(rows, Q)``."""
    D, eps, inter = d.D, d.eps, d.inter
    for i, (w_in, w_qkv, w_o_t, w_post, w_gu, w_down_t) in enumerate(fused.layers):
        y = F.linear(F.rms_norm(x, (D,), w_in, eps), w_qkv)  # q, k, v
        x = torch.addmm(x, attend(y, i), w_o_t)
        gu = F.linear(F.rms_norm(x, (D,), w_post, eps), w_gu)
        gate = F.silu(gu[:, :inter], inplace=True).mul_(gu[:, inter:])
        x = torch.addmm(x, gate, w_down_t)
    return x


def numpy_layers(x: torch.Tensor, fused: Any, numpy_layers: list, attend: Any, d: Dims) -> torch.Tensor:
    """:func:`torch_layers` with the products in numpy (:data:`NUMPY_MAX_MULTIPLY_ADDS`); gate and up apart."""
    D, eps = d.D, d.eps
    for i, ((w_in, _, _, w_post, _, _), (w_qkv, w_o, w_gate, w_up, w_down)) in enumerate(
        zip(fused.layers, numpy_layers, strict=True)
    ):
        y = numpy_matmul(F.rms_norm(x, (D,), w_in, eps), w_qkv)
        x = numpy_matmul(attend(y, i), w_o).add_(x)
        h = F.rms_norm(x, (D,), w_post, eps)
        gate = F.silu(numpy_matmul(h, w_gate), inplace=True).mul_(numpy_matmul(h, w_up))
        x = numpy_matmul(gate, w_down).add_(x)
    return x

"""The latent transformer's cached decoding step for GPT-NeoX without the transformers layers.

At generation time the latent runs one new unit per row over its KV cache: a handful of rows (4 at the reference
protocol) through 6 layers of 512-wide products, so the step is bound by per-call overhead, not arithmetic. The
transformers forward builds a 4-D mask from the 2-D padding mask, goes through its output-capturing and
keyword-merging decorators, and runs many small calls per layer. This step reads and writes the same
``DynamicCache`` (so the loop's ``select_cache`` / ``crop_cache_left`` and a later transformers call see the same
cache) and runs per layer: the input norm, q/k/v in one product, RoPE on the rotary part of q and k together (a
multiply, the halves swapped, one ``addcmul``), two cache appends, attention with the padding mask as a boolean
mask (none when no row is padded), the output projection and the MLP's second product with the residual inside
``addmm``, and their biases as one precomputed sum.

It runs only in eval mode with gradients off, for one new position per row over a plain ``DynamicCache`` or a
filled ``StaticCache`` (generation's ``cache_implementation="static"``: its next column written in place; on a CUDA
device the step is captured once per cache as a CUDA graph and replayed, :data:`STEP_GRAPHS`); anything
else (training, a prefill, another cache or attention implementation) takes the transformers forward. The result
equals that forward to float rounding (``tests/test_fast_neox.py``); ``benchmarks/bench_generation.py --parts``
times both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ilt_hf.cuda_graphs import capture
from ilt_hf.fused_weights import FusedWeights

__all__ = ["FusedNeoXWeights", "fused_neox_supported", "neox_cached_step"]

logger = logging.getLogger(__name__)

# attention implementations whose results the step reproduces (eager to float rounding: its softmax is float32)
_ATTENTION = frozenset({"sdpa", "eager"})


def fused_neox_supported(model: nn.Module) -> bool:
    """True for a transformers ``GPTNeoXModel`` with plain RoPE and SDPA or eager attention."""
    cfg = getattr(model, "config", None)
    layers = getattr(model, "layers", None)
    if cfg is None or not layers:
        return False
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    first = layers[0]
    return (
        getattr(cfg, "model_type", None) == "gpt_neox"
        and rope_type == "default"
        and getattr(cfg, "_attn_implementation", None) in _ATTENTION
        and hasattr(model, "rotary_emb")
        and hasattr(model, "final_layer_norm")
        and all(hasattr(getattr(first, "attention", None), n) for n in ("query_key_value", "dense", "rotary_ndims"))
        and all(hasattr(getattr(first, "mlp", None), n) for n in ("dense_h_to_4h", "dense_4h_to_h", "act"))
    )


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias.detach()
    return linear.weight.new_zeros(linear.weight.shape[0])


class FusedNeoXWeights(FusedWeights):
    """Per layer: the two norms, q/k/v and its bias, the output projection (transposed) and its bias, the MLP's first
    product and bias, its second (transposed) and bias, and the sum of the two output biases (parallel residual)."""

    def build(self, model: Any) -> None:
        layers = []
        for layer in model.layers:
            a, m = layer.attention, layer.mlp
            layers.append(
                (
                    layer.input_layernorm,
                    a.query_key_value.weight.detach(),  # (3 * D, D), per head [q, k, v]
                    _bias(a.query_key_value),
                    a.dense.weight.detach().t(),  # (D, D): x + att @ this in one addmm
                    _bias(a.dense),
                    layer.post_attention_layernorm,
                    m.dense_h_to_4h.weight.detach(),
                    _bias(m.dense_h_to_4h),
                    m.dense_4h_to_h.weight.detach().t(),  # (I, D)
                    _bias(m.dense_4h_to_h),
                    _bias(a.dense) + _bias(m.dense_4h_to_h),
                    m.act,
                    bool(layer.use_parallel_residual),
                )
            )
        self.layers = layers


def _norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _plain_cache_layers(cache: Any, count: int, rows: int, columns: int) -> tuple[list[Any], bool] | None:
    """The cache's layers and whether they are static, when each is a filled ``DynamicLayer`` of ``rows`` rows and
    ``columns - 1`` positions, or a filled ``StaticLayer`` of ``rows`` rows and ``columns`` columns; else None."""
    from transformers.cache_utils import DynamicLayer, StaticLayer  # imported once a component is built

    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != count:
        return None
    static = all(type(layer) is StaticLayer for layer in layers)
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if type(layer) is not (StaticLayer if static else DynamicLayer) or keys is None or keys.ndim != 4:
            return None
        if keys.shape[0] != rows or keys.shape[-2] != (columns if static else columns - 1):
            return None
    return list(layers), static


@torch.no_grad()
def neox_cached_step(
    model: Any,
    fused: FusedNeoXWeights,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> torch.Tensor | None:
    """One new position per row over the cache: the final-normed hidden states ``(N, 1, D)``, or None.

    ``inputs_embeds`` ``(N, 1, D)`` in the model's dtype; ``attention_mask`` ``(N, P + 1)`` (1 real, 0 left padding;
    ``P`` cached positions); ``position_ids`` ``(N, 1)``; ``cache`` a ``DynamicCache`` of ``P`` positions, appended
    to in place as the transformers forward would; or a ``StaticCache`` of ``P + 1`` columns (``attention_mask``
    covers them all, 0 for those not yet written), whose next column is written in place: the step's shapes then
    do not depend on the position and nothing is read back to the host. None (nothing touched) when the cache is
    neither, filled, of that size: the caller then runs the transformers forward.
    """
    N, L, D = inputs_embeds.shape
    if L != 1 or attention_mask.ndim != 2 or attention_mask.shape[0] != N:
        return None
    found = _plain_cache_layers(cache, len(model.layers), N, attention_mask.shape[1])
    if found is None:
        return None
    layers, static = found
    fused.refresh(model)
    if static and inputs_embeds.is_cuda and STEP_GRAPHS:
        graphed = _graphed(model, fused, layers, inputs_embeds, attention_mask, position_ids, cache)
        if graphed is not None:
            return graphed
    return _step(model, fused, layers, static, inputs_embeds, attention_mask, position_ids)


#: Whether the step over a static cache on a CUDA device is replayed as a CUDA graph (captured once per cache).
STEP_GRAPHS = True


@dataclass
class _StepGraph:
    """One captured step over one static cache: its input buffers, its output, and what it was captured for."""

    graph: Any
    embeds: torch.Tensor  # (N, 1, D)
    positions: torch.Tensor  # (N, 1)
    out: torch.Tensor  # (N, 1, D)
    mask: torch.Tensor  # the attention mask it reads (the caller's, updated in place between steps)
    weights: Any  # the fused weights' key when captured

    def fits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, fused: FusedNeoXWeights) -> bool:
        return (
            attention_mask is self.mask
            and inputs_embeds.shape == self.embeds.shape
            and inputs_embeds.dtype == self.embeds.dtype
            and fused.key == self.weights
        )


def _graphed(
    model: Any,
    fused: FusedNeoXWeights,
    layers: list[Any],
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> torch.Tensor | None:
    """The static step as a CUDA graph kept on the cache (captured at its first step), or None where the capture
    fails (the caller runs it eagerly; said once per cache)."""
    step: _StepGraph | None = getattr(cache, "_ilt_step_graph", None)
    if step is None or not step.fits(inputs_embeds, attention_mask, fused):
        if getattr(cache, "_ilt_step_graph_failed", False) or torch.cuda.is_current_stream_capturing():
            return None
        try:
            step = _capture(model, fused, layers, inputs_embeds, attention_mask, position_ids)
        except Exception as exc:  # a capture the device refuses: the eager step gives the same states
            cache._ilt_step_graph_failed = True
            logger.warning("ilt_hf: the latent's static step could not be captured as a CUDA graph: %s", exc)
            return None
        cache._ilt_step_graph = step
    step.embeds.copy_(inputs_embeds)
    step.positions.copy_(position_ids)
    step.graph.replay()
    return step.out.clone()


def _capture(
    model: Any,
    fused: FusedNeoXWeights,
    layers: list[Any],
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> _StepGraph:
    """Capture :func:`_step` over a static cache (:func:`ilt_hf.cuda_graphs.capture`): its one warm-up step writes a
    column the first replay writes again with the same inputs; the cache's lengths are put back after it."""
    embeds, positions = inputs_embeds.clone(), position_ids.clone()
    lengths = [layer.cumulative_length.clone() for layer in layers]
    graph, out = capture(lambda: _step(model, fused, layers, True, embeds, attention_mask, positions), embeds.device)
    for layer, n in zip(layers, lengths, strict=True):  # the warm-up step's advance undone
        layer.cumulative_length.copy_(n)
    return _StepGraph(graph, embeds, positions, out, attention_mask, fused.key)


def _step(
    model: Any,
    fused: FusedNeoXWeights,
    layers: list[Any],
    static: bool,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """The step itself (:func:`neox_cached_step`, its checks done). Over a static cache nothing in it is read back
    to the host or made from host values, so it can be captured as one CUDA graph."""
    N, _, D = inputs_embeds.shape
    cfg = model.config
    H = int(cfg.num_attention_heads)
    hd = D // H
    r = int(model.layers[0].attention.rotary_ndims)
    scale = hd**-0.5
    x = inputs_embeds.reshape(N, D)
    cos, sin = model.rotary_emb(inputs_embeds, position_ids)  # (N, 1, r), as the transformers forward computes them
    cos = cos.view(N, 1, 1, r)
    # rotate_half(x) * sin, per vector [-x2 * s1, x1 * s2], is the halves swapped times [-s1, s2] (negation is exact)
    halves = sin.view(N, 1, 2, r // 2)
    sin = torch.cat([halves[:, :, :1].neg(), halves[:, :, 1:]], dim=2).view(N, 1, 1, r)
    # the padding mask as SDPA's boolean mask (N, 1, 1, P + 1); none when no row is padded, as transformers passes
    # (a static cache always has columns to mask, and asking would read the device)
    mask = attention_mask.bool()[:, None, None, :] if static or not bool(attention_mask.all()) else None
    for layer, (ln1, w_qkv, b_qkv, w_o_t, b_o, ln2, w_1, b_1, w_2_t, b_2, b_out, act, parallel) in zip(
        layers, fused.layers, strict=True
    ):
        y = F.linear(_norm(x, ln1), w_qkv, b_qkv).view(N, H, 3, hd)  # per head q, k, v
        rot = y[:, :, :2, :r]  # the rotary part of q and k: (N, H, 2, r)
        swapped = rot.unflatten(-1, (2, r // 2)).flip(-2).flatten(-2)  # per vector [x2, x1]
        rot.copy_(torch.addcmul(rot * cos, swapped, sin))
        if static:  # column cumulative_length of the preallocated keys/values, addressed on the device
            column = layer.cumulative_length.view(1)
            layer.keys.index_copy_(2, column, y[:, :, 1, None])
            layer.values.index_copy_(2, column, y[:, :, 2, None])
            layer.cumulative_length.add_(1)
        else:
            layer.keys = torch.cat([layer.keys, y[:, :, 1, None]], dim=-2)  # (N, H, P + 1, hd)
            layer.values = torch.cat([layer.values, y[:, :, 2, None]], dim=-2)
        att = F.scaled_dot_product_attention(y[:, :, 0, None], layer.keys, layer.values, attn_mask=mask, scale=scale)
        att = att.reshape(N, D)  # (N, H, 1, hd) laid out as (N, 1, H, hd): one position
        if parallel:  # x + attention + mlp(norm(x))
            g = act(F.linear(_norm(x, ln2), w_1, b_1))
            x = torch.addmm(torch.addmm(x, att, w_o_t), g, w_2_t).add_(b_out)
        else:  # a = x + attention; a + mlp(norm(a))
            x = torch.addmm(x, att, w_o_t).add_(b_o)
            g = act(F.linear(_norm(x, ln2), w_1, b_1))
            x = torch.addmm(x, g, w_2_t).add_(b_2)
    return _norm(x, model.final_layer_norm).view(N, 1, D)

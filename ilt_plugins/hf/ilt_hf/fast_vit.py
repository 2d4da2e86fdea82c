"""A ViT forward for inference without autograd: fewer, larger calls than the transformers layers.

At generation time the image encoder reads one word image per row and step, a handful of patches: the time goes to
per-call overhead of a dozen small operations per layer, not to arithmetic. This step runs the patch embedding as one
matrix product (a convolution whose stride is its kernel is a reshape and a product), q/k/v as one matrix, the
interpolated position embeddings cached per patch grid, and reads only the CLS row through the final layer norm.
It is used only in eval mode with gradients off; the result equals the transformers forward to float rounding
(``tests/test_fast_vit.py``), and ``benchmarks/bench_generation.py --vit`` times both.

:func:`packed_vit_layer` is one layer of the packed word images' training forward (``HFVisionEncoder.encode_packed``)
with q/k/v as one product of the concatenated weights (autograd through the concatenation): one call where the
transformers layer makes three narrow ones, forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ilt_core.modeling.products import linear
from ilt_hf.fused_weights import FusedWeights

__all__ = ["FusedViTWeights", "fused_vit_forward", "fused_vit_supported", "packed_vit_layer"]


def fused_vit_supported(model: nn.Module) -> bool:
    """True for a transformers ``ViTModel`` (pre-norm layers, exact GELU, no pooler) this step reproduces."""
    cfg = getattr(model, "config", None)
    layers = getattr(model, "layers", None)
    if cfg is None or layers is None or len(layers) == 0:
        return False
    first = layers[0]
    return (
        getattr(cfg, "model_type", None) == "vit"
        and getattr(cfg, "hidden_act", None) == "gelu"
        and getattr(model, "pooler", None) is None
        and all(hasattr(getattr(first, "attention", None), n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and all(hasattr(getattr(first, "mlp", None), n) for n in ("fc1", "fc2"))
        and hasattr(first, "layernorm_before")
        and hasattr(first, "layernorm_after")
        and hasattr(first, "dropout")
        and all(hasattr(first.attention, n) for n in ("num_attention_heads", "attention_dropout", "scaling"))
    )


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias.detach()
    return linear.weight.new_zeros(linear.weight.shape[0])


class FusedViTWeights(FusedWeights):
    """Patch projection as a matrix, and per layer: norm, q/k/v in one matrix (and bias), o, norm, fc1, fc2."""

    def build(self, model: Any) -> None:
        conv = model.embeddings.patch_embeddings.projection
        self.patch = conv.weight.detach().reshape(conv.weight.shape[0], -1)  # (D, C * p * p)
        self.patch_bias = _bias(conv)
        self.positions: dict[tuple[int, int], torch.Tensor] = {}  # (H, W) -> (1, 1 + patches, D)
        layers = []
        for layer in model.layers:
            a, m = layer.attention, layer.mlp
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            qkv_bias = torch.cat([_bias(a.q_proj), _bias(a.k_proj), _bias(a.v_proj)])
            layers.append(
                (
                    layer.layernorm_before,
                    qkv,
                    qkv_bias,
                    a.o_proj.weight.detach(),
                    _bias(a.o_proj),
                    layer.layernorm_after,
                    m.fc1.weight.detach(),
                    _bias(m.fc1),
                    m.fc2.weight.detach(),
                    _bias(m.fc2),
                )
            )
        self.layers = layers


def _norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


@torch.no_grad()
def fused_vit_forward(model: Any, fused: FusedViTWeights, pixels: torch.Tensor, interpolate: bool) -> torch.Tensor:
    """The final-layer-normed CLS vector ``(N, D)`` of normalised pixels ``(N, C, H, W)`` (H, W multiples of the
    patch size), as ``model(pixels, interpolate_pos_encoding=interpolate).last_hidden_state[:, 0]``."""
    fused.refresh(model)
    cfg = model.config
    N, C, H, W = pixels.shape
    p = int(cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0])
    heads = int(cfg.num_attention_heads)
    gh, gw = H // p, W // p
    x = pixels.reshape(N, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(N, gh * gw, C * p * p)
    x = F.linear(x, fused.patch, fused.patch_bias)  # (N, patches, D)
    D = x.shape[-1]
    emb = model.embeddings
    positions = fused.positions.get((H, W))
    if positions is None:
        if interpolate:
            positions = emb.interpolate_pos_encoding(x.new_empty(1, 1 + gh * gw, D), H, W).detach()
        else:
            positions = emb.position_embeddings.detach()  # transformers insists on the configured size
        fused.positions[(H, W)] = positions
    x = torch.cat([emb.cls_token.detach().expand(N, -1, -1), x], dim=1) + positions
    L, hd = x.shape[1], D // heads
    for ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_1, b_1, w_2, b_2 in fused.layers:
        q, k, v = F.linear(_norm(x, ln1), w_qkv, b_qkv).view(N, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, hd); scale hd ** -0.5 as ViT's
        x = x + F.linear(att.transpose(1, 2).reshape(N, L, D), w_o, b_o)
        x = x + F.linear(F.gelu(F.linear(_norm(x, ln2), w_1, b_1)), w_2, b_2)
    return _norm(x[:, 0], model.layernorm)


def packed_vit_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``layer(hidden, mask)`` of a transformers ``ViTLayer`` (:func:`fused_vit_supported`, SDPA attention) for
    ``hidden`` ``(R, S, D)`` and a boolean ``mask`` ``(R, 1, S, S)``, with q/k/v as one product;
    trains (dropout and gradients as the layer's own). The layer's own linear layers decide where each product runs
    (``ilt_core.modeling.products``)."""
    a = layer.attention
    R, S, D = hidden.shape
    heads = a.num_attention_heads
    x = layer.layernorm_before(hidden)
    w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])  # (3D, D)
    projections = (a.q_proj, a.k_proj, a.v_proj)
    b = None
    if any(m.bias is not None for m in projections):  # a missing one is a zero bias
        b = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in projections])
    qkv = linear(x, w, b, like=a.q_proj)  # (R, S, 3D)
    q, k, v = qkv.view(R, S, 3, heads, D // heads).permute(2, 0, 3, 1, 4)  # each (R, heads, S, D / heads)
    dropout = a.attention_dropout if a.training else 0.0
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=a.scaling)
    hidden = layer.dropout(a.o_proj(att.transpose(1, 2).reshape(R, S, D))) + hidden
    return layer.dropout(layer.mlp(layer.layernorm_after(hidden))) + hidden

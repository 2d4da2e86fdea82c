"""A BERT encoder forward for inference without the transformers layers: fewer, larger calls.

At generation time the bytes encoder reads the few new units of a step (4 rows of about a dozen bytes at the
reference protocol): its time goes to per-call overhead (the 4-D mask built from the 2-D one, the output-capturing
decorators, many small calls per layer), not to arithmetic. This forward adds the token-type and position
embeddings as one precomputed table, runs q/k/v as one matrix, the padding mask as SDPA's boolean mask (none when no
row is padded), and each residual inside ``addmm``. It is used only in eval mode with gradients off; the result
equals the transformers forward to float rounding (``tests/test_fast_bert.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ilt_hf.fused_weights import FusedWeights

__all__ = ["FusedBertWeights", "fused_bert_forward", "fused_bert_supported"]

_ATTENTION = frozenset({"sdpa", "eager"})


def fused_bert_supported(model: nn.Module) -> bool:
    """True for a transformers ``BertModel`` encoder (bidirectional, absolute positions, no cross-attention)."""
    cfg = getattr(model, "config", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    emb = getattr(model, "embeddings", None)
    if cfg is None or not layers or emb is None:
        return False
    first = layers[0]
    return (
        getattr(cfg, "model_type", None) == "bert"
        and not getattr(cfg, "is_decoder", False)
        and not getattr(cfg, "add_cross_attention", False)
        and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
        and getattr(cfg, "_attn_implementation", None) in _ATTENTION
        and all(hasattr(emb, n) for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"))
        and all(hasattr(getattr(first.attention, "self", None), n) for n in ("query", "key", "value"))
        and hasattr(first, "intermediate")
        and hasattr(first, "output")
    )


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias.detach()
    return linear.weight.new_zeros(linear.weight.shape[0])


class FusedBertWeights(FusedWeights):
    """Token-type 0 plus every position as one table ``(P, D)``; per layer: q/k/v in one matrix and bias, the output
    projection (transposed) and bias, its norm, the intermediate product and activation, the output (transposed) and
    bias, its norm."""

    def build(self, model: Any) -> None:
        emb = model.embeddings
        # token type 0 (BertModel's default) added to each position's vector: one add per call instead of two
        self.positions = (emb.token_type_embeddings.weight[0] + emb.position_embeddings.weight).detach()
        layers = []
        for layer in model.encoder.layer:
            a = layer.attention
            s = a.self
            layers.append(
                (
                    torch.cat([s.query.weight, s.key.weight, s.value.weight]).detach(),
                    torch.cat([_bias(s.query), _bias(s.key), _bias(s.value)]),
                    a.output.dense.weight.detach().t(),  # (D, D): x + att @ this in one addmm
                    _bias(a.output.dense),
                    a.output.LayerNorm,
                    layer.intermediate.dense.weight.detach(),
                    _bias(layer.intermediate.dense),
                    layer.intermediate.intermediate_act_fn,
                    layer.output.dense.weight.detach().t(),  # (I, D)
                    _bias(layer.output.dense),
                    layer.output.LayerNorm,
                )
            )
        self.layers = layers


def _norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


@torch.no_grad()
def fused_bert_forward(
    model: Any, fused: FusedBertWeights, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The last hidden states ``(N, T, D)`` of ids ``(N, T)`` under a padding mask ``(N, T)`` (1 real), as
    ``model(input_ids=..., attention_mask=...).last_hidden_state`` (token types 0, positions from 0)."""
    fused.refresh(model)
    N, T = input_ids.shape
    cfg = model.config
    D, H = int(cfg.hidden_size), int(cfg.num_attention_heads)
    hd = D // H
    emb = model.embeddings
    x = emb.word_embeddings(input_ids) + fused.positions[:T]  # the module: its hooks still see the ids
    x = _norm(x, emb.LayerNorm).view(N * T, D)
    # the padding mask as SDPA's boolean mask (N, 1, 1, T), always: asking whether any row is padded would read the
    # device once per call
    mask = attention_mask.bool()[:, None, None, :]
    scale = hd**-0.5
    for w_qkv, b_qkv, w_o_t, b_o, ln1, w_i, b_i, act, w_out_t, b_out, ln2 in fused.layers:
        q, k, v = F.linear(x, w_qkv, b_qkv).view(N, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (N, H, T, hd)
        x = _norm(torch.addmm(x, att.transpose(1, 2).reshape(N * T, D), w_o_t).add_(b_o), ln1)
        g = act(F.linear(x, w_i, b_i))
        x = _norm(torch.addmm(x, g, w_out_t).add_(b_out), ln2)
    return x.view(N, T, D)

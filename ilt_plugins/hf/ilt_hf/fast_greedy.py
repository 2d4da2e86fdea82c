"""Greedy byte decoding without ``transformers.generate``: a short loop over a preallocated KV cache.

A bytes decoder writes a few dozen bytes per unit, and at these sizes (a 2-4 layer decoder, 256 wide) every step is
bound by per-call overhead rather than arithmetic: ``generate`` spends more time preparing inputs, masks and its
cache than in the matrices. Two paths, both giving the same ids as ``generate(do_sample=False)``:

- Llama-family decoders (``model_type`` llama, no biases, plain RoPE, SiLU MLP; e.g. tiny-lm) run a hand-written
  step with q/k/v and gate/up fused into one matrix each, a static KV cache and ``F.rms_norm``: about half the
  calls of the transformers layer. Finished rows leave the batch.
- Any other causal LM runs its own forward in a loop with a ``DynamicCache`` (the ``generate`` overhead goes, the
  model's own stays).

``benchmarks/bench_generation.py`` measures the effect; ``tests/test_fast_greedy.py`` checks equality with
``generate`` for batches, suppressed tokens and early ``eos``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ilt_hf.fused_weights import FusedWeights

__all__ = ["greedy_decode", "fused_llama_supported", "FusedLlamaWeights"]


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


class FusedLlamaWeights(FusedWeights):
    """Per layer: input norm, q/k/v in one matrix, o, post-attention norm, gate/up in one matrix, down."""

    def build(self, lm: Any) -> None:
        layers = []
        for layer in lm.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
            layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    qkv,
                    a.o_proj.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                    gate_up,
                    m.down_proj.weight.detach(),
                )
            )
        self.layers = layers


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass(frozen=True)
class _Rules:
    """What both loops obey: how many ids to write, the special ids, the barred ids, the minimum before ``eos``."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    suppress: list[int]
    min_new_tokens: int

    def bar(self, logits: torch.Tensor, t: int) -> None:
        """Bar ``suppress`` (and ``eos`` before ``min_new_tokens``) at step ``t`` in place, as transformers does."""
        if self.suppress:
            logits[:, self.suppress] = float("-inf")
        if t < self.min_new_tokens:
            logits[:, self.eos_id] = float("-inf")


@torch.no_grad()
def _fused_llama_greedy(lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: _Rules) -> torch.Tensor:
    """The fused Llama loop: ids ``(N, max_new_tokens)``; keys/values ``(n, Hkv, T0 + max_new_tokens, hd)``
    preallocated per layer, ``n`` the rows still writing (finished rows are dropped from every tensor)."""
    cfg = lm.config
    max_new_tokens, eos_id = rules.max_new_tokens, rules.eos_id
    fused.refresh(lm)
    N, T0, D = embeds.shape
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or D // H
    eps = float(cfg.rms_norm_eps)
    total = T0 + max_new_tokens
    dtype = lm.model.embed_tokens.weight.dtype
    device = embeds.device
    positions = torch.arange(total, device=device)[None]
    cos, sin = lm.model.rotary_emb(embeds.to(dtype), positions)  # (1, total, hd)
    cos, sin = cos[0].to(dtype), sin[0].to(dtype)
    keys = [embeds.new_empty(N, Hkv, total, hd, dtype=dtype) for _ in fused.layers]
    values = [embeds.new_empty(N, Hkv, total, hd, dtype=dtype) for _ in fused.layers]
    norm_w = lm.model.norm.weight.detach()
    head_w = lm.get_output_embeddings().weight.detach()
    gqa = H != Hkv

    out = torch.full((N, max_new_tokens), rules.pad_id, dtype=torch.long, device=device)
    rows = torch.arange(N, device=device)  # the batch rows still writing
    x = embeds.to(dtype)
    start = 0
    for t in range(max_new_tokens):
        L = x.shape[1]
        c, s = cos[start : start + L], sin[start : start + L]
        for i, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(fused.layers):
            h = F.rms_norm(x, (D,), w_in, eps)
            q, k, v = F.linear(h, w_qkv).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
            q = q.view(-1, L, H, hd).transpose(1, 2)
            k = k.view(-1, L, Hkv, hd).transpose(1, 2)
            q = q * c + _rotate_half(q) * s
            k = k * c + _rotate_half(k) * s
            keys[i][:, :, start : start + L] = k
            values[i][:, :, start : start + L] = v.view(-1, L, Hkv, hd).transpose(1, 2)
            att = F.scaled_dot_product_attention(
                q, keys[i][:, :, : start + L], values[i][:, :, : start + L], is_causal=L > 1, enable_gqa=gqa
            )
            x = x + F.linear(att.transpose(1, 2).reshape(-1, L, H * hd), w_o)
            gate, up = F.linear(F.rms_norm(x, (D,), w_post, eps), w_gu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        logits = F.linear(F.rms_norm(x[:, -1], (D,), norm_w, eps), head_w).float()
        rules.bar(logits, t)
        token = logits.argmax(-1)  # (n,)
        out[rows, t] = token
        start += L
        alive = token != eos_id
        if not bool(alive.all()):
            if not bool(alive.any()):
                break
            keep = alive.nonzero().squeeze(1)
            rows, token = rows[keep], token[keep]
            keys = [k_[keep] for k_ in keys]
            values = [v_[keep] for v_ in values]
        x = lm.model.embed_tokens(token[:, None])
    return out


@torch.no_grad()
def _loop_greedy(lm: Any, embeds: torch.Tensor, rules: _Rules, cache_arg: str) -> torch.Tensor:
    from transformers import DynamicCache

    N, max_new_tokens = embeds.shape[0], rules.max_new_tokens
    out = torch.full((N, max_new_tokens), rules.pad_id, dtype=torch.long, device=embeds.device)
    cache = DynamicCache(config=lm.config)
    done = torch.zeros(N, dtype=torch.bool, device=embeds.device)
    result = lm(inputs_embeds=embeds, use_cache=True, return_dict=True, **{cache_arg: cache})
    for t in range(max_new_tokens):
        logits = result.logits[:, -1].float()
        rules.bar(logits, t)
        token = logits.argmax(-1).masked_fill(done, rules.pad_id)
        out[:, t] = token
        done |= token == rules.eos_id
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        result = lm(input_ids=token[:, None], use_cache=True, return_dict=True, **{cache_arg: cache})
    return out


def greedy_decode(
    lm: Any,
    embeds: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    suppress_tokens: list[int] | None = None,
    min_new_tokens: int = 0,
    fused: FusedLlamaWeights | None = None,
    cache_arg: str = "past_key_values",
) -> torch.Tensor:
    """Greedy ids ``(N, max_new_tokens)`` from prefix embeddings ``(N, T0, D)``; after ``eos`` a row holds ``pad_id``.

    The same ids as ``lm.generate(inputs_embeds=embeds, do_sample=False, suppress_tokens=..., min_new_tokens=...)``
    (float rounding of the fused matrices aside); the prefix is all real (no padding mask).
    """
    if max_new_tokens <= 0:
        return torch.empty(embeds.shape[0], 0, dtype=torch.long, device=embeds.device)
    rules = _Rules(max_new_tokens, eos_id, pad_id, list(suppress_tokens or []), int(min_new_tokens or 0))
    if fused is not None and fused_llama_supported(lm.config):
        return _fused_llama_greedy(lm, fused, embeds, rules)
    return _loop_greedy(lm, embeds, rules, cache_arg)

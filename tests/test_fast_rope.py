"""ilt_hf.fast_rope: Llama's rotary embedding through one autograd function, equal to transformers' to float rounding."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import assert_same_training_step
from ilt_hf import fast_rope
from ilt_hf.fast_rope import RotaryFunction, fast_apply_rotary_pos_emb, swap_rotary_attention
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention

from ilt_core import build_model


def cos_sin(batch: int, seq: int, dim: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
    emb = torch.cat((freqs, freqs), -1)
    return emb.cos()[None].expand(batch, seq, dim).to(dtype), emb.sin()[None].expand(batch, seq, dim).to(dtype)


def strided(batch: int, seq: int, heads: int, dim: int, dtype=torch.float32) -> torch.Tensor:
    """(B, H, S, D) as attention layers make it: a transposed view of (B, S, H * D)."""
    return torch.randn(batch, seq, heads * dim, dtype=dtype).view(batch, seq, heads, dim).transpose(1, 2)


def test_rotation_and_its_gradients_equal_transformers():
    cos, sin = cos_sin(3, 7, 16)
    q0, k0 = strided(3, 7, 2, 16), strided(3, 7, 2, 16)
    gq, gk = torch.randn(3, 2, 7, 16), torch.randn(3, 2, 7, 16)
    outs, grads = [], []
    for apply in (modeling_llama.apply_rotary_pos_emb, fast_apply_rotary_pos_emb):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        a, b = apply(q, k, cos, sin)
        torch.autograd.backward([a, b], [gq, gk])
        outs.append((a.detach(), b.detach()))
        grads.append((q.grad, k.grad))
    for x, y in zip(outs[0] + grads[0], outs[1] + grads[1], strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_gradcheck_in_double():
    cos, sin = cos_sin(2, 5, 8, torch.float64)
    x = strided(2, 5, 3, 8, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: RotaryFunction.apply(t, cos[:, None], sin[:, None]), (x,))


def test_other_dtypes_take_transformers_function(monkeypatch):
    calls = []
    monkeypatch.setattr(RotaryFunction, "apply", lambda *a: calls.append(a) or a[0])
    cos, sin = cos_sin(2, 5, 8, torch.bfloat16)
    q = k = strided(2, 5, 1, 8, torch.bfloat16)
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    got = fast_apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(got, want)
    assert calls == []
    fast_apply_rotary_pos_emb(q.float(), k.float(), cos.float(), sin.float())
    assert len(calls) == 2


def llama(layers: int = 2) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, vocab_size=50
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_whole_llama_loss_and_gradients_equal_and_generation_keeps_its_cache():
    native = llama()
    fast = copy.deepcopy(native)
    assert swap_rotary_attention(fast) == 2
    ids = torch.randint(0, 50, (3, 9))
    assert_same_training_step(native, fast, ids)
    # with a KV cache: transformers' forward, the same continuation
    for model in (native, fast):
        model.generation_config.pad_token_id = 0
    want = native.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(fast.generate(ids[:, :4], max_new_tokens=6, do_sample=False), want)


def test_switched_layer_keeps_state_dict_isinstance_and_pickles():
    model = llama(1)
    keys = model.state_dict().keys()
    swap_rotary_attention(model)
    attention = model.model.layers[0].self_attn
    assert isinstance(attention, LlamaAttention) and type(attention).__name__ == "FastLlamaAttention"
    assert model.state_dict().keys() == keys
    again = pickle.loads(pickle.dumps(model))
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert swap_rotary_attention(model) == 0  # already switched


def test_a_module_whose_rotary_is_not_llamas_is_left_alone(monkeypatch):
    def other_rotary(q, k, cos, sin, unsqueeze_dim=1):  # e.g. a partial or interleaved rotary
        return q, k

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", other_rotary)
    fast_rope._rebound_forward.cache_clear()
    try:
        assert fast_rope._rebound_forward(LlamaAttention) is None
        model = llama(1)
        assert swap_rotary_attention(model) == 0
    finally:
        monkeypatch.undo()
        fast_rope._rebound_forward.cache_clear()


@pytest.mark.parametrize("role", ["bytes_decoder"])
def test_built_bytes_decoder_uses_it(role):
    model = build_model("tiny")
    layers = [m for m in getattr(model, role).modules() if isinstance(m, LlamaAttention)]
    assert layers and all(type(m).__name__ == "FastLlamaAttention" for m in layers)


def test_partial_rotary_of_gpt_neox_takes_its_own_function_and_gives_the_same_gradients():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=50, rotary_pct=0.25
    )
    torch.manual_seed(0)
    native = GPTNeoXForCausalLM(cfg)
    fast = copy.deepcopy(native)
    assert swap_rotary_attention(fast) == 2
    assert_same_training_step(native, fast, torch.randint(0, 50, (2, 7)))


def test_switching_works_while_a_meta_device_is_the_default():
    fast_rope._rebound_forward.cache_clear()
    with torch.device("meta"):
        model = llama(1)
        assert swap_rotary_attention(model) == 1

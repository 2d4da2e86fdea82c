"""ilt_hf.fast_norm: Llama-style RMSNorm through one autograd function, equal to transformers' to float rounding."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import assert_same_training_step
from ilt_hf.fast_norm import RMSNormFunction, rms_norm_is_llamas, swap_rms_norms
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ilt_core import build_model


def norm_pair(width: int = 48, eps: float = 1e-5) -> tuple[LlamaRMSNorm, LlamaRMSNorm]:
    torch.manual_seed(0)
    native = LlamaRMSNorm(width, eps=eps)
    native.weight.data.uniform_(0.5, 1.5)
    fast = copy.deepcopy(native)
    assert swap_rms_norms(fast) == 1
    return native, fast


@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (2, 3, 4, 48)])
def test_outputs_and_gradients_equal_transformers(shape):
    native, fast = norm_pair()
    x = torch.randn(shape) * 3 + 0.5
    grad = torch.randn(shape)
    outs, grads = [], []
    for layer in (native, fast):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(grad)
        outs.append(y.detach())
        grads.append((xi.grad, layer.weight.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_gradcheck_in_double():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-6), (x, w))


def test_frozen_weight_and_input_without_gradient():
    native, fast = norm_pair()
    fast.weight.requires_grad_(False)
    x = torch.randn(4, 48, requires_grad=True)
    fast(x).sum().backward()
    assert fast.weight.grad is None and x.grad is not None
    y = fast(torch.randn(4, 48))  # no input needs a gradient: a plain forward
    assert not y.requires_grad


def test_other_dtypes_take_transformers_forward(monkeypatch):
    native, fast = norm_pair()
    calls = []
    monkeypatch.setattr(RMSNormFunction, "apply", lambda *a: calls.append(a) or a[0])
    x = torch.randn(4, 48, dtype=torch.bfloat16)
    torch.testing.assert_close(fast.to(torch.bfloat16)(x), native.to(torch.bfloat16)(x))
    assert calls == []
    fast.float()(torch.randn(4, 48))
    assert len(calls) == 1


def test_only_llamas_forward_is_switched():
    class OnePlusWeightRMSNorm(LlamaRMSNorm):  # Gemma-style: another forward
        def forward(self, hidden_states):
            return super().forward(hidden_states) * 2

    assert rms_norm_is_llamas(LlamaRMSNorm)
    assert not rms_norm_is_llamas(OnePlusWeightRMSNorm)
    assert swap_rms_norms(torch.nn.Sequential(OnePlusWeightRMSNorm(8))) == 0


def test_switched_layer_keeps_state_dict_isinstance_and_pickles():
    native, fast = norm_pair()
    assert isinstance(fast, LlamaRMSNorm)
    assert fast.state_dict().keys() == native.state_dict().keys()
    again = pickle.loads(pickle.dumps(fast))
    x = torch.randn(2, 48)
    torch.testing.assert_close(again(x), fast(x))
    assert swap_rms_norms(fast) == 0  # already switched


def test_whole_llama_loss_and_gradients_equal():
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=50)
    torch.manual_seed(0)
    native = LlamaForCausalLM(cfg)
    fast = copy.deepcopy(native)
    assert swap_rms_norms(fast) == 2 * 2 + 1
    assert_same_training_step(native, fast, torch.randint(0, 50, (3, 9)))


def test_built_bytes_decoder_uses_it():
    model = build_model("tiny")
    norms = [m for m in model.bytes_decoder.modules() if isinstance(m, LlamaRMSNorm)]
    assert norms and all(type(m).__name__ == "FastLlamaRMSNorm" for m in norms)

"""``ilt_hf.fast_bert``: the fused BERT forward gives the transformers forward's pooled vectors, only for inference.

A 2-layer BERT bytes encoder with random weights (biases, norms and the token-type table perturbed, so a dropped term
shows) reads right-padded units of several lengths; the fused path must equal the transformers path (float rounding
aside) for mean and CLS pooling, follow in-place weight updates, and leave training and gradients to transformers.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ENCODER_CONFIGS
from ilt_hf import encoder as encoder_module
from ilt_hf import fast_bert

from ilt_core import BuildContext, get_registry

CONTEXT = BuildContext()
TOL = dict(atol=1e-5, rtol=1e-5)


def bytes_encoder(pooling: str = "mean", attn: str = "sdpa"):
    torch.manual_seed(0)
    enc = get_registry().build(
        "hf:encoder",
        "bytes_encoder",
        CONTEXT,
        {"config": ENCODER_CONFIGS["bert"], "pooling": pooling, "attn_implementation": attn},
    )
    with torch.no_grad():
        for name, p in enc.model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return enc.eval()


def counting(monkeypatch) -> list[int]:
    calls = []
    real = fast_bert.fused_bert_forward

    def forward(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_module, "fused_bert_forward", forward)
    return calls


def units(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded byte ids ``(N, T)`` and mask of units ``lengths`` long."""
    torch.manual_seed(1)
    T = max(lengths)
    ids = torch.randint(3, 200, (len(lengths), T))
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, CONTEXT.pad_token_id), mask


def transformers_path(enc, ids, mask) -> torch.Tensor:
    assert enc.set_fast_paths(False) == []
    try:
        with torch.no_grad():
            return enc(ids, mask)
    finally:
        assert "fused BERT inference forward" in enc.set_fast_paths(True)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lengths", [[4, 4, 4], [7, 1, 3, 12]])
def test_fused_bert_equals_transformers(pooling, attn, lengths, monkeypatch):
    enc = bytes_encoder(pooling, attn)
    calls = counting(monkeypatch)
    ids, mask = units(lengths)
    expected = transformers_path(enc, ids, mask)
    assert calls == []
    with torch.no_grad():
        got = enc(ids, mask)
    assert calls == [1]
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got[0], got[1])


def test_fused_bert_follows_in_place_weight_updates():
    enc = bytes_encoder()
    ids, mask = units([5, 2])
    with torch.no_grad():
        before = enc(ids, mask)
        enc.model.embeddings.position_embeddings.weight.add_(0.5)  # as an optimizer step would, in place
        enc.model.encoder.layer[1].output.dense.weight.mul_(2.0)
        after = enc(ids, mask)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, transformers_path(enc, ids, mask), **TOL)


def test_training_and_gradients_keep_the_transformers_path(monkeypatch):
    enc = bytes_encoder()
    calls = counting(monkeypatch)
    ids, mask = units([5, 2])
    out = enc(ids, mask)  # eval mode, gradients on
    out.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    enc.train()
    with torch.no_grad():
        enc(ids, mask)  # train mode, gradients off
    assert calls == []


def test_other_encoders_are_not_fused():
    assert fast_bert.fused_bert_supported(bytes_encoder().model)
    for model_type in ("modernbert", "deberta-v2"):
        enc = get_registry().build("hf:encoder", "bytes_encoder", CONTEXT, {"config": ENCODER_CONFIGS[model_type]})
        assert "fused BERT inference forward" not in enc.set_fast_paths(True)

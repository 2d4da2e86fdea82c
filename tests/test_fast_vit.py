"""``ilt_hf.fast_vit``: the fused ViT step gives the transformers forward's CLS vector, and only runs for inference.

A 3-layer ViT with random weights (biases included) reads word images of several widths; the fused path must equal
the transformers path (float rounding aside), follow in-place weight updates, and leave training untouched.
"""

from __future__ import annotations

import pytest
import torch
from helpers import VISION_CONFIGS
from ilt_hf import fast_vit

from ilt_core import BuildContext, get_registry

CONTEXT = BuildContext()
CONFIG = {**VISION_CONFIGS["vit"], "num_hidden_layers": 3, "layer_norm_eps": 1e-6}


def encoder():
    torch.manual_seed(0)
    enc = get_registry().build("hf:vision", "image_encoder", CONTEXT, {"config": CONFIG}).eval()
    with torch.no_grad():  # random biases and norms, so that a dropped term shows
        for name, p in enc.model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return enc


def transformers_path(enc, pixels: torch.Tensor) -> torch.Tensor:
    """The CLS vector through the transformers modules (the fused step switched off)."""
    assert enc.set_fast_paths(False) == []
    try:
        with torch.no_grad():
            return enc(pixels)
    finally:
        assert "fused ViT inference step" in enc.set_fast_paths(True)


def calls_fused(monkeypatch) -> list[int]:
    calls = []
    real = fast_vit.fused_vit_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("ilt_hf.vision.fused_vit_forward", counting)
    return calls


@pytest.mark.parametrize("widths", [(32,), (64, 160), (16, 48, 96)])
def test_fused_vit_equals_transformers_for_word_images(widths, monkeypatch):
    enc = encoder()
    calls = calls_fused(monkeypatch)
    torch.manual_seed(1)
    for width in widths:
        pixels = torch.rand(3, 3, CONTEXT.image_height, width)
        expected = transformers_path(enc, pixels)
        with torch.no_grad():
            got = enc(pixels)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
        assert not torch.allclose(got[0], got[1])
    assert len(calls) == len(widths)  # the fused step really ran
    assert len(enc.fused_weights.positions) == len(widths)  # one interpolated position table per image size


def test_fused_vit_follows_in_place_weight_updates():
    enc = encoder()
    pixels = torch.rand(2, 3, CONTEXT.image_height, 64)
    with torch.no_grad():
        before = enc(pixels)
        enc.model.layers[1].mlp.fc2.weight.mul_(3.0)  # as an optimizer step would, in place
        enc.model.embeddings.position_embeddings.add_(1.0)
        after = enc(pixels)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, transformers_path(enc, pixels), atol=2e-5, rtol=2e-5)


def test_training_and_gradients_keep_the_transformers_path(monkeypatch):
    enc = encoder()
    calls = calls_fused(monkeypatch)
    pixels = torch.rand(2, 3, CONTEXT.image_height, 32, requires_grad=True)
    enc(pixels).sum().backward()  # eval mode, gradients on
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    enc.train()
    with torch.no_grad():
        enc(pixels)  # train mode, gradients off
    assert calls == []


def test_other_vision_models_are_not_fused():
    assert fast_vit.fused_vit_supported(encoder().model)
    for model_type in ("swinv2", "clip_vision_model"):
        enc = get_registry().build("hf:vision", "image_encoder", CONTEXT, {"config": VISION_CONFIGS[model_type]})
        assert enc.fused_weights is None and "fused ViT inference step" not in enc.set_fast_paths(True)
    gelu_tanh = get_registry().build(
        "hf:vision", "image_encoder", CONTEXT, {"config": {**CONFIG, "hidden_act": "gelu_pytorch_tanh"}}
    )
    assert gelu_tanh.fused_weights is None and "fused ViT inference step" not in gelu_tanh.set_fast_paths(True)


@pytest.mark.parametrize("products", ["numpy", "torch"])
def test_packed_layer_with_one_qkv_product_trains_as_the_transformers_layer(products):
    """The packed images' training layer (q/k/v as one product of the concatenated weights) gives the transformers
    layer's output and every gradient: the input's and each of q/k/v's weights and biases."""
    from ilt_core.modeling.products import set_cpu_products
    from ilt_core.text.image_packing import segment_mask

    enc = encoder().train()
    set_cpu_products(enc, products)
    layer = enc.model.layers[1]
    torch.manual_seed(2)
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [0, 0, 1, 1, 1, 1, 1, 2, 2, -1]])
    mask = segment_mask(segments)
    hidden = torch.randn(2, 10, CONFIG["hidden_size"])
    results = []
    for run in (layer, lambda h, m: fast_vit.packed_vit_layer(layer, h, m)):
        x = hidden.clone().requires_grad_(True)
        layer.zero_grad()
        out = run(x, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        results.append((out.detach(), x.grad, grads))
    (want, want_x, want_p), (got, got_x, got_p) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_x, want_x, atol=1e-5, rtol=1e-5)
    assert got_p.keys() == want_p.keys() and any("q_proj.bias" in n for n in got_p)
    for name in want_p:
        torch.testing.assert_close(got_p[name], want_p[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_images_take_the_one_product_layer_with_the_fast_paths_on(monkeypatch):
    calls = []
    real = fast_vit.packed_vit_layer
    monkeypatch.setattr("ilt_hf.vision.packed_vit_layer", lambda *a: calls.append(1) or real(*a))
    enc = encoder().train()
    assert enc.prepare_packed(1, 4)
    patches = torch.randint(0, 255, (2, 6, CONFIG["patch_size"] ** 2), dtype=torch.uint8)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 3, 4, 5, 0, 0]])
    segments = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]])
    cls = torch.tensor([0, 3, 6])
    on = enc.encode_packed(patches, positions, segments, cls)
    assert len(calls) == CONFIG["num_hidden_layers"]
    enc.set_fast_paths(False)
    off = enc.encode_packed(patches, positions, segments, cls)
    assert len(calls) == CONFIG["num_hidden_layers"]  # off: the transformers layers
    torch.testing.assert_close(on, off, atol=2e-5, rtol=2e-5)

"""Activation checkpointing in the timm and open_clip image encoders: the same gradients, fewer activations kept."""

from __future__ import annotations

import pytest
import torch
from helpers import saved_bytes

from ilt_core.plugins.registry import BuildContext, get_registry

ENCODERS = {
    "timm:model": {"model_name": "vit_tiny_patch16_224", "depth": 2},
    "clip:visual": {"vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16}, "embed_dim": 48},
}


def _kept_bytes_and_grads(encoder, images: torch.Tensor) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """Bytes of the distinct storages autograd keeps for backward, the output, and every parameter's gradient."""
    encoder.zero_grad(set_to_none=True)
    with saved_bytes() as kept:
        out = encoder(images)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return kept.total, out.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("address", list(ENCODERS))
def test_checkpointing_keeps_the_gradients_and_fewer_activations(address):
    torch.manual_seed(0)
    encoder = get_registry().build(address, "image_encoder", BuildContext(), dict(ENCODERS[address])).train()
    images = torch.rand(4, 3, 32, 128, generator=torch.Generator().manual_seed(1))
    kept_plain, out_plain, grads_plain = _kept_bytes_and_grads(encoder, images)
    assert encoder.set_activation_checkpointing(True) is True
    kept_ckpt, out_ckpt, grads_ckpt = _kept_bytes_and_grads(encoder, images)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 10
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)
    encoder.set_activation_checkpointing(False)
    assert _kept_bytes_and_grads(encoder, images)[0] == kept_plain


def test_attention_shape_for_the_flop_count():
    from ilt_core.modeling.flops import attention_shape

    def built(address: str, **args):
        return get_registry().build(address, "image_encoder", BuildContext(), args)

    assert attention_shape(built("timm:model", **ENCODERS["timm:model"])) == (2, 192)
    assert attention_shape(built("clip:visual", **ENCODERS["clip:visual"])) == (2, 64)
    assert attention_shape(built("timm:model", model_name="test_resnet")) is None  # a conv net: no attention

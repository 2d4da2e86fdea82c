"""Every preset trains: ``small`` and ``medium`` with their own module types and default settings, narrowed to a few
thousand parameters a component, take a training step in both batch layouts (fixed shapes and dynamic)."""

from __future__ import annotations

import pytest
import torch

from ilt_core.modeling.model import build_model
from ilt_core.specs.spec import spec_variant
from ilt_core.text.collator import TextUnits

# per preset and role: the config fields that set width and depth, narrowed (everything else as the preset has it)
NARROW = {
    "small": {
        "image_encoder": {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
        "bytes_encoder": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 2},
        "latent_transformer": {
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 6,  # five sliding-window layers and a global one, as gemma-3 alternates them
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
            "sliding_window": 8,  # shorter than a row: the window matters
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        },
        "bytes_decoder": {
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
        },
    },
    "medium": {
        "image_encoder": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2},
        "bytes_encoder": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2},
        "latent_transformer": {
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        },
        "bytes_decoder": {"n_embd": 16, "n_layer": 1, "n_head": 2},
    },
}
TEXTS = ["שלום לכם, מה שלומכם היום?", "the quick brown fox jumps over the lazy dog", "مرحبا بالعالم"]


def narrowed(name: str) -> dict:
    spec = spec_variant(name, "full")
    for role, fields in NARROW[name].items():
        spec[role]["config"].update(fields)
    return spec


@pytest.mark.parametrize("name", ["small", "medium"])
def test_a_narrowed_preset_takes_a_training_step_in_both_layouts(name):
    torch.manual_seed(0)
    model = build_model(narrowed(name), seed=0).train()
    for role in NARROW[name]:  # the preset's own module types
        assert type(getattr(model, role)).__module__.startswith("ilt_hf")
    processor = model.processor.with_pixels("uint8")
    texts = [TextUnits(model.processor.segment(t)) for t in TEXTS]
    shapes = model.fixed_shapes(rows=2, row_units=24)
    for batch in (
        processor.collate(texts, packing=True, shapes=shapes),
        processor.collate(texts, packing=True, max_units=24),
    ):
        model.zero_grad()
        loss = model(**batch.model_inputs()).loss
        loss.backward()
        assert torch.isfinite(loss)
        for role in NARROW[name]:
            grads = [p.grad for p in getattr(model, role).parameters() if p.requires_grad]
            assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), role


def test_small_swin_windows_are_the_word_images_patch_grid():
    """Each SwinV2 stage of ``small`` attends in windows as high as its word images' patch grid at that stage, so no
    stage pads its feature map (transformers sizes the windows from ``config.image_size`` when it builds the model,
    not from the image it is given); a word image as wide as a long word still encodes."""
    spec = narrowed("small")
    height = spec["image_height"]
    model = build_model(spec, seed=0).train()
    encoder = model.image_encoder
    swin = encoder.model
    patch = swin.config.patch_size
    width = 16 * encoder.patch_size  # 512 px, a long word
    for stage, layers in enumerate(swin.encoder.layers):
        grid_h, grid_w = height // (patch * 2**stage), width // (patch * 2**stage)
        for layer in layers.blocks:
            assert layer.window_size == grid_h, (stage, layer.window_size, grid_h)
            _, pads = layer.maybe_pad(torch.zeros(1, grid_h, grid_w, layer.layernorm_before.normalized_shape[0]),
                                      grid_h, grid_w)  # fmt: skip
            assert pads == (0, 0, 0, 0, 0, 0), (stage, pads)
    pixels = torch.rand(2, 3, height, width)
    vectors = encoder(pixels)
    assert vectors.shape == (2, encoder.hidden_size)
    vectors.sum().backward()
    assert torch.isfinite(vectors).all()

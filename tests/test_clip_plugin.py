"""The ``clip`` plugin: open_clip ViT vision towers as word-image encoders (tiny towers, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from ilt_core import BuildContext, Component, ILTError, get_registry, hookimpl
from ilt_core.plugins.protocols import ImageEncoder
from ilt_core.plugins.registry import Registry

TINY_TOWER = {"vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16}, "embed_dim": 48}


def build(context: BuildContext | None = None, **args):
    return get_registry().build("clip:visual", "image_encoder", context or BuildContext(), args)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return build(**TINY_TOWER).eval()


def words(n: int, width: int, height: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, height, width) gray word-like images in [0, 1] (the gray repeated on 3 channels)."""
    gen = torch.Generator().manual_seed(seed)
    gray = (torch.rand(n, 1, height, width, generator=gen) > 0.7).float()
    return (1.0 - gray).expand(n, 3, height, width).contiguous()


def test_component_is_registered_with_requirements():
    component = get_registry().get("clip:visual", "image_encoder")
    assert component.requires == ("open_clip",)
    assert component.install == "pip install open-clip-torch"
    assert component.available


def test_tiny_tower_builds_with_width_and_patch(tower):
    assert isinstance(tower, ImageEncoder)
    assert tower.hidden_size == 48 == tower.visual.output_dim
    assert tower.patch_size == 16
    assert len(tower.visual.transformer.resblocks) == 2
    # position grid laid out for (image_height, max_width) = (32, 512) with 16 px patches
    assert tuple(tower.visual.grid_size) == (2, 32)
    assert tower.visual.positional_embedding.shape == (1 + 2 * 32, 64)
    # only the vision tower is kept
    assert not any(name.startswith(("text", "token_embedding")) for name, _ in tower.named_parameters())


def test_forward_and_backward():
    torch.manual_seed(0)
    encoder = build(**TINY_TOWER).train()
    out = encoder(words(3, 80))
    assert out.shape == (3, encoder.hidden_size)
    out.square().mean().backward()
    visual = encoder.visual
    grads = [visual.conv1.weight.grad, visual.positional_embedding.grad, visual.class_embedding.grad, visual.proj.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("width", [16, 32, 48, 128, 256])
def test_every_width_works(tower, width):
    with torch.no_grad():
        out = tower(words(2, width, seed=width))
    assert out.shape == (2, 48)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("width", [16, 64, 256])
def test_vector_is_the_same_alone_and_in_a_batch(tower, width):
    batch = words(5, width, seed=2)
    with torch.no_grad():
        together = tower(batch)
        reordered = tower(batch.flip(0)).flip(0)
        for i in range(len(batch)):
            alone = tower(batch[i : i + 1])
            assert (alone[0] - together[i]).abs().max() < 1e-5
        assert (reordered - together).abs().max() < 1e-5


def test_full_width_uses_the_table_as_is_and_narrower_widths_resample_it(tower):
    from ilt_clip.image_encoder import resample_position_table

    table = tower.visual.positional_embedding.detach()
    assert resample_position_table(table, (2, 32), (2, 32)) is table
    narrow = resample_position_table(table, (2, 32), (2, 3))
    assert narrow.shape == (1 + 2 * 3, 64)
    assert torch.equal(narrow[0], table[0])  # the class token's vector is kept
    # a constant table stays constant: resampling neither shifts nor scales it
    constant = torch.ones(1 + 2 * 32, 4)
    assert torch.allclose(resample_position_table(constant, (2, 32), (2, 5)), torch.ones(1 + 2 * 5, 4), atol=1e-5)


def test_width_not_a_patch_multiple_is_padded_with_paper(tower):
    image = words(1, 20)
    with torch.no_grad():
        assert (tower(image) - tower(F.pad(image, (0, 12), value=1.0))).abs().max() < 1e-6


@pytest.mark.slow  # builds the full 88M-parameter ViT-B-32 tower
def test_default_tower_is_vit_b_32():
    encoder = build()
    assert encoder.patch_size == 32
    assert encoder.hidden_size == 512
    assert tuple(encoder.visual.grid_size) == (1, 16)
    with torch.no_grad():
        assert encoder.eval()(words(1, 48)).shape == (1, 512)  # 48 px is padded to 64


def test_local_dir_weights_load(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 4, "vocab_size": 10, "width": 16, "heads": 1, "layers": 1},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    source = open_clip.create_model(f"local-dir:{tmp_path}", load_weights=False)
    save_file(source.state_dict(), str(tmp_path / "open_clip_model.safetensors"))

    encoder = build(model_name=f"local-dir:{tmp_path}", pretrained=True)
    assert torch.equal(encoder.visual.conv1.weight, source.visual.conv1.weight)
    assert torch.equal(encoder.visual.proj, source.visual.proj)
    assert encoder.visual.positional_embedding.shape == (1 + 2 * 32, 32)  # 4x4 table resampled to 2x32
    random = build(model_name=f"local-dir:{tmp_path}")
    assert not torch.equal(random.visual.conv1.weight, source.visual.conv1.weight)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ILTError, match="'ViT-Q-99' is not an open_clip model"):
        build(model_name="ViT-Q-99")
    with pytest.raises(ILTError, match="ViT towers only"):
        build(model_name="RN50")
    with pytest.raises(ILTError, match="pretrained: true needs"):
        build(pretrained=True)
    with pytest.raises(ILTError, match="pretrained"):
        build(**TINY_TOWER, pretrained="/no/such/checkpoint.pt")


def test_missing_dependency_reports_install_hint():
    component = Component(
        plugin="fake",
        name="visual",
        roles=("image_encoder",),
        factory="ilt_clip.image_encoder:build_clip_visual_encoder",
        requires=("open_clip_not_installed_anywhere",),
        install="pip install open-clip-not-installed-anywhere",
    )
    assert component.available is False
    assert component.missing == ("open_clip_not_installed_anywhere",)

    plugin = types.SimpleNamespace(ilt_components=hookimpl(lambda: [component]))
    registry = Registry(load_entry_points=False)
    registry.register(plugin, "fake")
    with pytest.raises(ILTError, match="pip install open-clip-not-installed-anywhere"):
        registry.build("fake:visual", "image_encoder", BuildContext(), {})


@pytest.mark.slow  # a fresh interpreter imports torch: several seconds
def test_listing_components_does_not_import_open_clip():
    code = (
        "import sys, ilt_clip; cs = ilt_clip.ilt_components(); "
        "assert [c.address for c in cs] == ['clip:visual']; "
        "assert 'open_clip' not in sys.modules, 'open_clip imported at listing time'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

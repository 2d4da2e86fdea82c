"""The ``timm`` plugin: timm models as word-image encoders (small models, CPU, seconds)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from ilt_core import BuildContext, Component, ILTError, get_registry, hookimpl
from ilt_core.plugins.protocols import ImageEncoder
from ilt_core.plugins.registry import Registry

TINY_VIT = {"model_name": "vit_tiny_patch16_224", "depth": 2}


def build(address: str = "timm:model", context: BuildContext | None = None, **args):
    return get_registry().build(address, "image_encoder", context or BuildContext(), args)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build(**TINY_VIT).eval()


def words(n: int, width: int, height: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, height, width) gray word-like images in [0, 1] (the gray repeated on 3 channels)."""
    gen = torch.Generator().manual_seed(seed)
    gray = (torch.rand(n, 1, height, width, generator=gen) > 0.7).float()
    return (1.0 - gray).expand(n, 3, height, width).contiguous()


def test_components_are_registered_with_requirements():
    registry = get_registry()
    for address in ("timm:model", "timm:vit"):
        component = registry.get(address, "image_encoder")
        assert component.requires == ("timm",)
        assert component.install == "pip install timm"
        assert component.available


def test_vit_builds_with_width_and_patch(vit):
    assert isinstance(vit, ImageEncoder)
    assert vit.hidden_size == vit.model.num_features == 192
    assert vit.patch_size == 16
    assert len(vit.model.blocks) == 2
    # the position table is laid out for (image_height, max_width) = (32, 512): 2 x 32 patches + class
    assert vit.model.pos_embed.shape == (1, 1 + 2 * 32, 192)
    # normalisation comes from the model's pretrained_cfg
    assert vit.mean.flatten().tolist() == pytest.approx(list(vit.model.pretrained_cfg["mean"]))
    assert vit.std.flatten().tolist() == pytest.approx(list(vit.model.pretrained_cfg["std"]))


def test_forward_and_backward():
    torch.manual_seed(0)
    encoder = build(**TINY_VIT).train()
    out = encoder(words(3, 48))
    assert out.shape == (3, encoder.hidden_size)
    out.square().mean().backward()
    grads = [encoder.model.patch_embed.proj.weight.grad, encoder.model.pos_embed.grad, encoder.model.cls_token.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("width", [16, 32, 48, 128, 256])
def test_every_width_works(vit, width):
    with torch.no_grad():
        out = vit(words(2, width, seed=width))
    assert out.shape == (2, 192)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # different words, different vectors


@pytest.mark.parametrize("width", [16, 64, 256])
def test_vector_is_the_same_alone_and_in_a_batch(vit, width):
    batch = words(5, width, seed=1)
    with torch.no_grad():
        together = vit(batch)
        reordered = vit(batch.flip(0)).flip(0)
        for i in range(len(batch)):
            alone = vit(batch[i : i + 1])
            assert (alone[0] - together[i]).abs().max() < 1e-5
        assert (reordered - together).abs().max() < 1e-5


def test_width_not_a_patch_multiple_is_padded_with_paper(vit):
    image = words(1, 20)
    with torch.no_grad():
        padded = vit(F.pad(image, (0, 12), value=1.0))
        assert (vit(image) - padded).abs().max() < 1e-6


def test_conv_net_takes_any_width():
    context = BuildContext(width_multiple=8)
    encoder = build(model_name="test_resnet", context=context).eval()
    assert encoder.patch_size == 8  # conv nets use the renderer's width multiple
    assert encoder.hidden_size == encoder.model.num_features
    with torch.no_grad():
        for width in (16, 40, 256):
            assert encoder(words(2, width)).shape == (2, encoder.hidden_size)


def test_vit_alias_rejects_conv_nets_and_builds_vits():
    with pytest.raises(ILTError, match="not a ViT"):
        build("timm:vit", model_name="test_resnet")
    encoder = build("timm:vit", depth=1)
    assert encoder.patch_size == 16 and encoder.hidden_size == 192


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ILTError, match="model_name: 'vit_tinyy' is not a timm model"):
        build(model_name="vit_tinyy")
    with pytest.raises(ILTError, match="bogus"):
        build(**TINY_VIT, bogus=1)
    with pytest.raises(ILTError, match="checkpoint_path"):
        build(**TINY_VIT, checkpoint_path="/no/such/weights.safetensors")


def test_checkpoint_path_loads_local_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    # a checkpoint as timm saves it: 224x224 position table and a 1000-class head
    source = timm.create_model("vit_tiny_patch16_224", depth=2)
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    encoder = build(**TINY_VIT, checkpoint_path=str(path))
    assert torch.equal(encoder.model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.equal(encoder.model.cls_token, source.cls_token)
    assert encoder.model.pos_embed.shape == (1, 1 + 2 * 32, 192)  # resampled to word shape


def test_missing_dependency_reports_install_hint():
    component = Component(
        plugin="fake",
        name="model",
        roles=("image_encoder",),
        factory="ilt_timm.image_encoder:build_timm_image_encoder",
        requires=("timm_not_installed_anywhere",),
        install="pip install timm-not-installed-anywhere",
    )
    assert component.available is False
    assert component.missing == ("timm_not_installed_anywhere",)

    plugin = types.SimpleNamespace(ilt_components=hookimpl(lambda: [component]))
    registry = Registry(load_entry_points=False)
    registry.register(plugin, "fake")
    with pytest.raises(ILTError, match="pip install timm-not-installed-anywhere"):
        registry.build("fake:model", "image_encoder", BuildContext(), {})


@pytest.mark.slow  # a fresh interpreter imports torch: several seconds
def test_listing_components_does_not_import_timm():
    code = (
        "import sys, ilt_timm; cs = ilt_timm.ilt_components(); "
        "assert [c.address for c in cs] == ['timm:model', 'timm:vit']; "
        "assert 'timm' not in sys.modules, 'timm imported at listing time'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

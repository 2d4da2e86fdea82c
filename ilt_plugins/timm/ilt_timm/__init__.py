"""ILT plugin ``timm``: timm image models as word-image encoders.

Components:

- ``timm:model`` — any ``timm.create_model`` model (ViTs get ``dynamic_img_size``; conv nets take any
  size), pooled to one vector per word image.
- ``timm:vit`` — the same, but the model must be a patch-embedding transformer (a ViT family model).

This module stays light: timm is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl

INSTALL = "pip install timm"


@hookimpl
def ilt_components() -> list[Component]:
    """The image encoders this plugin provides (factories are imported lazily)."""
    return [
        Component(
            plugin="timm",
            name="model",
            roles=("image_encoder",),
            factory="ilt_timm.image_encoder:build_timm_image_encoder",
            requires=("timm",),
            install=INSTALL,
            description="any timm model (default vit_tiny_patch16_224, random weights) pooled to one vector per word image",
        ),
        Component(
            plugin="timm",
            name="vit",
            roles=("image_encoder",),
            factory="ilt_timm.image_encoder:build_timm_vit_encoder",
            requires=("timm",),
            install=INSTALL,
            description="a timm ViT with dynamic image size (default vit_tiny_patch16_224, random weights)",
        ),
    ]

"""ILT plugin ``clip``: the vision tower of an open_clip model as a word-image encoder.

Components:

- ``clip:visual`` — an open_clip ViT vision tower (default ``ViT-B-32``, random weights) whose
  position table is resampled to each word image's patch grid.

This module stays light: open_clip is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl

INSTALL = "pip install open-clip-torch"


@hookimpl
def ilt_components() -> list[Component]:
    """The image encoders this plugin provides (factories are imported lazily)."""
    return [
        Component(
            plugin="clip",
            name="visual",
            roles=("image_encoder",),
            factory="ilt_clip.image_encoder:build_clip_visual_encoder",
            requires=("open_clip",),
            install=INSTALL,
            description="open_clip ViT vision tower (default ViT-B-32, random weights), any word width",
        ),
    ]

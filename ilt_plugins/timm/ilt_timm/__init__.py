"""ILT plugin ``timm``: timm image models as word-image encoders.

Components (declared with ``@component`` in :mod:`ilt_timm.image_encoder`):

- ``timm:model`` — any ``timm.create_model`` model (ViTs get ``dynamic_img_size``; conv nets take any
  size), pooled to one vector per word image.
- ``timm:vit`` — the same, but the model must be a patch-embedding transformer (a ViT family model).

This module stays light: timm is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    """The image encoders declared in :mod:`ilt_timm.image_encoder` (read, not imported)."""
    return components_in("timm", "ilt_timm.image_encoder")

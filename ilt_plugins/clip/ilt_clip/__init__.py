"""ILT plugin ``clip``: the vision tower of an open_clip model as a word-image encoder.

Component ``clip:visual`` (declared with ``@component`` in :mod:`ilt_clip.image_encoder`): an open_clip
ViT vision tower (default ``ViT-B-32``, random weights) whose position table is resampled to each word
image's patch grid. This module stays light: open_clip is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    """The image encoder declared in :mod:`ilt_clip.image_encoder` (read, not imported)."""
    return components_in("clip", "ilt_clip.image_encoder")
